//! Stage 3, state: what the daemon knows per socket. The probe tracker classifies probe runs
//! into events (`tracker`, whose output schema is `event`), the inventory holds every TCP
//! socket's keepalive settings (`inventory`), and `owners` maps sockets to processes.
pub mod advice;
pub mod event;
pub mod inventory;
pub mod owners;
pub mod paths;
pub mod peers;
pub mod tracker;

//! Stage 3, state: what the daemon knows per socket. The probe tracker classifies probe runs
//! into events (`tracker`, whose output schema is `event`), the inventory holds every TCP
//! socket's keepalive settings (`inventory`), `owners` maps sockets to processes, and
//! `workload` turns a cgroup v2 id into the unit, container and pod that own a socket.
pub mod event;
pub mod inventory;
pub mod owners;
pub mod tracker;
pub mod workload;

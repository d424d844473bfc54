//! Stage 3, state: what the daemon knows per socket. The probe tracker classifies probe runs
//! into events (`tracker`, whose output schema is `event`), the inventory holds every TCP
//! socket's keepalive settings (`inventory`), `owners` maps sockets to processes, and
//! `labels` says who a socket belongs to (`workload` from its cgroup, `peers` by address);
//! `paths` learns middlebox idle timeouts and `advice` says what would cover exposed sockets.
pub mod advice;
pub mod event;
pub mod inventory;
pub mod labels;
pub mod owners;
pub mod paths;
pub mod peers;
pub mod tracker;
pub mod workload;

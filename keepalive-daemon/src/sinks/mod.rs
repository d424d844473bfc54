//! Stage 4, sinks: where classified events and socket state go. Stdout JSON and the /events
//! broadcast (`publish`), Prometheus metrics (`metrics`, `inventory_metrics`), the HTTP
//! endpoints (`http`), and the sockets table with its filters (`socket_filter`, `sockets_cmd`,
//! the `keepalive-daemon sockets` client).
pub mod hot_series;
pub mod http;
pub mod inventory_metrics;
pub mod metrics;
pub mod publish;
pub mod series;
pub mod settle;
pub mod socket_filter;
pub mod sockets_cmd;
pub mod sockets_stream;
pub mod workload_metrics;

//! Service plumbing every stage may use: the command line and config file, logging, the
//! capabilities kept after attaching, sd_notify, the web configuration (TLS, basic auth) and
//! the heap. Nothing here imports a pipeline stage.
pub mod caps;
pub mod cli;
pub mod config;
pub mod duration;
pub mod heap;
pub mod logging;
pub mod metric_labels;
pub mod notify;
pub mod peer_config;
pub mod webconfig;

//! keepalive-daemon as a library: the pipeline's stages, for the daemon binary, its tests,
//! the benchmarks and the scenario suite.
//!
//! Stages, each a folder, imports pointing only downwards in this list:
//! `pipeline` (assembly) → `sinks` → `state` → `ingest` → `kernel` → `service` and `error`
//! (plumbing every stage may use). docs/architecture.md draws it.
pub mod error;
pub mod ingest;
pub mod kernel;
pub mod pipeline;
pub mod service;
pub mod sinks;
pub mod state;

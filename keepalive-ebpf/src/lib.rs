#![no_std]
// Exists so the daemon can build-depend on this crate (cache invalidation); the programs are in
// the `keepalive` binary target.

//! Stage 1, the kernel: what the running kernel is (BTF, struct offsets, tracefs, HZ, clocks,
//! network namespaces, the sizes of per-socket maps), the programs loaded and attached down the hook ladder, the measured
//! timer callback address, and the kernel-side loss counters.
pub mod attach;
pub mod btf;
pub mod calibrate;
pub mod clock;
pub mod inventory_offsets;
pub mod loss;
pub mod netns;
pub mod objects;
pub mod offsets;
pub mod sizing;
pub mod sysinfo;
pub mod tracefs;

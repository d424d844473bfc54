//! The daemon's heap, kept close to its working set.

/// glibc keeps freed heap for reuse, and a table that grew by doubling leaves the smaller
/// tables it outgrew as holes no later allocation fits: RSS then follows the high-water mark,
/// not the sockets that exist. Trimming returns those pages.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments to get wrong; it only returns whether memory was released.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc gives each thread that allocates its own arena and keeps what they freed; with the
/// event loop, HTTP readers and blocking scans moving between threads, RSS then steps up by
/// arenas rather than following the data. Two arenas are plenty for two workers. Call before
/// the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a plain setting, made before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

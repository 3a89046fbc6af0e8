//! What the hub asks of glibc's allocator, which by default keeps what
//! threads free: the hub's resident memory would stay at the high-water
//! mark of its last load (1,000 watch streams replaying the state, a bulk
//! write) long after the load ended.

use std::time::Duration;

/// How often a running hub hands freed memory back to the system: the
/// pages it had in use return within this long after a load ends.
pub const RELEASE_INTERVAL: Duration = Duration::from_secs(10);

/// Two heap arenas rather than glibc's eight per core: every arena keeps
/// its own free memory, and with the search index's threads beside tokio's
/// the hub stayed 200 MiB above its baseline after a load (tests/soak.rs),
/// 70 MiB with two. Call before any other thread exists.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; the caller runs it before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free pages of every arena to the system. The freed memory
/// sits in holes between live allocations, which glibc gives back only
/// when asked: the soak measured 106 MiB before and 54 MiB after one call,
/// once 1,000 watchers had left. It takes a few milliseconds and the
/// arenas' locks, so it runs on a blocking thread.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls [`release_freed`] every [`RELEASE_INTERVAL`] until dropped.
pub async fn release_freed_periodically() {
    let mut every = tokio::time::interval(RELEASE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if tokio::task::spawn_blocking(release_freed).await.is_err() {
            return;
        }
    }
}

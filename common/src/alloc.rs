//! How the controllers' memory goes back to the system after a burst (a large index download, an
//! initial list): glibc's malloc raises its mmap threshold each time a large mmapped block is freed, so
//! the next large body is carved from a heap arena and that memory stays with the process. A fixed
//! threshold turns the adjustment off: blocks of 128 KiB and more are mmapped and unmapped when freed.
//! Measured with `pack-bench --index-versions 100000` (docs/pack.md, "Index memory").

/// The fixed threshold, the default glibc starts with (and what `MALLOC_MMAP_THRESHOLD_=131072` sets).
pub const MMAP_THRESHOLD_BYTES: usize = 128 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`], unless the environment already tunes malloc
/// (`MALLOC_MMAP_THRESHOLD_` or `MALLOC_TOP_PAD_`/`MALLOC_TRIM_THRESHOLD_`, read by glibc itself), so an
/// operator's own setting wins. Returns whether it was set. A no-op on other C libraries.
pub fn fix_mmap_threshold() -> bool {
    let tuned = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some());
    !tuned && set_threshold()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // the one libc call of the workspace; see SAFETY below
fn set_threshold() -> bool {
    let bytes = libc::c_int::try_from(MMAP_THRESHOLD_BYTES).expect("128 KiB fits a C int");
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_threshold() -> bool {
    false
}

/// How often [`trim_periodically`] returns freed memory to the system.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Returns the free pages of every malloc arena to the system (`malloc_trim(0)`), every [`TRIM_EVERY`],
/// forever. Small allocations freed after a burst (the objects of an initial list, page after page,
/// decoded on the runtime's worker threads, each with an arena of its own) leave free pages inside
/// arenas that glibc only gives back from an arena's top; trimming gives back the rest. One call costs
/// a walk of the arenas (well under a millisecond at these sizes). A no-op on other C libraries.
pub async fn trim_periodically() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // see SAFETY below
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_fixed_threshold() {
        assert!(set_threshold());
    }

    #[test]
    fn trimming_leaves_live_memory_intact() {
        let kept: Vec<Vec<u8>> = (0..1000).map(|i| vec![(i % 251) as u8; 512]).collect();
        drop((0..10_000).map(|_| vec![0u8; 256]).collect::<Vec<_>>());
        trim();
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, v)| v.iter().all(|b| *b == (i % 251) as u8))
        );
    }
}

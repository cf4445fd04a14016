//! Transparent huge pages for the engine's big random-access arrays (the wallets, the
//! idempotency index). Over a million wallets nearly every access misses the TLB with 4 KiB
//! pages; 2 MiB pages make the page walks mostly disappear (measured +35-60 % transfers/s,
//! BENCHMARKS.md). Many kernels enable huge pages only where asked (`madvise` mode): this asks.
//!
//! Advice changes nothing observable: no state, no outcome, no determinism concern.

const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Advises the kernel to back the allocation of `values` (its whole capacity) with huge pages.
/// Call it after the vector (re)allocates. Small vectors are left alone.
pub(crate) fn advise<T>(values: &Vec<T>) {
    let bytes = values.capacity() * std::mem::size_of::<T>();
    if bytes < 2 * HUGE_PAGE_BYTES {
        return;
    }
    let start = values.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE_BYTES);
    let end = (start + bytes) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if end <= first {
        return;
    }
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: `first..end` lies inside this vector's own allocation (aligned inwards to 2 MiB)
    // and MADV_HUGEPAGE only changes how the kernel backs those pages: it never frees, zeroes
    // or moves memory, so the vector's contents and every reference into it stay valid. A
    // failure (a kernel without THP) is ignored: the pages stay small.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

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
    if values.capacity() * std::mem::size_of::<T>() < 2 * HUGE_PAGE_BYTES {
        return;
    }
    let Some((first, end)) = inner_range(values, HUGE_PAGE_BYTES) else {
        return;
    };
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

/// The addresses `first..end` of the whole `align`-sized blocks inside `values`' allocation
/// (its whole capacity), if there is one.
fn inner_range<T>(values: &Vec<T>, align: usize) -> Option<(usize, usize)> {
    let bytes = values.capacity() * std::mem::size_of::<T>();
    let start = values.as_ptr() as usize;
    let first = start.next_multiple_of(align);
    let end = (start + bytes) / align * align;
    (end > first).then_some((first, end))
}

/// Bytes of the small page, the unit [`populate`] works in.
const PAGE_BYTES: usize = 4096;

/// Faults in, writable, every page of `values`' allocation (its whole capacity) now, so that
/// first writes into reserved room later do not each take a page fault — with huge pages a
/// fault zeroes 2 MiB, measured at ~5 % of a shard writer's time in the first seconds of a
/// 200,000 transfers/s run, inside the batches whose replies wait. For room reserved on purpose
/// (`wallets_reserve`, `idempotency_entries_reserve`: the operator asked for that memory), not
/// for growth on demand.
///
/// Changes nothing observable: pages already there keep their bytes; new ones are the zeros an
/// untouched page reads as anyway. A kernel without `MADV_POPULATE_WRITE` (before 5.14) leaves
/// the pages to fault later.
pub(crate) fn populate<T>(values: &Vec<T>) {
    let Some((first, end)) = inner_range(values, PAGE_BYTES) else {
        return;
    };
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: `first..end` lies inside this vector's own allocation (aligned inwards to whole
    // pages). MADV_POPULATE_WRITE only maps those pages in as if written: it never changes the
    // bytes of a page already there, and a page not yet there reads as zeros before and after.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            end - first,
            libc::MADV_POPULATE_WRITE,
        );
    }
}

/// A copy of `values` with the same capacity in a fresh allocation advised onto huge pages
/// before the copy touches it. `Vec::clone` allocates plainly, so a cloned engine (the
/// snapshot replica's) stayed on 4 KiB pages and replayed slower than the engine it was copied
/// from (BENCHMARKS.md, journal section).
pub(crate) fn clone_advised<T: Copy>(values: &Vec<T>) -> Vec<T> {
    let mut copy = Vec::with_capacity(values.capacity());
    advise(&copy);
    copy.extend_from_slice(values);
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_contents_and_room() {
        let mut values: Vec<u64> = Vec::with_capacity(1 << 20);
        values.extend(0..1_000);
        let copy = clone_advised(&values);
        assert_eq!(copy, values);
        assert_eq!(copy.capacity(), values.capacity());
        assert!(clone_advised(&Vec::<u64>::new()).is_empty());
    }

    #[test]
    fn populating_keeps_the_contents() {
        let mut values: Vec<u64> = Vec::with_capacity(1 << 20);
        values.extend(0..1000u64);
        populate(&values);
        assert!(values.iter().copied().eq(0..1000));
        values.resize(1 << 20, 0);
        assert!(values[1000..].iter().all(|v| *v == 0));
        populate(&Vec::<u8>::new());
    }
}

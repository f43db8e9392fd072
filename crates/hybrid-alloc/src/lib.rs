//! The global allocator of the project's binaries: blocks below [`LARGE`] (32 MiB) from the
//! system allocator (glibc's `malloc` on Linux), blocks of [`LARGE`] and more from mimalloc.
//!
//! Why two. mimalloc alone (the binaries' allocator until 2026-12-05) is fast for the bound
//! family's huge tensors — the exact dual's column blocks and CROWN-IBP's `A` matrices, tens to
//! hundreds of MB, freed and reallocated every step — because it keeps their pages
//! (`MIMALLOC_PURGE_DELAY=-1`) where `malloc` would `munmap` them and page-fault them back in.
//! But a training step's many medium blocks (0.1–32 MB: activations, `im2col` columns, weight
//! copies) fragment mimalloc's per-thread segments: one IBP step of `mnist-large` at batch 50
//! with ~100 MB live held ~190 MB resident above idle under mimalloc against ~120 MB under
//! `malloc`, at the same speed, and the whole `mnist-small` step 56 MB against 20 MB
//! (`docs/PERFORMANCE.md`, "Training-step memory"). `malloc` coalesces freed neighbours and
//! reuses them; mimalloc's small-object heaps, tried below 128 KiB as well, added ~40 MB.
//!
//! Routing is by the layout's size, which `dealloc` and `realloc` are given too, so every block
//! is freed by the allocator that made it; a `realloc` across the boundary moves the block.
//!
//! With glibc, the first allocation also fixes two of `malloc`'s thresholds (`mallopt`, once):
//! blocks up to [`LARGE`] come from its heaps, never from `mmap` (by default it maps blocks from
//! 128 KiB and only raises that threshold after freeing them), and free memory at the top of a
//! heap is returned to the system only beyond 1 GiB (default: twice the `mmap` threshold) — the
//! same policy as mimalloc's `MIMALLOC_PURGE_DELAY=-1`: freed pages are reused, not faulted back
//! in. Measured on the exact dual (`certify`, 2,000 images): 3.64–3.72 s against 3.96–4.51 s
//! with glibc's defaults and 3.88–4.41 s with mimalloc alone.

use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout, System};

/// The smallest block served by mimalloc: 32 MiB (glibc's largest `mmap` threshold, so `malloc`
/// can keep every block it serves in its heaps).
pub const LARGE: usize = 32 << 20;

/// The allocator: `#[global_allocator] static GLOBAL: hybrid_alloc::Hybrid = hybrid_alloc::Hybrid;`
#[derive(Debug, Default, Clone, Copy)]
pub struct Hybrid;

#[inline]
fn large(size: usize) -> bool {
    size >= LARGE
}

/// glibc's `malloc` thresholds, set once before its first use (see the module doc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::sync::atomic::{AtomicBool, Ordering};

    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    /// Free memory glibc keeps at the top of a heap before returning it.
    pub const TRIM_THRESHOLD: i32 = 1 << 30;
    static TUNED: AtomicBool = AtomicBool::new(false);

    #[inline]
    pub fn tune_once() {
        if !TUNED.load(Ordering::Relaxed) && !TUNED.swap(true, Ordering::Relaxed) {
            // SAFETY: `mallopt` only sets parameters; it allocates nothing through this allocator.
            // Two threads racing here set the same values.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, super::LARGE as i32);
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    #[inline]
    pub fn tune_once() {}
}

// SAFETY: each call is forwarded to one of two sound allocators, chosen by the block's size, which
// the caller passes unchanged to `dealloc` (the `GlobalAlloc` contract): a block is always freed
// or resized by the allocator that made it. A `realloc` that crosses `LARGE` allocates in the
// other allocator, copies `min(old, new)` bytes and frees the old block in its own.
unsafe impl GlobalAlloc for Hybrid {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(layout.size()) {
            MiMalloc.alloc(layout)
        } else {
            glibc::tune_once();
            System.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if large(layout.size()) {
            MiMalloc.alloc_zeroed(layout)
        } else {
            glibc::tune_once();
            System.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if large(layout.size()) {
            MiMalloc.dealloc(ptr, layout)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (large(layout.size()), large(new_size)) {
            (true, true) => MiMalloc.realloc(ptr, layout, new_size),
            (false, false) => System.realloc(ptr, layout, new_size),
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, does
                // not overflow `isize` (the `realloc` contract), so this layout is valid.
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates `size` bytes, writes a pattern, checks it, frees.
    fn round_trip(size: usize) {
        let layout = Layout::from_size_align(size, 64).unwrap();
        unsafe {
            let p = Hybrid.alloc(layout);
            assert!(!p.is_null(), "no block of {size} bytes");
            assert_eq!(p as usize % 64, 0, "alignment");
            for i in (0..size).step_by(4093) {
                *p.add(i) = (i % 251) as u8;
            }
            for i in (0..size).step_by(4093) {
                assert_eq!(*p.add(i), (i % 251) as u8);
            }
            Hybrid.dealloc(p, layout);
        }
    }

    #[test]
    fn both_sides_of_the_boundary() {
        for size in [1, 4096, LARGE - 1, LARGE, LARGE + 4096] {
            round_trip(size);
        }
    }

    #[test]
    fn zeroed_blocks_are_zero() {
        for size in [100, LARGE - 64, LARGE + 64] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            unsafe {
                let p = Hybrid.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!((0..size).step_by(997).all(|i| *p.add(i) == 0), "{size} bytes not zeroed");
                Hybrid.dealloc(p, layout);
            }
        }
    }

    /// Growing and shrinking across `LARGE` keeps the contents and frees in the right allocator.
    #[test]
    fn realloc_across_the_boundary_keeps_the_contents() {
        let small = LARGE - 4096;
        let big = LARGE + 4096;
        unsafe {
            let layout = Layout::from_size_align(small, 32).unwrap();
            let p = Hybrid.alloc(layout);
            assert!(!p.is_null());
            for i in 0..small {
                *p.add(i) = (i % 253) as u8;
            }
            let q = Hybrid.realloc(p, layout, big);
            assert!(!q.is_null());
            assert_eq!(q as usize % 32, 0);
            assert!((0..small).step_by(1009).all(|i| *q.add(i) == (i % 253) as u8), "grown block lost data");
            let big_layout = Layout::from_size_align(big, 32).unwrap();
            let r = Hybrid.realloc(q, big_layout, 1000);
            assert!(!r.is_null());
            assert!((0..1000).all(|i| *r.add(i) == (i % 253) as u8), "shrunk block lost data");
            Hybrid.dealloc(r, Layout::from_size_align(1000, 32).unwrap());
        }
    }

    /// A `Vec` growing past the boundary through the global-allocator path, as a program sees it.
    #[test]
    fn a_vector_grows_across_the_boundary() {
        #[global_allocator]
        static GLOBAL: Hybrid = Hybrid;
        let mut v: Vec<u32> = Vec::new();
        for i in 0..(LARGE / 4 + 1000) as u32 {
            v.push(i);
        }
        assert!(v.iter().enumerate().step_by(4099).all(|(i, &x)| x == i as u32));
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10).collect::<Vec<u32>>());
    }
}

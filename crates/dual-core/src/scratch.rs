//! Per-thread scratch buffers that outlive a call.
//!
//! The fused passes (IBP's interval rows, the plain forward pass) and the convolution kernels
//! need a few buffers per call that are fully written before they are read. Allocated
//! zero-filled on every call, they cost IBP on the papers' Fashion-MNIST model ~2.8 MB of zero
//! fill per thread per call of 25 images (the chain's four buffers, each convolution's patch and
//! product buffers; worked out from the shapes) — with the other per-call changes of 2026-12-05
//! a few percent of the call (docs/PERFORMANCE.md). [`Scratch::take`] lends buffers from the calling thread's
//! pool instead, grown on demand (only the grown part is filled) and handed back when the guard
//! drops; their contents are left over from earlier use, every element initialised.
//!
//! Nested takes on one thread (a fused pass whose maps run convolutions) get further buffers
//! from the pool, or fresh ones when it runs dry. Buffers above [`KEEP_BYTES`] are freed rather
//! than kept, so a thread holds at most a few cache-sized buffers between calls.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Largest buffer (bytes) a thread keeps between calls; larger ones are freed on return.
pub const KEEP_BYTES: usize = 8 << 20;

/// Element types with a per-thread pool of scratch buffers.
pub trait ScratchElem: Copy + Default + 'static {
    /// The calling thread's pool of buffers of this type.
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>>;
}

thread_local! {
    static F32_POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static F64_POOL: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

impl ScratchElem for f32 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<f32>>>> {
        &F32_POOL
    }
}

impl ScratchElem for f64 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<f64>>>> {
        &F64_POOL
    }
}

/// Buffers lent by the calling thread's pool; they go back to it when this drops.
pub struct Scratch<T: ScratchElem> {
    bufs: Vec<Vec<T>>,
}

impl<T: ScratchElem> Scratch<T> {
    /// `lens.len()` buffers, buffer `i` holding at least `lens[i]` elements (contents
    /// unspecified).
    pub fn take(lens: &[usize]) -> Self {
        let mut bufs: Vec<Vec<T>> = T::pool().with(|p| {
            let mut p = p.borrow_mut();
            let keep = p.len().saturating_sub(lens.len());
            p.split_off(keep)
        });
        bufs.resize_with(lens.len(), Vec::new);
        for (b, &l) in bufs.iter_mut().zip(lens) {
            if b.len() < l {
                b.resize(l, T::default());
            }
        }
        Scratch { bufs }
    }

    /// Buffer `i`, cut to `len` elements.
    pub fn get(&mut self, i: usize, len: usize) -> &mut [T] {
        &mut self.bufs[i][..len]
    }

    /// Buffer `i` itself (at least the length asked for): a caller may move it out while it works
    /// and put it back before the guard drops (what is left in its place is kept otherwise).
    pub fn vec(&mut self, i: usize) -> &mut Vec<T> {
        &mut self.bufs[i]
    }

    /// Every buffer, buffer `i` cut to `lens[i]` elements.
    pub fn all<'a>(&'a mut self, lens: &[usize]) -> Vec<&'a mut [T]> {
        self.bufs.iter_mut().zip(lens).map(|(b, &l)| &mut b[..l]).collect()
    }
}

impl<T: ScratchElem> Drop for Scratch<T> {
    fn drop(&mut self) {
        let bufs = std::mem::take(&mut self.bufs);
        let keep = bufs.into_iter().filter(|b| b.len() * std::mem::size_of::<T>() <= KEEP_BYTES);
        // `try_with`: a guard dropped while the thread's locals are torn down frees its buffers.
        let _ = T::pool().try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.extend(keep);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_grown() {
        let p0 = {
            let mut s = Scratch::<f32>::take(&[10, 20]);
            s.get(0, 10).fill(1.0);
            s.get(1, 20).fill(2.0);
            s.get(0, 10).as_ptr()
        };
        let mut s = Scratch::<f32>::take(&[10, 20]);
        assert_eq!(s.get(0, 10).as_ptr(), p0, "the same buffer comes back");
        assert!(s.get(0, 10).iter().all(|&v| v == 1.0), "contents are left over, initialised");
        drop(s);
        let lens = [10, 40];
        let mut s = Scratch::<f32>::take(&lens);
        let all = s.all(&lens);
        assert_eq!(all[1].len(), 40, "a buffer grows to the length asked for");
    }

    #[test]
    fn nested_takes_get_their_own_buffers() {
        let mut outer = Scratch::<f64>::take(&[8, 8]);
        let mut inner = Scratch::<f64>::take(&[8]);
        outer.get(0, 8).fill(3.0);
        inner.get(0, 8).fill(4.0);
        assert!(outer.get(0, 8).iter().all(|&v| v == 3.0));
        drop(inner);
        drop(outer);
        assert!(F64_POOL.with(|p| p.borrow().len()) >= 3);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        let n = KEEP_BYTES / 4 + 1;
        let before = F32_POOL.with(|p| p.borrow().len());
        drop(Scratch::<f32>::take(&[n]));
        let after = F32_POOL.with(|p| p.borrow().iter().filter(|b| b.len() >= n).count());
        assert_eq!(after, 0);
        assert!(F32_POOL.with(|p| p.borrow().len()) <= before);
    }
}

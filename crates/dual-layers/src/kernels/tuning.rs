//! The kernels' scheduling knobs: process-wide defaults and a per-thread scope for tests.

use std::cell::Cell;
use std::sync::RwLock;

/// Knobs of the kernels' scheduling, exposed for benchmarks; the defaults were measured on a
/// 2-core machine (see `benches/`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Target size in bytes of the per-task patch buffer: images are grouped into one gemm
    /// until their patch matrices fill it.
    pub group_bytes: usize,
    /// Tasks per rayon thread when splitting the batch (more tasks balance load better).
    pub tasks_per_thread: usize,
    /// Below this many multiply-adds in total, run on the calling thread only.
    pub serial_macs: usize,
    /// Use gemm's own threading on one task instead of splitting the batch over rayon.
    pub gemm_threads: bool,
    /// Route every call to Candle's own convolutions (for before/after comparisons).
    pub candle: bool,
    /// Visit the non-zeros only when fewer than this fraction of an operand is non-zero (and the
    /// dense product costs enough per element to pay for finding them): the input of a
    /// convolution or linear layer, the gradient in their input and kernel gradients (0 turns
    /// it off).
    pub sparse_below: f64,
}

impl Tuning {
    /// The defaults.
    pub const DEFAULT: Tuning = Tuning {
        group_bytes: 256 << 10,
        tasks_per_thread: 4,
        serial_macs: 1 << 18,
        gemm_threads: false,
        candle: false,
        sparse_below: 0.05,
    };
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::DEFAULT
    }
}

/// The process-wide knobs: [`Tuning::DEFAULT`] unless a binary changed them with [`set_tuning`].
static TUNING: RwLock<Tuning> = RwLock::new(Tuning::DEFAULT);

thread_local! {
    /// The knobs of the innermost [`with_tuning`] on this thread, if any.
    static SCOPED: Cell<Option<Tuning>> = const { Cell::new(None) };
}

/// The scheduling knobs in force on this thread: those of the innermost [`with_tuning`], else the
/// process-wide ones. Read on the thread that calls a kernel (a kernel's rayon tasks get them
/// from it), so a scope covers every kernel call made inside it.
pub fn tuning() -> Tuning {
    SCOPED.with(|s| s.get()).unwrap_or_else(|| *TUNING.read().unwrap_or_else(|e| e.into_inner()))
}

/// Changes the process-wide knobs, for a benchmark binary that compares schedules. Tests use
/// [`with_tuning`], which touches no state other threads see.
pub fn set_tuning(t: Tuning) {
    *TUNING.write().unwrap_or_else(|e| e.into_inner()) = t;
}

/// Runs `f` with the knobs `t` for every kernel called on this thread inside it (restored on
/// return and on unwinding); other threads keep theirs.
pub fn with_tuning<R>(t: Tuning, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Tuning>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|s| s.replace(Some(t))));
    f()
}

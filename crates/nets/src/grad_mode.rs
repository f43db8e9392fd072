//! Gradient mode: whether the layers hand their parameters to the forward pass and to the dual
//! network as tracked variables (training) or as plain tensors (certification, attacks).
//!
//! With tracked parameters Candle records every operation of the dual network and keeps every
//! intermediate tensor alive until the graph is dropped; for the exact bound that is gigabytes
//! of columns. Inside [`no_grad`] the same computation records nothing: the numbers are
//! identical, memory is freed as soon as a tensor is dead, and no gradient can be taken.

use candle_core::{Tensor, Var};
use std::cell::Cell;

thread_local! {
    static NO_GRAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with gradient tracking of parameters off on this thread (like PyTorch's
/// `torch.no_grad()`); the previous mode is restored afterwards, also when `f` panics.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|c| c.replace(true)));
    f()
}

/// Is gradient tracking of parameters on (the default)?
pub fn grad_enabled() -> bool {
    !NO_GRAD.with(|c| c.get())
}

/// A parameter as the layers use it: the variable itself when gradients are on, a detached view
/// of the same storage (no copy) inside [`no_grad`]. Custom layers should read their parameters
/// through this function too.
pub fn param(v: &Var) -> Tensor {
    if grad_enabled() {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

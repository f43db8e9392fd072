//! Dual of a Dense layer: a sum of affine maps over the last m outputs (skip connections).

use candle_core::Tensor;
use dual_core::{DualAffine, DualError, Inputs, Result};

/// `z_t = Σ_{i=1}^{m} W_i(z_{t-m-1+i})`, `W_m` on the most recent output, a missing `W_i` skips
/// its output (Wong et al. 2018, §4). Forward and transpose are those of the parts, summed or
/// handed to each input.
pub struct DualDense {
    parts: Vec<Option<Box<dyn DualAffine>>>,
}

impl DualDense {
    /// `parts[i]` acts on the `(m - i)`-th most recent output; every part must read one input.
    pub fn new(parts: Vec<Option<Box<dyn DualAffine>>>) -> Result<Self> {
        if parts.iter().all(|p| p.is_none()) {
            return Err(DualError::invalid("a Dense layer needs at least one part"));
        }
        if let Some(p) = parts.iter().flatten().find(|p| p.inputs() != Inputs::Last) {
            return Err(DualError::Unsupported(format!("nested Dense parts are not supported ({})", p.name())));
        }
        Ok(DualDense { parts })
    }
}

impl DualAffine for DualDense {
    fn name(&self) -> String {
        let names: Vec<String> =
            self.parts.iter().map(|p| p.as_ref().map(|p| p.name()).unwrap_or_else(|| "-".into())).collect();
        format!("Dense({})", names.join(", "))
    }

    fn inputs(&self) -> Inputs {
        Inputs::LastM(self.parts.len())
    }

    fn forward(&self, xs: &[Option<&Tensor>], with_bias: bool) -> Result<Option<Tensor>> {
        let mut sum: Option<Tensor> = None;
        for (part, x) in self.parts.iter().zip(xs) {
            let Some(part) = part else { continue };
            if x.is_none() && !with_bias {
                continue;
            }
            if let Some(y) = part.forward(&[*x], with_bias)? {
                sum = Some(match sum {
                    None => y,
                    // Shared columns (batch 1) may meet per-example ones.
                    Some(s) => s.broadcast_add(&y)?,
                });
            }
        }
        Ok(sum)
    }

    /// `Σ_i |A_i| r_i` over the parts.
    fn forward_abs(&self, radii: &[Option<&Tensor>]) -> Result<Option<Tensor>> {
        let mut sum: Option<Tensor> = None;
        for (part, r) in self.parts.iter().zip(radii) {
            let (Some(part), Some(r)) = (part, r) else { continue };
            if let Some(y) = part.forward_abs(&[Some(*r)])? {
                sum = Some(match sum {
                    None => y,
                    Some(s) => s.broadcast_add(&y)?,
                });
            }
        }
        Ok(sum)
    }

    fn transpose(&self, nu: &Tensor) -> Result<Vec<Option<Tensor>>> {
        self.parts
            .iter()
            .map(|p| match p {
                None => Ok(None),
                Some(p) => Ok(p.transpose(nu)?.into_iter().next().flatten()),
            })
            .collect()
    }

    /// The sum of the parts' costs, each on its own input.
    fn macs_per_column(&self, in_numels: &[Option<usize>], out_numel: usize) -> usize {
        self.parts
            .iter()
            .zip(in_numels)
            .map(|(p, n)| match p {
                Some(p) => p.macs_per_column(&[*n], out_numel),
                None => 0,
            })
            .sum()
    }

    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>> {
        let mut sum: Option<Tensor> = None;
        for p in self.parts.iter().flatten() {
            if let Some(t) = p.bias_term(nu)? {
                sum = Some(match sum {
                    None => t,
                    Some(s) => (s + t)?,
                });
            }
        }
        Ok(sum)
    }
}

use crate::{spec::LayerSpec, Layer};
use candle_core::{Result as CResult, Tensor, Var};
use dual_core::{DualAffine, DualError, DualNode, Inputs, Result as DResult};
use dual_layers::DualDense;

/// `Σ_i W_i(z_{t-m-1+i})` over the last `m` outputs; `parts[m-1]` reads the most recent output.
pub struct Dense {
    pub parts: Vec<Option<Box<dyn Layer>>>,
}

impl Layer for Dense {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Dense { parts: self.parts.iter().map(|p| p.as_ref().map(|p| p.spec())).collect() }
    }
    fn inputs(&self) -> Inputs {
        Inputs::LastM(self.parts.len())
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        let mut sum: Option<Tensor> = None;
        for (p, x) in self.parts.iter().zip(xs) {
            let Some(p) = p else { continue };
            let Some(x) = x else { candle_core::bail!("a Dense part reads an output before the network input") };
            let y = p.forward(&[Some(x)])?;
            sum = Some(match sum {
                None => y,
                Some(s) => (s + y)?,
            });
        }
        sum.ok_or_else(|| candle_core::Error::Msg("Dense layer without parts".into()))
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        let mut parts: Vec<Option<Box<dyn DualAffine>>> = Vec::new();
        for (p, x) in self.parts.iter().zip(xs) {
            match p {
                None => parts.push(None),
                Some(p) => match p.dual(&[*x])? {
                    DualNode::Affine(a) => parts.push(Some(a)),
                    DualNode::Activation(a) => {
                        return Err(DualError::Unsupported(format!(
                            "{} inside a Dense layer (parts must be affine)",
                            a.name()
                        )))
                    }
                },
            }
        }
        Ok(DualNode::Affine(Box::new(DualDense::new(parts)?)))
    }
    fn params(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            if let Some(p) = p {
                for (n, var) in p.params() {
                    v.push((format!("Ws.{i}.{n}"), var));
                }
            }
        }
        v
    }
}

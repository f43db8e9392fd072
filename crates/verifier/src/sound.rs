//! `--sound` for the verifier: bounds from the `sound` crate (f64, every rounding charged) and
//! counterexamples confirmed in f64 and in f32 on one f32-representable point of the box.

use crate::answer::Answer;
use crate::bounds::{BoundMethod, InputBox};
use candle_core::{DType, Device, Tensor};
use nets::Network;
use onnx_import::Model;
use sound::{SoundNetwork, SoundOptions};
use vnnlib::Property;

/// The exact dual's bound checked by the `sound` crate: never above the true minimum over the
/// box for the real-valued (lowered) network, whatever the rounding of the computation; with
/// `deployed_f32` also for the network evaluated in f32.
pub struct SoundDual {
    /// The check's options.
    pub opts: SoundOptions,
}

impl BoundMethod for SoundDual {
    fn name(&self) -> String {
        if self.opts.deployed_f32 {
            "wong-kolter exact dual, checked sound (deployed f32)".into()
        } else {
            "wong-kolter exact dual, checked sound".into()
        }
    }

    fn lower_bounds(&self, net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        let b = boxes.len();
        if b == 0 || rows.is_empty() {
            return Ok(vec![vec![]; b]);
        }
        let run = || -> Result<Vec<Vec<f64>>, Box<dyn std::error::Error>> {
            let check = SoundNetwork::new(net, self.opts)?;
            let shape = [&[b][..], net.input_shape()].concat();
            let lo: Vec<f64> = boxes.iter().flat_map(|(l, _)| l.iter().copied()).collect();
            let hi: Vec<f64> = boxes.iter().flat_map(|(_, h)| h.iter().copied()).collect();
            let bx = sound::InputBox::new(
                &Tensor::from_vec(lo, shape.clone(), &Device::Cpu)?,
                &Tensor::from_vec(hi, shape, &Device::Cpu)?,
            )?;
            let (n, m) = (rows.len(), rows[0].len());
            let c = Tensor::from_vec(rows.concat(), (1, n, m), &Device::Cpu)?;
            Ok(check.lower_bounds(&bx, &c)?.to_vec2::<f64>()?)
        };
        run().map_err(|e| e.to_string())
    }
}

/// The f32 point nearest `x` inside `[lo, hi]` (clamped first), or `None` when the box holds no
/// f32 value in some coordinate.
pub fn f32_point_in_box(x: &[f64], lo: &[f64], hi: &[f64]) -> Option<Vec<f32>> {
    x.iter()
        .zip(lo.iter().zip(hi))
        .map(|(v, (l, h))| {
            let mut f = v.clamp(*l, *h) as f32;
            if (f as f64) < *l {
                f = f.next_up();
            }
            if (f as f64) > *h {
                f = f.next_down();
            }
            ((f as f64) >= *l && (f as f64) <= *h).then_some(f)
        })
        .collect()
}

/// A counterexample confirmed twice on the same f32 point of the clause's box: the graph's own
/// f64 forward pass and the lowered network evaluated in f32 must both put it in the unsafe set.
pub fn confirm_counterexample(
    model: &Model,
    net: Option<&Network>,
    prop: &Property,
    x: &[f64],
    lo: &[f64],
    hi: &[f64],
) -> Option<Answer> {
    let net = net?;
    let xf = f32_point_in_box(x, lo, hi)?;
    let x64: Vec<f64> = xf.iter().map(|&v| v as f64).collect();
    let y64 = model.forward(&x64).ok()?;
    prop.violated_by(&x64, &y64)?;
    let shape = [&[1usize][..], net.input_shape()].concat();
    let y32 = (|| -> candle_core::Result<Vec<f64>> {
        let n32 = net.to_dtype(DType::F32).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let t = Tensor::from_vec(xf.clone(), shape, &Device::Cpu)?;
        let y = n32.forward(&t).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        y.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
    })()
    .ok()?;
    prop.violated_by(&x64, &y32)?;
    Some(Answer::Sat { x: x64, y: y64 })
}

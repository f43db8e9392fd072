//! A dense row-major f64 tensor: what every value of an imported graph is.
//!
//! Float models are evaluated in f64 (the weights, f32 in the file, convert exactly), integer
//! tensors (shapes, pads) hold their values as f64 too (exact below 2⁵³).

use crate::proto::onnx::{tensor_proto::DataType, TensorProto};

/// A dense tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, last index fastest.
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor from its shape and data; errors if the sizes differ.
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Result<Self, String> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(format!("shape {shape:?} holds {n} values, got {}", data.len()));
        }
        Ok(Tensor { shape, data })
    }

    /// Zeros of a shape.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The same data under another shape of the same size.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Result<Self, String> {
        let n: usize = shape.iter().product();
        if n != self.data.len() {
            return Err(format!("cannot reshape {:?} ({} values) to {shape:?}", self.shape, self.data.len()));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Row-major strides.
    pub fn strides(shape: &[usize]) -> Vec<usize> {
        let mut s = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * shape[i + 1];
        }
        s
    }

    /// The values as integers (shapes, pads, axes); errors on a non-integer.
    pub fn to_i64(&self) -> Result<Vec<i64>, String> {
        self.data
            .iter()
            .map(
                |&v| {
                    if v.fract() == 0.0 && v.is_finite() {
                        Ok(v as i64)
                    } else {
                        Err(format!("{v} is not an integer"))
                    }
                },
            )
            .collect()
    }

    /// Decodes a `TensorProto` (float, double, float16 excluded; int32/int64/uint8/int8/bool as
    /// numbers), from its typed fields or `raw_data` (little-endian). External data is refused.
    pub fn from_proto(t: &TensorProto) -> Result<Self, String> {
        let shape: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
            .collect::<Result<_, _>>()?;
        let n: usize = shape.iter().product();
        if t.data_location == Some(1) || !t.external_data.is_empty() {
            return Err("tensors stored in external files are not supported".into());
        }
        let dt = DataType::try_from(t.data_type()).map_err(|_| format!("unknown data type {}", t.data_type()))?;
        let raw = t.raw_data.as_deref();
        let data: Vec<f64> = match (dt, raw) {
            (DataType::Float, Some(r)) => chunks::<4>(r, n)?.map(|b| f32::from_le_bytes(b) as f64).collect(),
            (DataType::Float, None) => t.float_data.iter().map(|&v| v as f64).collect(),
            (DataType::Double, Some(r)) => chunks::<8>(r, n)?.map(f64::from_le_bytes).collect(),
            (DataType::Double, None) => t.double_data.clone(),
            (DataType::Int64, Some(r)) => chunks::<8>(r, n)?.map(|b| i64::from_le_bytes(b) as f64).collect(),
            (DataType::Int64, None) => t.int64_data.iter().map(|&v| v as f64).collect(),
            (DataType::Int32, Some(r)) => chunks::<4>(r, n)?.map(|b| i32::from_le_bytes(b) as f64).collect(),
            (DataType::Int32 | DataType::Int8 | DataType::Uint8 | DataType::Bool, None) => {
                t.int32_data.iter().map(|&v| v as f64).collect()
            }
            (DataType::Int8, Some(r)) => r.iter().map(|&b| b as i8 as f64).collect(),
            (DataType::Uint8 | DataType::Bool, Some(r)) => r.iter().map(|&b| b as f64).collect(),
            (other, _) => return Err(format!("data type {} is not supported", other.as_str_name())),
        };
        if data.len() != n {
            return Err(format!("shape {shape:?} needs {n} values, the tensor holds {}", data.len()));
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err("the tensor holds NaN or infinite values".into());
        }
        Ok(Tensor { shape, data })
    }
}

fn chunks<const N: usize>(raw: &[u8], n: usize) -> Result<impl Iterator<Item = [u8; N]> + '_, String> {
    if raw.len() != n * N {
        return Err(format!("raw data has {} bytes, {n} values of {N} bytes need {}", raw.len(), n * N));
    }
    Ok(raw.chunks_exact(N).map(|c| c.try_into().expect("exact chunks")))
}

/// The numpy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// Strides of `shape` seen from a broadcast result of rank `rank` (0 where broadcast).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let s = Tensor::strides(shape);
    let off = out.len() - shape.len();
    (0..out.len()).map(|i| if i < off || shape[i - off] == 1 { 0 } else { s[i - off] }).collect()
}

/// Elementwise `f(a, b)` with numpy broadcasting.
pub fn broadcast_binary(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Result<Tensor, String> {
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let n: usize = shape.iter().product();
    if a.shape == shape && b.shape == shape {
        return Ok(Tensor { shape, data: a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect() });
    }
    let (sa, sb) = (broadcast_strides(&a.shape, &shape), broadcast_strides(&b.shape, &shape));
    let mut idx = vec![0usize; shape.len()];
    let mut data = Vec::with_capacity(n);
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..n {
        data.push(f(a.data[ia], b.data[ib]));
        // Advance the multi-index (last axis fastest), updating both offsets.
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < shape[d] {
                break;
            }
            ia -= sa[d] * shape[d];
            ib -= sb[d] * shape[d];
            idx[d] = 0;
        }
    }
    Ok(Tensor { shape, data })
}

/// `numpy.matmul`: 1-d operands get a dimension added and removed, leading dimensions broadcast.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    if a.shape.is_empty() || b.shape.is_empty() {
        return Err("MatMul needs operands of rank at least 1".into());
    }
    let a_vec = a.shape.len() == 1;
    let b_vec = b.shape.len() == 1;
    let ash = if a_vec { vec![1, a.shape[0]] } else { a.shape.clone() };
    let bsh = if b_vec { vec![b.shape[0], 1] } else { b.shape.clone() };
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (k2, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != k2 {
        return Err(format!("MatMul of {:?} and {:?}: inner dimensions {k} and {k2} differ", a.shape, b.shape));
    }
    let batch = broadcast_shape(&ash[..ash.len() - 2], &bsh[..bsh.len() - 2])?;
    let nb: usize = batch.iter().product();
    // Which matrix of each operand every output batch entry uses.
    let ia = broadcast_index(&ash[..ash.len() - 2], &batch);
    let ib = broadcast_index(&bsh[..bsh.len() - 2], &batch);
    let mut data = vec![0.0; nb * m * n];
    for t in 0..nb {
        let am = &a.data[ia[t] * m * k..(ia[t] + 1) * m * k];
        let bm = &b.data[ib[t] * k * n..(ib[t] + 1) * k * n];
        let out = &mut data[t * m * n..(t + 1) * m * n];
        for i in 0..m {
            for p in 0..k {
                let x = am[i * k + p];
                if x == 0.0 {
                    continue;
                }
                let row = &bm[p * n..(p + 1) * n];
                for (o, &w) in out[i * n..(i + 1) * n].iter_mut().zip(row) {
                    *o += x * w;
                }
            }
        }
    }
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    Ok(Tensor { shape, data })
}

/// For every position of the broadcast shape `out`, the flat index into `shape`.
fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let s = broadcast_strides(shape, out);
    let os = Tensor::strides(out);
    (0..n).map(|f| (0..out.len()).map(|d| (f / os[d]) % out[d] * s[d]).sum()).collect()
}

/// Moves axis order by `perm` (a transpose).
pub fn transpose(t: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    let src = Tensor::strides(&t.shape);
    let os = Tensor::strides(&shape);
    let data = (0..t.numel())
        .map(|f| {
            let off: usize = (0..shape.len()).map(|d| (f / os[d]) % shape[d] * src[perm[d]]).sum();
            t.data[off]
        })
        .collect();
    Tensor { shape, data }
}

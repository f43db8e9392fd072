//! Mostly-zero coefficient rows, stored by their non-zeros (compressed sparse rows).
//!
//! The check's layer-wise bounds start from rows of the transpose of the identity through a
//! convolution: a unit of a convolution's output reads `C_in k²` of its input's `C_in H W`
//! values (on the papers' model 256 of 3,136), and another convolution below keeps the rows
//! local (a receptive field of 10 × 10 of the 784 pixels). Dense tensors spend every step of the
//! backward pass on the zeros; here each step visits the non-zeros only:
//!
//! * [`Csr::signed_dots`]: with `h = fl(g ∘ s)` (or `g`), `Σ max(h, 0) v` and `Σ min(h, 0) v`
//!   per row, as [`crate::fused::signed_dots`];
//! * [`Csr::matmul`]: `g ↦ gᵀ T` with `T` the transpose of the identity through a Linear or
//!   Conv2d layer (its entries are the layer's weights, exactly: `wᵢ · 1` plus zeros), i.e. the
//!   layer's transpose `Aᵀ g`. Each output is a sum of the same products `g_k w_{k,i}` the dense
//!   transpose sums, in another order, so its rounding is bounded by the same
//!   `γ_n Σ |g_k w_{k,i}|` the check charges (`n` the products per output, any order).
//!
//! Zeros are skipped, never invented: an entry left out is exactly 0 in the dense result too.

use crate::{Result, SoundError};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// Rows `[batch · rows]` of length `n` (a node of shape `shape`), by their non-zeros.
#[derive(Clone)]
pub(crate) struct Csr {
    /// Examples the rows are for (1: shared by every example).
    pub batch: usize,
    /// Rows per example.
    pub rows: usize,
    /// The node's shape (without batch and rows).
    pub shape: Vec<usize>,
    /// `ptr[i]..ptr[i + 1]`: the non-zeros of row `i`.
    pub ptr: Vec<usize>,
    /// Column of each non-zero.
    pub col: Vec<u32>,
    /// Value of each non-zero.
    pub val: Vec<f64>,
}

/// One row by its non-zeros: columns and values.
type Row = (Vec<u32>, Vec<f64>);

/// Above this fraction of non-zeros a dense tensor is faster.
pub(crate) const DENSE_ABOVE: f64 = 0.2;

impl Csr {
    /// Columns per row.
    pub fn n(&self) -> usize {
        self.shape.iter().product()
    }

    /// Fraction of non-zeros.
    pub fn density(&self) -> f64 {
        self.val.len() as f64 / ((self.batch * self.rows * self.n()).max(1)) as f64
    }

    /// The non-zeros of `t` (`[B, R, *shape]`, f64).
    pub fn from_dense(t: &Tensor) -> Result<Self> {
        if t.dtype() != DType::F64 || t.rank() < 2 {
            return Err(SoundError::BadInput(format!(
                "sparse rows from a {:?} tensor of shape {:?}",
                t.dtype(),
                t.dims()
            )));
        }
        let (batch, rows) = (t.dim(0)?, t.dim(1)?);
        let shape = t.dims()[2..].to_vec();
        let n: usize = shape.iter().product();
        let v = t.flatten_all()?.to_vec1::<f64>()?;
        let parts: Vec<Row> = v
            .par_chunks(n.max(1))
            .map(|row| {
                let mut c = Vec::new();
                let mut x = Vec::new();
                for (j, &a) in row.iter().enumerate() {
                    if a != 0.0 {
                        c.push(j as u32);
                        x.push(a);
                    }
                }
                (c, x)
            })
            .collect();
        Ok(Self::from_parts(batch, rows, shape, parts))
    }

    fn from_parts(batch: usize, rows: usize, shape: Vec<usize>, parts: Vec<Row>) -> Self {
        let mut ptr = Vec::with_capacity(parts.len() + 1);
        ptr.push(0);
        let total: usize = parts.iter().map(|p| p.0.len()).sum();
        let (mut col, mut val) = (Vec::with_capacity(total), Vec::with_capacity(total));
        for (c, x) in parts {
            col.extend_from_slice(&c);
            val.extend_from_slice(&x);
            ptr.push(col.len());
        }
        Csr { batch, rows, shape, ptr, col, val }
    }

    /// Rows per example: row `r` of example `e` is row `sel[e][r]` of these (shared) rows, or
    /// empty for `None`. The result has batch `sel.len()`.
    pub fn select_rows(&self, sel: &[Vec<Option<usize>>]) -> Self {
        let width = sel.first().map(Vec::len).unwrap_or(0);
        let parts = sel
            .iter()
            .enumerate()
            .flat_map(|(e, row)| row.iter().map(move |j| (e, *j)))
            .map(|(e, j)| match j {
                Some(j) => {
                    let i = if self.batch == 1 { j } else { e * self.rows + j };
                    let (a, b) = (self.ptr[i], self.ptr[i + 1]);
                    (self.col[a..b].to_vec(), self.val[a..b].to_vec())
                }
                None => (Vec::new(), Vec::new()),
            })
            .collect();
        Self::from_parts(sel.len(), width, self.shape.clone(), parts)
    }

    /// The dense tensor `[batch, rows, *shape]`.
    pub fn to_dense(&self) -> Result<Tensor> {
        let n = self.n();
        let mut v = vec![0f64; self.batch * self.rows * n];
        for i in 0..self.batch * self.rows {
            for q in self.ptr[i]..self.ptr[i + 1] {
                v[i * n + self.col[q] as usize] = self.val[q];
            }
        }
        let mut shape = vec![self.batch, self.rows];
        shape.extend_from_slice(&self.shape);
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    /// `h = fl(g ∘ s)` (with `scale` `[B, *shape]`; then `h` has batch `B`) or `h = g`, and per
    /// vector `v_k` (`[B, *shape]`) the sums `Σ max(h, 0) v_k` and `Σ min(h, 0) v_k`, `[B, R]`.
    pub fn signed_dots(
        &self,
        scale: Option<&Tensor>,
        vs: &[&Tensor],
        batch: usize,
    ) -> Result<(Option<Csr>, Vec<Tensor>, Vec<Tensor>)> {
        let n = self.n();
        if self.batch != 1 && self.batch != batch {
            return Err(SoundError::BadInput(format!("sparse rows for {} examples, values for {batch}", self.batch)));
        }
        let flat = |t: &Tensor, what: &str| -> Result<Vec<f64>> {
            if t.elem_count() != batch * n {
                return Err(SoundError::BadInput(format!("{what} of shape {:?} against rows of {n}", t.dims())));
            }
            Ok(t.flatten_all()?.to_vec1::<f64>()?)
        };
        let sv = scale.map(|s| flat(s, "a scale")).transpose()?;
        let vv: Vec<Vec<f64>> = vs.iter().map(|v| flat(v, "a vector")).collect::<Result<_>>()?;
        let k = vs.len();
        let rows = self.rows;
        let out: Vec<(Vec<f64>, Option<Row>)> = (0..batch * rows)
            .into_par_iter()
            .map(|i| {
                let (e, r) = (i / rows, i % rows);
                let src = if self.batch == 1 { r } else { i };
                let (a, b) = (self.ptr[src], self.ptr[src + 1]);
                let mut acc = vec![0f64; 2 * k];
                let mut hs = Vec::new();
                for q in a..b {
                    let j = self.col[q] as usize;
                    let h = match &sv {
                        Some(s) => self.val[q] * s[e * n + j],
                        None => self.val[q],
                    };
                    if sv.is_some() {
                        hs.push(h);
                    }
                    if h != 0.0 {
                        let slot = if h > 0.0 { 0 } else { 1 };
                        for (p, v) in vv.iter().enumerate() {
                            acc[2 * p + slot] += h * v[e * n + j];
                        }
                    }
                }
                let scaled = sv.as_ref().map(|_| (self.col[a..b].to_vec(), hs));
                (acc, scaled)
            })
            .collect();
        let dev = Device::Cpu;
        let mut pos = Vec::with_capacity(k);
        let mut neg = Vec::with_capacity(k);
        for p in 0..k {
            pos.push(Tensor::from_vec(out.iter().map(|o| o.0[2 * p]).collect::<Vec<_>>(), (batch, rows), &dev)?);
            neg.push(Tensor::from_vec(out.iter().map(|o| o.0[2 * p + 1]).collect::<Vec<_>>(), (batch, rows), &dev)?);
        }
        let scaled = if sv.is_some() {
            let parts = out.into_iter().map(|o| o.1.unwrap_or_default()).collect();
            Some(Self::from_parts(batch, rows, self.shape.clone(), parts))
        } else {
            None
        };
        Ok((scaled, pos, neg))
    }

    /// `gᵀ T` row by row: `t` holds, per unit `k` of this node, the row `Aᵀ e_k` (shape
    /// `out_shape`); the result has the same batch and rows.
    pub fn matmul(&self, t: &Csr, out_shape: &[usize]) -> Result<Csr> {
        let (n, m) = (self.n(), t.n());
        if t.batch * t.rows != n || out_shape.iter().product::<usize>() != m {
            return Err(SoundError::BadInput(format!(
                "a transpose of {} rows of {m} for rows of {n} (output shape {out_shape:?})",
                t.batch * t.rows
            )));
        }
        let parts: Vec<Row> = (0..self.batch * self.rows)
            .into_par_iter()
            .map(|i| {
                let mut acc = vec![0f64; m];
                let (a, b) = (self.ptr[i], self.ptr[i + 1]);
                for (&k, &g) in self.col[a..b].iter().zip(&self.val[a..b]) {
                    let (c, d) = (t.ptr[k as usize], t.ptr[k as usize + 1]);
                    for (&j, &w) in t.col[c..d].iter().zip(&t.val[c..d]) {
                        acc[j as usize] += g * w;
                    }
                }
                let mut c = Vec::new();
                let mut x = Vec::new();
                for (j, &v) in acc.iter().enumerate() {
                    if v != 0.0 {
                        c.push(j as u32);
                        x.push(v);
                    }
                }
                (c, x)
            })
            .collect();
        Ok(Self::from_parts(self.batch, self.rows, out_shape.to_vec(), parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[b, r, n]` tensor with about a third of its entries non-zero, reproducible.
    fn sparse_tensor(b: usize, r: usize, n: usize, seed: u64) -> Tensor {
        let mut s = seed;
        let v: Vec<f64> = (0..b * r * n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                if u < 0.35 {
                    (u - 0.17) * 3.0
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(v, (b, r, n), &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) {
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f64>().unwrap(), b.flatten_all().unwrap().to_vec1::<f64>().unwrap());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn round_trip_and_row_selection() {
        let t = sparse_tensor(2, 5, 9, 1);
        let c = Csr::from_dense(&t).unwrap();
        close(&c.to_dense().unwrap(), &t);
        let picked = c.select_rows(&[vec![Some(4), Some(1)], vec![Some(0), None]]).to_dense().unwrap();
        let rows = |e: usize, j: usize| t.narrow(0, e, 1).unwrap().narrow(1, j, 1).unwrap();
        let want = Tensor::cat(
            &[
                Tensor::cat(&[rows(0, 4), rows(0, 1)], 1).unwrap(),
                Tensor::cat(&[rows(1, 0), rows(1, 0).zeros_like().unwrap()], 1).unwrap(),
            ],
            0,
        )
        .unwrap();
        close(&picked, &want);
    }

    #[test]
    fn matmul_is_the_dense_product() {
        let g = sparse_tensor(3, 4, 6, 2);
        let tr = sparse_tensor(1, 6, 5, 3);
        let out = Csr::from_dense(&g).unwrap().matmul(&Csr::from_dense(&tr).unwrap(), &[5]).unwrap();
        let want = g.reshape((12, 6)).unwrap().matmul(&tr.reshape((6, 5)).unwrap()).unwrap();
        close(&out.to_dense().unwrap().reshape((12, 5)).unwrap(), &want);
    }

    #[test]
    fn signed_dots_split_the_sums_and_scale() {
        let g = sparse_tensor(1, 3, 8, 4);
        let s = sparse_tensor(2, 1, 8, 5).abs().unwrap().squeeze(1).unwrap();
        let v = sparse_tensor(2, 1, 8, 6).squeeze(1).unwrap();
        let (h, pos, neg) = Csr::from_dense(&g).unwrap().signed_dots(Some(&s), &[&v], 2).unwrap();
        let hd = g.broadcast_mul(&s.unsqueeze(1).unwrap()).unwrap();
        close(&h.unwrap().to_dense().unwrap(), &hd);
        let dot = |t: Tensor| t.broadcast_mul(&v.unsqueeze(1).unwrap()).unwrap().sum(2).unwrap();
        close(&pos[0], &dot(hd.relu().unwrap()));
        close(&neg[0], &dot(hd.minimum(0.0).unwrap()));
        let dense = crate::fused::signed_dots(&g, Some(&s), &[&v], 2).unwrap();
        close(&dense.scaled.unwrap(), &hd);
        close(&dense.pos[0], &pos[0]);
        close(&dense.neg[0], &neg[0]);
    }
}

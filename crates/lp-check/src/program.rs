//! A linear program (with at most one second-order cone) and its solution by Clarabel, in f64.

use anyhow::{anyhow, bail, Result};
use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettingsBuilder, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use serde::Serialize;

/// A sparse linear form `Σ a_i v_i` as `(variable, coefficient)` pairs.
pub type LinExpr = Vec<(usize, f64)>;

/// `minimise qᵀv` subject to equalities `aᵀv = b`, inequalities `aᵀv ≤ b` and at most one
/// second-order cone on affine rows `b - aᵀv` (first row the radius).
#[derive(Debug, Default, Clone)]
pub struct LinearProgram {
    n: usize,
    eq: Vec<(LinExpr, f64)>,
    le: Vec<(LinExpr, f64)>,
    soc: Vec<(LinExpr, f64)>,
}

/// What the solver found.
#[derive(Debug, Clone, Serialize)]
pub struct LpSolution {
    /// The primal objective value.
    pub value: f64,
    /// The dual objective value (equal to `value` up to the solver's tolerance).
    pub dual_value: f64,
    /// `Solved` or `AlmostSolved` (reduced accuracy).
    pub status: String,
    /// Interior-point iterations.
    pub iterations: u32,
    /// The optimal point.
    #[serde(skip)]
    pub x: Vec<f64>,
}

impl LinearProgram {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of variables.
    pub fn num_vars(&self) -> usize {
        self.n
    }

    /// Number of constraint rows (equalities, inequalities, cone rows).
    pub fn num_rows(&self) -> usize {
        self.eq.len() + self.le.len() + self.soc.len()
    }

    /// Adds `k` free variables; returns their indices.
    pub fn add_vars(&mut self, k: usize) -> Vec<usize> {
        let v = (self.n..self.n + k).collect();
        self.n += k;
        v
    }

    /// `e · v = rhs`.
    pub fn add_eq(&mut self, e: LinExpr, rhs: f64) {
        self.eq.push((e, rhs));
    }

    /// `e · v ≤ rhs`.
    pub fn add_le(&mut self, e: LinExpr, rhs: f64) {
        self.le.push((e, rhs));
    }

    /// `‖v[vars] - center‖₂ ≤ radius` (replaces an earlier cone).
    pub fn set_l2_ball(&mut self, vars: &[usize], center: &[f64], radius: f64) {
        self.soc.clear();
        // Rows b - a v: (radius - 0, -center_i - (-v_i)).
        self.soc.push((Vec::new(), radius));
        for (&v, &c) in vars.iter().zip(center) {
            self.soc.push((vec![(v, -1.0)], -c));
        }
    }

    /// Minimises `objective · v`. Errors unless the solver reports an optimum (possibly of
    /// reduced accuracy).
    pub fn minimize(&self, objective: &[(usize, f64)]) -> Result<LpSolution> {
        let mut q = vec![0.0; self.n];
        for &(i, a) in objective {
            if i >= self.n {
                bail!("objective refers to variable {i} of {}", self.n);
            }
            q[i] += a;
        }
        let (mut ri, mut ci, mut vals, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cones = Vec::new();
        for (k, rows) in [&self.eq, &self.le, &self.soc].into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            for (row, rhs) in rows {
                let r = b.len();
                for &(j, a) in row {
                    ri.push(r);
                    ci.push(j);
                    vals.push(a);
                }
                b.push(*rhs);
            }
            cones.push(match k {
                0 => SupportedConeT::ZeroConeT(rows.len()),
                1 => SupportedConeT::NonnegativeConeT(rows.len()),
                _ => SupportedConeT::SecondOrderConeT(rows.len()),
            });
        }
        let a = CscMatrix::new_from_triplets(b.len(), self.n, ri, ci, vals);
        let p = CscMatrix::<f64>::zeros((self.n, self.n));
        let settings = DefaultSettingsBuilder::default()
            .verbose(false)
            .tol_gap_abs(1e-9)
            .tol_gap_rel(1e-9)
            .tol_feas(1e-9)
            .max_iter(500)
            .build()
            .map_err(|e| anyhow!("clarabel settings: {e:?}"))?;
        let mut solver =
            DefaultSolver::new(&p, &q, &a, &b, &cones, settings).map_err(|e| anyhow!("clarabel setup: {e}"))?;
        solver.solve();
        let s = &solver.solution;
        match s.status {
            SolverStatus::Solved | SolverStatus::AlmostSolved => Ok(LpSolution {
                value: s.obj_val,
                dual_value: s.obj_val_dual,
                status: format!("{:?}", s.status),
                iterations: s.iterations,
                x: s.x.clone(),
            }),
            other => bail!("the LP was not solved: {other:?} after {} iterations", s.iterations),
        }
    }
}

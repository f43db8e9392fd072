//! The dual network against linear programs solved with Clarabel, on tiny MLPs (f64).
//!
//! Two relaxations of the ReLUs, both with the intermediate bounds `l, u` the dual network
//! computed (unstable units `l < 0 < u`, slope `d = u / (u - l)`; `z = ẑ` where `l ≥ 0`, `z = 0`
//! where `u ≤ 0`):
//! * the triangle (the LP of Wong & Kolter): `z ≥ 0, z ≥ ẑ, z ≤ u (ẑ - l) / (u - l)`. The dual
//!   with its fixed slopes is a feasible point of this LP's dual, so `J(c) ≤ LP` (weak duality);
//! * the strip with the dual's fixed slopes: `d ẑ ≤ z ≤ d (ẑ - l)`. The dual network solves this
//!   LP exactly (it is an affine image of the input set and a box), so `J(c)` and every layer
//!   bound must equal its optimum.
//!
//! On the first ReLU both relaxations are irrelevant and the bounds are exact: they equal the
//! LP minimum and maximum of each pre-activation over the input set.

use candle_core::{DType, Device, Tensor};
use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettingsBuilder, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use dual_core::{class_difference_c, DualOptions, DualSource};
use dual_layers::{Epsilon, InfBall, InfBallBounded, L2Ball};
use nets::spec::build::{dense, linear, relu};
use nets::{LayerSpec, Network, NetworkSpec};
use std::collections::HashMap;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn dev() -> Device {
    Device::Cpu
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

// ------------------------------------------------------------------------------------------
// A small LP builder on top of Clarabel: minimise qᵀv subject to equalities, inequalities
// `aᵀv ≤ b` and at most one second-order cone on affine rows.

type Row = Vec<(usize, f64)>;

#[derive(Default, Clone)]
struct Lp {
    n: usize,
    eq: Vec<(Row, f64)>,
    le: Vec<(Row, f64)>,
    /// Rows `b_i - a_iᵀ v` that must lie in a second-order cone (first entry the radius).
    soc: Vec<(Row, f64)>,
}

impl Lp {
    fn vars(&mut self, k: usize) -> Vec<usize> {
        let v = (self.n..self.n + k).collect();
        self.n += k;
        v
    }

    fn solve(&self, q: &Row) -> f64 {
        let mut qv = vec![0.0; self.n];
        for &(i, a) in q {
            qv[i] += a;
        }
        let (mut ri, mut ci, mut vals, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cones = Vec::new();
        for (rows, cone) in [(&self.eq, 0), (&self.le, 1), (&self.soc, 2)] {
            if rows.is_empty() {
                continue;
            }
            for (row, rhs) in rows.iter() {
                let r = b.len();
                for &(j, a) in row {
                    ri.push(r);
                    ci.push(j);
                    vals.push(a);
                }
                b.push(*rhs);
            }
            cones.push(match cone {
                0 => SupportedConeT::ZeroConeT(rows.len()),
                1 => SupportedConeT::NonnegativeConeT(rows.len()),
                _ => SupportedConeT::SecondOrderConeT(rows.len()),
            });
        }
        let a = CscMatrix::new_from_triplets(b.len(), self.n, ri, ci, vals);
        let p = CscMatrix::<f64>::zeros((self.n, self.n));
        let settings = DefaultSettingsBuilder::default()
            .verbose(false)
            .tol_gap_abs(1e-10)
            .tol_gap_rel(1e-10)
            .tol_feas(1e-10)
            .max_iter(400)
            .build()
            .unwrap();
        let mut solver = DefaultSolver::new(&p, &qv, &a, &b, &cones, settings).unwrap();
        solver.solve();
        let sol = &solver.solution;
        assert!(matches!(sol.status, SolverStatus::Solved), "LP not solved: {:?}", sol.status);
        sol.obj_val
    }
}

// ------------------------------------------------------------------------------------------
// The network as plain numbers.

/// One layer: an affine map of earlier outputs, or a ReLU of the previous output.
enum Node {
    /// `Σ W_s outs[s] + b`, with `W` as `[out][in]`.
    Affine { parts: Vec<(usize, Vec<Vec<f64>>)>, b: Vec<f64> },
    Relu,
}

/// The layers of a network of Linear, Identity, ReLU and Dense layers.
fn nodes(net: &Network) -> Vec<Node> {
    let sd: HashMap<String, Tensor> = net.state_dict().into_iter().collect();
    let matrix = |name: String| -> Vec<Vec<f64>> {
        let w = &sd[&name];
        let (o, k) = w.dims2().unwrap();
        let v = flat(w);
        (0..o).map(|r| v[r * k..(r + 1) * k].to_vec()).collect()
    };
    let mut width = vec![net.input_shape()[0]];
    let mut out = Vec::new();
    for (i, l) in net.spec().layers.iter().enumerate() {
        let t = i + 1;
        let parts: Vec<(usize, Option<&LayerSpec>, String)> = match l {
            LayerSpec::ReLU => {
                out.push(Node::Relu);
                width.push(width[t - 1]);
                continue;
            }
            LayerSpec::Dense { parts } => {
                let m = parts.len();
                parts
                    .iter()
                    .enumerate()
                    .filter_map(|(p, s)| s.as_ref().map(|s| (t + p - m, Some(s), format!("{i}.Ws.{p}."))))
                    .collect()
            }
            other => vec![(t - 1, Some(other), format!("{i}."))],
        };
        let mut mats = Vec::new();
        let mut bias: Option<Vec<f64>> = None;
        for (src, spec, prefix) in parts {
            let w = match spec.unwrap() {
                LayerSpec::Linear { .. } => {
                    let b = flat(&sd[&format!("{prefix}bias")]);
                    bias = Some(match bias {
                        None => b,
                        Some(a) => a.iter().zip(&b).map(|(x, y)| x + y).collect(),
                    });
                    matrix(format!("{prefix}weight"))
                }
                LayerSpec::Identity => {
                    let k = width[src];
                    (0..k).map(|r| (0..k).map(|c| if r == c { 1.0 } else { 0.0 }).collect()).collect()
                }
                other => panic!("no LP for {other:?}"),
            };
            mats.push((src, w));
        }
        let k = mats[0].1.len();
        width.push(k);
        out.push(Node::Affine { parts: mats, b: bias.unwrap_or_else(|| vec![0.0; k]) });
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Relax {
    /// `z ≥ 0, z ≥ ẑ, z ≤ d (ẑ - l)`.
    Triangle,
    /// `d ẑ ≤ z ≤ d (ẑ - l)`.
    Strip,
}

#[derive(Clone, Debug)]
enum Set {
    /// `lo ≤ x' ≤ hi`.
    Box { lo: Vec<f64>, hi: Vec<f64> },
    /// `‖x' - x‖₂ ≤ r`.
    L2 { x: Vec<f64>, r: f64 },
}

/// The LP of outputs `0..=last` of the network for one example; returns it and the variables of
/// output `last`. `bounds[&t]` = (l, u) of the input of the ReLU at layer `t`.
fn build(nodes: &[Node], k0: usize, set: &Set, bounds: &HashMap<usize, (Vec<f64>, Vec<f64>)>, relax: Relax, last: usize) -> (Lp, Vec<usize>) {
    let mut lp = Lp::default();
    let mut outs = vec![lp.vars(k0)];
    match set {
        Set::Box { lo, hi } => {
            for i in 0..k0 {
                lp.le.push((vec![(outs[0][i], 1.0)], hi[i]));
                lp.le.push((vec![(outs[0][i], -1.0)], -lo[i]));
            }
        }
        Set::L2 { x, r } => {
            // s = (r, x' - x) in the cone, as rows b - a v: (r - 0, -x - (-x')).
            lp.soc.push((vec![], *r));
            for i in 0..k0 {
                lp.soc.push((vec![(outs[0][i], -1.0)], -x[i]));
            }
        }
    }
    for (k, node) in nodes[..last].iter().enumerate() {
        let t = k + 1;
        let v = match node {
            Node::Relu => {
                let (l, u) = &bounds[&t];
                let zhat = outs[t - 1].clone();
                let z = lp.vars(zhat.len());
                for j in 0..zhat.len() {
                    let (l, u, zh, zo) = (l[j], u[j], zhat[j], z[j]);
                    if l >= 0.0 {
                        lp.eq.push((vec![(zo, 1.0), (zh, -1.0)], 0.0));
                    } else if u <= 0.0 {
                        lp.eq.push((vec![(zo, 1.0)], 0.0));
                    } else {
                        let d = u / (u - l);
                        match relax {
                            Relax::Triangle => {
                                lp.le.push((vec![(zo, -1.0)], 0.0));
                                lp.le.push((vec![(zh, 1.0), (zo, -1.0)], 0.0));
                            }
                            Relax::Strip => lp.le.push((vec![(zh, d), (zo, -1.0)], 0.0)),
                        }
                        // z ≤ d (ẑ - l).
                        lp.le.push((vec![(zo, 1.0), (zh, -d)], -d * l));
                    }
                }
                z
            }
            Node::Affine { parts, b } => {
                let z = lp.vars(b.len());
                for r in 0..b.len() {
                    let mut e = vec![(z[r], 1.0)];
                    for (src, w) in parts {
                        e.extend(w[r].iter().enumerate().map(|(i, &a)| (outs[*src][i], -a)));
                    }
                    lp.eq.push((e, b[r]));
                }
                z
            }
        };
        outs.push(v);
    }
    let v = outs[last].clone();
    (lp, v)
}

// ------------------------------------------------------------------------------------------

fn mlp(seed: u64) -> Network {
    let spec = NetworkSpec::sequential("mlp", &[3], vec![linear(3, 8), relu(), linear(8, 8), relu(), linear(8, 3)]);
    Network::init(&spec, seed, DType::F64, &dev()).unwrap()
}

/// A DenseSequential MLP with skips from the input and an identity skip past a `None` part.
fn dense_mlp(seed: u64) -> Network {
    let spec = NetworkSpec::dense_sequential(
        "dense-mlp",
        &[3],
        vec![
            linear(3, 6),                                                       // 1
            relu(),                                                             // 2
            dense(vec![Some(linear(3, 6)), None, Some(linear(6, 6))]),          // 3: reads 0, 1, 2
            relu(),                                                             // 4
            dense(vec![Some(LayerSpec::Identity), None, Some(linear(6, 6))]),   // 5: reads 2, 3, 4
            relu(),                                                             // 6
            dense(vec![Some(linear(3, 3)), None, None, None, None, None, Some(linear(6, 3))]), // 7: reads 0..6
        ],
    );
    Network::init(&spec, seed, DType::F64, &dev()).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Inf,
    InfUnitBox,
    InfPerFeature,
    L2,
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

fn check_net(net: &Network, seed: u64, kind: Kind) {
    let nodes = nodes(net);
    let nl = nodes.len();
    let name = net.spec().name;
    let mut rng = StdRng::seed_from_u64(100 + seed);
    let bsz = 2;
    let xv: Vec<f64> = (0..bsz * 3).map(|_| rng.random_range(0.05..0.95)).collect();
    let x = Tensor::from_vec(xv.clone(), (bsz, 3), &dev()).unwrap();
    let eps = 0.25;
    let per_feature: Vec<f64> = (0..bsz * 3).map(|_| rng.random_range(0.05..0.5)).collect();
    let src: Box<dyn DualSource> = match kind {
        Kind::Inf => Box::new(InfBall::new(&x, eps).unwrap()),
        Kind::InfUnitBox => Box::new(InfBallBounded::new(&x, 2.0 * eps, 0.0, 1.0).unwrap()),
        Kind::InfPerFeature => {
            Box::new(InfBall::new(&x, Epsilon::Tensor(Tensor::from_vec(per_feature.clone(), (bsz, 3), &dev()).unwrap())).unwrap())
        }
        Kind::L2 => Box::new(L2Ball::new(&x, 2.0 * eps).unwrap()),
    };
    let dual = net.dual(&x, src, &DualOptions::default()).unwrap();
    let unstable: usize = dual.unstable_counts().iter().flatten().sum();
    assert!(unstable > 0, "{name} seed {seed} {kind:?}: no unstable unit");
    let y: Vec<u32> = net.forward(&x).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let cd = class_difference_c(&y, 3, DType::F64, &dev()).unwrap();
    let rnd: Vec<f64> = (0..bsz * 2 * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
    let c = Tensor::cat(&[cd, Tensor::from_vec(rnd, (bsz, 2, 3), &dev()).unwrap()], 1).unwrap();
    let nc = c.dim(1).unwrap();
    let cv = flat(&c);
    let j = flat(&dual.objective(&c).unwrap());
    let lbs: Vec<(Vec<f64>, Vec<f64>)> = dual.bounds().iter().map(|b| (flat(&b.lower), flat(&b.upper))).collect();
    let relus = nodes.iter().filter(|n| matches!(n, Node::Relu)).count();
    assert_eq!(lbs.len(), relus);
    for b in 0..bsz {
        let xb = &xv[b * 3..(b + 1) * 3];
        let set = match kind {
            Kind::Inf => Set::Box { lo: xb.iter().map(|v| v - eps).collect(), hi: xb.iter().map(|v| v + eps).collect() },
            Kind::InfUnitBox => Set::Box {
                lo: xb.iter().map(|v| (v - 2.0 * eps).max(0.0)).collect(),
                hi: xb.iter().map(|v| (v + 2.0 * eps).min(1.0)).collect(),
            },
            Kind::InfPerFeature => {
                let e = &per_feature[b * 3..(b + 1) * 3];
                Set::Box { lo: (0..3).map(|i| xb[i] - e[i]).collect(), hi: (0..3).map(|i| xb[i] + e[i]).collect() }
            }
            Kind::L2 => Set::L2 { x: xb.to_vec(), r: 2.0 * eps },
        };
        // This example's bounds.
        let bnd: HashMap<usize, (Vec<f64>, Vec<f64>)> = lbs
            .iter()
            .zip(dual.bounds())
            .map(|((l, u), lb)| {
                let k = l.len() / bsz;
                (lb.layer, (l[b * k..(b + 1) * k].to_vec(), u[b * k..(b + 1) * k].to_vec()))
            })
            .collect();
        // Layer bounds: the strip LP's min and max of every pre-activation; on the first ReLU
        // also the exact (triangle = no relaxation) LP.
        for (i, lb) in dual.bounds().iter().enumerate() {
            let (l, u) = &bnd[&lb.layer];
            for relax in [Relax::Strip, Relax::Triangle] {
                if relax == Relax::Triangle && i > 0 {
                    continue;
                }
                let (lp, zhat) = build(&nodes, 3, &set, &bnd, relax, lb.layer - 1);
                for (unit, &v) in zhat.iter().enumerate() {
                    let lo = lp.solve(&vec![(v, 1.0)]);
                    let hi = -lp.solve(&vec![(v, -1.0)]);
                    assert!(
                        close(l[unit], lo, 1e-6) && close(u[unit], hi, 1e-6),
                        "{name} seed {seed} {kind:?} example {b}: ReLU {i} unit {unit} ({relax:?} LP): bounds [{}, {}], LP [{lo}, {hi}]",
                        l[unit],
                        u[unit]
                    );
                }
            }
        }
        // The objective.
        let (strip, out_s) = build(&nodes, 3, &set, &bnd, Relax::Strip, nl);
        let (tri, out_t) = build(&nodes, 3, &set, &bnd, Relax::Triangle, nl);
        for r in 0..nc {
            let cr = &cv[(b * nc + r) * 3..(b * nc + r + 1) * 3];
            if cr.iter().all(|&a| a == 0.0) {
                continue;
            }
            let jr = j[b * nc + r];
            let ls = strip.solve(&out_s.iter().zip(cr).map(|(&v, &a)| (v, a)).collect());
            let lt = tri.solve(&out_t.iter().zip(cr).map(|(&v, &a)| (v, a)).collect());
            println!("{name} seed {seed} {kind:?} example {b} c #{r}: J = {jr:.8}, strip LP = {ls:.8}, triangle LP = {lt:.8}");
            assert!(close(jr, ls, 1e-6), "{name} seed {seed} {kind:?} example {b} c #{r}: J = {jr} differs from the strip LP {ls}");
            assert!(jr <= lt + 1e-6 * (1.0 + lt.abs()), "{name} seed {seed} {kind:?} example {b} c #{r}: J = {jr} above the triangle LP {lt}");
        }
    }
}

fn check_all(kind: Kind) {
    for seed in 0..4 {
        check_net(&mlp(seed), seed, kind);
        check_net(&dense_mlp(seed), seed, kind);
    }
}

#[test]
fn linf_ball() {
    check_all(Kind::Inf);
}

#[test]
fn linf_ball_in_unit_box() {
    check_all(Kind::InfUnitBox);
}

#[test]
fn linf_ball_per_feature_radius() {
    check_all(Kind::InfPerFeature);
}

#[test]
fn l2_ball() {
    check_all(Kind::L2);
}

//! How loose are the root's layer bounds? Per activation of an ONNX network on a VNN-LIB box: the
//! bounds' mean width and unstable units, against what random points and a PGD search per unit
//! reach, and (an experiment, not sound) the unstable units above if the layers up to each one
//! were as tight as PGD's ranges. `cargo run --release -p verifier --example layer_gap -- NET.onnx
//! PROP.vnnlib [SAMPLES]`.
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let model = onnx_import::Model::load(&a[1]).unwrap();
    let prop = vnnlib::parse_file(&a[2]).unwrap();
    let samples: usize = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(20000);
    let net = model.to_network("onnx", &Device::Cpu).unwrap();
    let (lo, hi) = prop.clauses[0].input_box(prop.num_inputs);
    let m = prop.num_outputs;
    let mut row = vec![0.0; m];
    row[0] = 1.0;
    let opts = verifier::bab::BetaOptions::default();
    let layers = verifier::bab::relu_root_layers(&net, &lo, &hi, &[row], &opts).unwrap();
    let k = lo.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut xs = Vec::with_capacity(samples * k);
    for s in 0..samples {
        for i in 0..k {
            let t: f64 = if s % 2 == 0 {
                rng.random::<f64>()
            } else if rng.random::<bool>() {
                1.0
            } else {
                0.0
            };
            xs.push(lo[i] + t * (hi[i] - lo[i]));
        }
    }
    let x = Tensor::from_vec(xs, (samples, k), &Device::Cpu).unwrap();
    let outs = net.forward_all(&x).unwrap();
    // pre-activations: outputs whose size matches the layer box, in order, before a ReLU.
    let nodes = net.dual_nodes(&x.narrow(0, 0, 1).unwrap()).unwrap();
    let acts: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n, dual_core::DualNode::Activation(_)))
        .map(|(i, _)| i)
        .collect();
    // PGD per unit and direction of each activation: the extremes a search finds.
    let mut pgd_w: Vec<Vec<(f64, f64)>> = Vec::new();
    for &t in &acts {
        let n: usize = outs[t].dims()[1..].iter().product();
        let b = 2 * n;
        let lo_t = Tensor::from_vec(lo.repeat(b), (b, k), &Device::Cpu).unwrap();
        let hi_t = Tensor::from_vec(hi.repeat(b), (b, k), &Device::Cpu).unwrap();
        let mut sel = vec![0f64; b * n];
        for j in 0..n {
            sel[j * n + j] = 1.0;
            sel[(n + j) * n + j] = -1.0;
        }
        let sel = Tensor::from_vec(sel, (b, n), &Device::Cpu).unwrap();
        let mid = ((&lo_t + &hi_t).unwrap() * 0.5).unwrap();
        let step = ((&hi_t - &lo_t).unwrap() * 0.05).unwrap();
        let mut xv = mid.clone();
        for _ in 0..100 {
            let var = candle_core::Var::from_tensor(&xv).unwrap();
            let o = net.forward_all(var.as_tensor()).unwrap();
            let obj = (o[t].flatten_from(1).unwrap() * &sel).unwrap().sum_all().unwrap();
            let g = obj.backward().unwrap();
            let gr = g.get(var.as_tensor()).unwrap().sign().unwrap();
            xv = (var.as_tensor() + (gr * &step).unwrap()).unwrap().maximum(&lo_t).unwrap().minimum(&hi_t).unwrap();
        }
        let o = net.forward_all(&xv).unwrap();
        let z = o[t].flatten_from(1).unwrap().to_vec2::<f64>().unwrap();
        pgd_w.push((0..n).map(|j| (z[n + j][j], z[j][j])).collect());
    }
    for (li, &t) in acts.iter().enumerate() {
        let pw: f64 = pgd_w[li].iter().map(|(a, b)| b - a).sum::<f64>() / pgd_w[li].len() as f64;
        let pun = pgd_w[li].iter().filter(|(a, b)| *a < 0.0 && *b > 0.0).count();
        println!("act {li}: pgd width {pw:.3}, pgd sign change {pun}");
        let z = outs[t].flatten_from(1).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let (l, u) = &layers[li];
        let n = l.len();
        let (mut bw, mut sw, mut unst, mut sunst) = (0.0, 0.0, 0, 0);
        for j in 0..n {
            let mn = z.iter().map(|r| r[j]).fold(f64::INFINITY, f64::min);
            let mx = z.iter().map(|r| r[j]).fold(f64::NEG_INFINITY, f64::max);
            assert!(mn >= l[j] - 1e-3 && mx <= u[j] + 1e-3, "unsound {li} {j}");
            bw += u[j] - l[j];
            sw += mx - mn;
            if l[j] < 0.0 && u[j] > 0.0 {
                unst += 1;
                if mn < 0.0 && mx > 0.0 {
                    sunst += 1;
                }
            }
        }
        println!(
            "act {li}: {n} units, bound width {:.3}, sampled width {:.3}, unstable {unst}, sampled sign change {sunst}",
            bw / n as f64,
            sw / n as f64
        );
    }

    // What if the layers up to L were as tight as PGD's ranges (not sound: an experiment)?
    for upto in 0..acts.len() {
        let mut lay = layers.clone();
        for li in 0..=upto {
            let (l, u) = &mut lay[li];
            for (j, (a, b)) in pgd_w[li].iter().enumerate() {
                l[j] = l[j].max(*a);
                u[j] = u[j].min(*b);
            }
        }
        let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        let st = verifier::bab::layer_alpha::tighten_layers(&net, &lo, &hi, &mut lay, 20, 0.1, far).unwrap();
        println!("pgd ranges up to act {upto}: unstable {:?}", st.unstable_after);
    }
}

//! The largest certified radius: it certifies, a slightly larger one does not, and the bisection
//! of a batch gives what it gives example by example.

use candle_core::{DType, Device, Tensor, D};
use experiments::min_distance::{margins, search_batch, SearchConfig};
use nets::spec::build::{linear, relu};
use nets::{Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn net(seed: u64) -> Network {
    let spec =
        NetworkSpec::sequential("tiny", &[4], vec![linear(4, 16), relu(), linear(16, 16), relu(), linear(16, 3)]);
    Network::init(&spec, seed, DType::F64, &Device::Cpu).unwrap()
}

/// Inputs with their predicted labels, except the last example which gets a wrong one.
fn data(net: &Network, seed: u64, b: usize) -> (Tensor, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..b * 4).map(|_| rng.random_range(0.0..1.0)).collect();
    let x = Tensor::from_vec(v, (b, 4), &Device::Cpu).unwrap();
    let mut y = net.forward(&x).unwrap().argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
    y[b - 1] = (y[b - 1] + 1) % 3;
    (x, y)
}

fn one(net: &Network, x: &Tensor, y: u32, eps: f64, cfg: &SearchConfig) -> f64 {
    margins(net, x, &[y], &[eps], cfg).unwrap()[0]
}

#[test]
fn found_radius_is_sandwiched() {
    for (seed, bounded) in [(0, false), (1, false), (2, true)] {
        let n = net(seed);
        let (x, y) = data(&n, 100 + seed, 6);
        // The margin tolerance off, so that the bracket decides (the sandwich below needs it).
        let cfg = SearchConfig { bounded_input: bounded, max_eps: 5.0, bound_tol: 0.0, ..Default::default() };
        let found = search_batch(&n, &x, &y, &cfg).unwrap();
        // With the default margin tolerance: certified, and either near zero or bracketed.
        let loose = SearchConfig { bound_tol: 1e-4, ..cfg.clone() };
        for (i, f) in search_batch(&n, &x, &y, &loose).unwrap().iter().enumerate().take(5) {
            let m = f.margin.unwrap();
            let xi = x.narrow(0, i, 1).unwrap();
            assert!(m < 0.0 && (m >= -1e-4 || one(&n, &xi, y[i], f.eps + 1e-5, &loose) >= 0.0), "{f:?}");
            assert!(f.eps <= found[i].eps + 1e-5, "{f:?} vs {:?}", found[i]);
        }
        assert_eq!(found.len(), 6);
        let last = found.last().unwrap();
        assert!(!last.correct && last.eps == 0.0 && last.iterations == 0);
        for (i, f) in found.iter().enumerate().take(5) {
            assert!(f.correct && f.eps > 0.0, "seed {seed} example {i}: {f:?}");
            let xi = x.narrow(0, i, 1).unwrap();
            let below = one(&n, &xi, y[i], f.eps * (1.0 - 1e-3), &cfg);
            assert!(below < 0.0, "seed {seed} example {i}: {f:?} does not certify just below: {below}");
            if !f.capped {
                let above = one(&n, &xi, y[i], f.eps * (1.0 + 1e-2) + 1e-4, &cfg);
                assert!(above >= 0.0, "seed {seed} example {i}: {f:?} still certifies above: {above}");
            }
            let m = f.margin.unwrap();
            assert!(m < 0.0 && (m - one(&n, &xi, y[i], f.eps, &cfg)).abs() < 1e-9);
            // Monotone in the radius.
            let grid: Vec<f64> = [0.0, 0.25, 0.5, 0.9, 1.0, 1.1, 2.0].iter().map(|s| s * f.eps).collect();
            let ms = margins(
                &n,
                &Tensor::cat(&vec![xi.clone(); grid.len()], 0).unwrap(),
                &vec![y[i]; grid.len()],
                &grid,
                &cfg,
            )
            .unwrap();
            for w in ms.windows(2) {
                assert!(w[1] >= w[0] - 1e-9, "seed {seed} example {i}: margins not monotone: {ms:?}");
            }
        }
    }
}

#[test]
fn batch_agrees_with_one_by_one_and_respects_the_cap() {
    let n = net(3);
    let (x, y) = data(&n, 7, 4);
    let cfg = SearchConfig { max_eps: 5.0, ..Default::default() };
    let all = search_batch(&n, &x, &y, &cfg).unwrap();
    for i in 0..4 {
        let single = search_batch(&n, &x.narrow(0, i, 1).unwrap(), &y[i..i + 1], &cfg).unwrap();
        assert!((single[0].eps - all[i].eps).abs() < 1e-9, "example {i}: {:?} vs {:?}", single[0], all[i]);
    }
    // A cap below the certified radius: the search stops there.
    let eps0 = all[0].eps;
    let capped = search_batch(
        &n,
        &x.narrow(0, 0, 1).unwrap(),
        &y[..1],
        &SearchConfig { initial: eps0 / 8.0, max_eps: eps0 / 4.0, ..cfg.clone() },
    )
    .unwrap();
    assert!(capped[0].capped && capped[0].eps == eps0 / 4.0, "{:?}", capped[0]);
    // In f32 the radius is close to the f64 one.
    let n32 = n.to_dtype(DType::F32).unwrap();
    let f32r = search_batch(&n32, &x.to_dtype(DType::F32).unwrap(), &y, &cfg).unwrap();
    for (a, b) in all.iter().zip(&f32r) {
        assert!((a.eps - b.eps).abs() <= 1e-3 * (1.0 + a.eps), "{a:?} vs {b:?}");
    }
}

//! The backward pass that consumes its root (`Tensor::backward_consuming`, the vendored Candle
//! patch): the same gradients as `backward`, bit for bit, on the interval-bound training losses;
//! no gradient entry for constants; and the forward graph freed during the pass, so the peak of
//! live memory is below `backward`'s (measured with a counting allocator: this test binary's own).

use candle_core::{DType, Device, Tensor, Var};
use dual_core::bounds::Method;
use experiments::certify::Norm;
use experiments::train::certified::{bound_cross_entropy, margin_bounds_with_layers};
use nets::Network;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Mutex;

/// Live bytes and their peak, over every thread of this test binary.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = LIVE.fetch_add(l.size() as isize, Relaxed) + l.size() as isize;
        PEAK.fetch_max(n, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let n = LIVE.fetch_add(new as isize - l.size() as isize, Relaxed) + new as isize - l.size() as isize;
        PEAK.fetch_max(n, Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests share the counters: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn batch(b: usize, seed: u64) -> (Tensor, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..b * 784).map(|_| rng.random_range(0.0..1.0)).collect();
    (Tensor::from_vec(x, (b, 1, 28, 28), &Device::Cpu).unwrap(), (0..b).map(|_| rng.random_range(0..10)).collect())
}

#[test]
fn consuming_backward_gives_the_same_gradients_bit_for_bit() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Network::init(&nets::zoo::by_name("mnist-small").unwrap(), 3, DType::F32, &Device::Cpu).unwrap();
    let (x, y) = batch(6, 1);
    for method in [Method::Ibp, Method::CrownIbp] {
        let loss = || {
            let (lower, _) = margin_bounds_with_layers(&net, &x, &y, 0.1, Norm::Linf, true, method).unwrap();
            bound_cross_entropy(&lower, &y).unwrap()
        };
        let kept = loss().backward().unwrap();
        let consumed = loss().backward_consuming().unwrap();
        for (name, v) in net.params() {
            let (a, b) = (kept.get(v.as_tensor()), consumed.get(v.as_tensor()));
            let (a, b) = (a.unwrap_or_else(|| panic!("{name}: no gradient")), b.expect("a gradient"));
            assert_eq!(values(a), values(b), "{method:?} {name}: the gradients differ");
        }
    }
}

#[test]
fn constants_get_no_gradient_entry() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = Var::from_tensor(&Tensor::new(&[1.5f64, -2.0], &Device::Cpu).unwrap()).unwrap();
    let c = Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
    let loss = (w.as_tensor() * &c).unwrap().sqr().unwrap().sum_all().unwrap();
    let g = loss.backward_consuming().unwrap();
    assert_eq!(
        values(g.get(w.as_tensor()).expect("the variable's gradient")),
        vec![2.0 * 1.5 * 9.0, 2.0 * -2.0 * 16.0]
    );
    assert!(g.get(&c).is_none(), "a constant got a gradient entry");
    // Matmul and division skip the constant's side (none is computed) and keep the variable's.
    let m = Var::from_tensor(&Tensor::new(&[[1.0f64, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap()).unwrap();
    let k = Tensor::new(&[[0.5f64], [-1.0]], &Device::Cpu).unwrap();
    let loss = (m.as_tensor().matmul(&k).unwrap() / &Tensor::new(&[[2.0f64], [4.0]], &Device::Cpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward_consuming().unwrap();
    // d/dM_ij of Σ_i (M k)_i / d_i = k_j / d_i.
    assert_eq!(values(g.get(m.as_tensor()).expect("the variable's gradient")), vec![0.25, -0.5, 0.125, -0.25]);
    assert!(g.get(&k).is_none(), "a constant matmul operand got a gradient entry");
}

/// IBP's training loss on `mnist-large` (batch 50): `backward` holds the bound's whole graph
/// while it makes the gradients, so live memory rises above the graph's; the consuming pass frees
/// each forward tensor once its gradient is passed on, so it stays under what the graph held when
/// it started (plus the parameters' gradients, ~8 MiB, which both passes make).
#[test]
fn consuming_backward_frees_the_forward_graph_as_it_goes() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Network::init(&nets::zoo::by_name("mnist-large").unwrap(), 3, DType::F32, &Device::Cpu).unwrap();
    let (x, y) = batch(50, 2);
    // Per pass: (live bytes of the graph, rise of the peak above the live bytes at the start).
    let rise = |consume: bool| -> (isize, isize) {
        let before = LIVE.load(Relaxed);
        let (lower, _) = margin_bounds_with_layers(&net, &x, &y, 0.1, Norm::Linf, true, Method::Ibp).unwrap();
        let loss = bound_cross_entropy(&lower, &y).unwrap();
        drop(lower);
        let start = LIVE.load(Relaxed);
        PEAK.store(start, Relaxed);
        let g = if consume { loss.backward_consuming().unwrap() } else { loss.backward().unwrap() };
        assert!(net.params().iter().all(|(_, v)| g.get(v.as_tensor()).is_some()));
        (start - before, PEAK.load(Relaxed) - start)
    };
    let mib = |b: isize| b as f64 / (1 << 20) as f64;
    let ((graph, kept), (_, consumed)) = (rise(false), rise(true));
    eprintln!(
        "graph {:.1} MiB; peak rise: backward {:.1} MiB, consuming {:.1} MiB",
        mib(graph),
        mib(kept),
        mib(consumed)
    );
    assert!(graph > 8 << 20, "the bound's graph holds only {:.1} MiB", mib(graph));
    assert!(
        consumed < graph / 4,
        "the consuming pass rose {:.1} MiB over a {:.1} MiB graph",
        mib(consumed),
        mib(graph)
    );
    assert!(
        kept > consumed + graph / 4,
        "backward rose {:.1} MiB, the consuming pass {:.1} MiB",
        mib(kept),
        mib(consumed)
    );
}

//! Forward + backward in passes of a few examples (`experiments::chunked_grads`) gives the loss
//! and the parameter gradients of the whole batch: the exact dual's robust loss on a
//! convolutional and a fully connected network (f64, to 1e-12 relative), in every split of the
//! batch; the pass size follows the memory budget; and the workload the benchmark times splits
//! the papers' model at batch 50 into two passes of 25.

use candle_core::{DType, Device, Tensor};
use dual_core::{robust_loss, DualOptions};
use experiments::certify::{input_set, Norm};
use experiments::chunked_grads::{
    dual_bytes_per_example, examples_per_pass, mean_loss_grads_in_chunks, PASS_MEMORY_BUDGET,
};
use experiments::workloads::{pass_size, BoundKind, Workload};
use nets::Network;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn batch(arch: &str, b: usize, rng: &mut StdRng) -> (Tensor, Vec<u32>) {
    let x = Tensor::from_vec(
        (0..b * 784).map(|_| rng.random_range(0.0..1.0)).collect::<Vec<f64>>(),
        (b, 1, 28, 28),
        &Device::Cpu,
    )
    .unwrap();
    let x = if arch == "mnist-mlp" { x.reshape((b, 784)).unwrap() } else { x };
    (x, (0..b).map(|_| rng.random_range(0..10u32)).collect())
}

#[test]
fn passes_of_a_few_examples_give_the_whole_batchs_loss_and_gradients() {
    let mut rng = StdRng::seed_from_u64(7);
    for arch in ["mnist-small", "mnist-mlp"] {
        let net = Network::init(&nets::zoo::by_name(arch).unwrap(), 5, DType::F64, &Device::Cpu).unwrap();
        let (x, y) = batch(arch, 7, &mut rng);
        let pass = |r: std::ops::Range<usize>| -> anyhow::Result<(Tensor, f64)> {
            let xs = x.narrow(0, r.start, r.len())?;
            let dual = net.dual(&xs, input_set(&xs, 0.05, Norm::Linf, true)?, &DualOptions::default())?;
            let rl = robust_loss(&dual, &y[r])?;
            Ok((rl.loss, rl.error))
        };
        let whole = mean_loss_grads_in_chunks(7, 7, pass).unwrap();
        // The plain way: one graph, one backward pass.
        let plain = {
            let dual = net.dual(&x, input_set(&x, 0.05, Norm::Linf, true).unwrap(), &DualOptions::default()).unwrap();
            robust_loss(&dual, &y).unwrap()
        };
        let plain_loss = plain.loss.to_scalar::<f64>().unwrap();
        assert_eq!(whole.loss, plain_loss, "{arch}: one pass is the plain loss");
        let plain_grads = plain.loss.backward().unwrap();
        for chunk in [1, 2, 3, 4, 6] {
            let split = mean_loss_grads_in_chunks(7, chunk, pass).unwrap();
            let what = format!("{arch}, passes of {chunk}");
            assert!(
                (split.loss - plain_loss).abs() <= 1e-12 * plain_loss.abs(),
                "{what}: loss {} vs {plain_loss}",
                split.loss
            );
            assert!((split.stat - plain.error).abs() < 1e-12, "{what}: robust error {} vs {}", split.stat, plain.error);
            for (name, v) in net.params() {
                let (a, p) = (split.grads.get(&v), plain_grads.get(&v));
                assert!(a.is_some() && p.is_some(), "{what}: no gradient for {name}");
                let (a, p) = (values(a.unwrap()), values(p.unwrap()));
                let scale = p.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
                let err = a.iter().zip(&p).fold(0f64, |m, (a, p)| m.max((a - p).abs()));
                assert!(err <= 1e-12 * scale, "{what}: gradient of {name} off by {err:e} (scale {scale:e})");
            }
        }
    }
}

#[test]
fn the_pass_size_follows_the_memory_budget() {
    // One pass when the batch fits; otherwise the fewest passes, evenly filled.
    assert_eq!(examples_per_pass(50, 1 << 20, 1 << 30), 50);
    assert_eq!(examples_per_pass(50, 70 << 20, 2 << 30), 25);
    assert_eq!(examples_per_pass(50, 100 << 20, 2 << 30), 17);
    assert_eq!(examples_per_pass(7, usize::MAX, 1), 1);
    assert_eq!(examples_per_pass(1, 0, 0), 1);
    // 784 columns, two tensors per node, f32.
    assert_eq!(dual_bytes_per_example(784, &[10, 20], 4), 2 * 784 * 30 * 4);
    assert!(mean_loss_grads_in_chunks(0, 1, |_| unreachable!()).is_err());
    assert!(mean_loss_grads_in_chunks(3, 0, |_| unreachable!()).is_err());
}

#[test]
fn the_benchmarks_exact_backward_workload_runs_in_two_passes_of_25() {
    let net = Network::init(&nets::zoo::by_name("mnist-small").unwrap(), 1, DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::zeros((50, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let exact = Workload { bound: BoundKind::Exact, backward: true };
    assert_eq!(pass_size(&net, &x, exact).unwrap(), 25);
    // k = 50 projections keep 50 columns, not 784: a graph of ~240 MB estimated, in two passes
    // of 25 under the projected budget (a lower peak for no time); k = 10 fits one pass.
    let proj = Workload { bound: BoundKind::Projected { k: 50 }, backward: true };
    assert_eq!(pass_size(&net, &x, proj).unwrap(), 25);
    let proj10 = Workload { bound: BoundKind::Projected { k: 10 }, backward: true };
    assert_eq!(pass_size(&net, &x, proj10).unwrap(), 50);
    const { assert!(PASS_MEMORY_BUDGET >= 1 << 30) };
}

//! The papers' architectures by name (see `shared/PAPERS.md`).

use crate::spec::{build::*, BatchNormMode, LayerSpec, NetworkSpec};
use crate::{NetError, Result};

/// Names [`by_name`] knows (parametrised ones shown with their parameters).
pub const NAMES: &[&str] = &[
    "mnist-small",
    "fashion-mnist",
    "mnist-large",
    "mnist-mlp",
    "mnist-wide-K",
    "mnist-deep-K",
    "har-500",
    "har-500-250",
    "har-500-250-100",
    "har-resnet",
    "svhn-small",
    "cifar-small",
    "cifar-large",
    "cnn7",
    "cifar-cnn7",
    "cifar-resnet",
    "cifar-resnet-N-F",
    "mnist-pool",
    "mnist-smooth",
];

/// A small MNIST-size convnet with pooling (not from the papers; for the bound family's pooling
/// layers): Conv(1→16,k3,p1) ReLU MaxPool(2) Conv(16→32,k3,p1) ReLU AvgPool(2) Flatten
/// Linear(1568→100) ReLU Linear(100→10).
pub fn mnist_pool() -> NetworkSpec {
    NetworkSpec::sequential(
        "mnist-pool",
        &[1, 28, 28],
        vec![
            conv(1, 16, 3, 1, 1),
            relu(),
            maxpool(2, 2, 0),
            conv(16, 32, 3, 1, 1),
            relu(),
            avgpool(2, 2, 0),
            flatten(),
            linear(32 * 7 * 7, 100),
            relu(),
            linear(100, 10),
        ],
    )
}

/// An MNIST-size MLP with smooth activations (not from the papers): Flatten Linear(784→100)
/// Sigmoid Linear(100→100) Tanh Linear(100→10).
pub fn mnist_smooth() -> NetworkSpec {
    NetworkSpec::sequential(
        "mnist-smooth",
        &[1, 28, 28],
        vec![flatten(), linear(784, 100), sigmoid(), linear(100, 100), tanh(), linear(100, 10)],
    )
}

/// Paper 1's small convnet: Conv(c→16,k4,s2,p1) ReLU Conv(16→32,k4,s2,p1) ReLU Flatten
/// Linear(32·(s/4)²→100) ReLU Linear(100→10), for `c` channels of `s×s` images.
pub fn small_conv(name: &str, channels: usize, side: usize) -> NetworkSpec {
    let q = side / 4;
    NetworkSpec::sequential(
        name,
        &[channels, side, side],
        vec![
            conv(channels, 16, 4, 2, 1),
            relu(),
            conv(16, 32, 4, 2, 1),
            relu(),
            flatten(),
            linear(32 * q * q, 100),
            relu(),
            linear(100, 10),
        ],
    )
}

/// Paper 2's large convnet (4 conv + 3 linear).
pub fn large_conv(name: &str, channels: usize, side: usize) -> NetworkSpec {
    let q = side / 4;
    NetworkSpec::sequential(
        name,
        &[channels, side, side],
        vec![
            conv(channels, 32, 3, 1, 1),
            relu(),
            conv(32, 32, 4, 2, 1),
            relu(),
            conv(32, 64, 3, 1, 1),
            relu(),
            conv(64, 64, 4, 2, 1),
            relu(),
            flatten(),
            linear(64 * q * q, 512),
            relu(),
            linear(512, 512),
            relu(),
            linear(512, 10),
        ],
    )
}

/// Shi et al. 2021's CNN-7 (also SABR's and MTL-IBP's): Conv(c→64,k3,p1) BN ReLU
/// Conv(64→64,k3,p1) BN ReLU Conv(64→128,k3,s2,p1) BN ReLU Conv(128→128,k3,p1) BN ReLU
/// Conv(128→128,k3,p1) BN ReLU Flatten Linear(128·(s/2)²→512) ReLU Linear(512→10). The
/// BatchNorm layers train on batch statistics (see `experiments::train::batchnorm`). The paper
/// also puts a BatchNorm after the 512-unit linear layer; this zoo has no 1-d BatchNorm, so that
/// one is left out.
pub fn cnn7(name: &str, channels: usize, side: usize) -> NetworkSpec {
    let bn = |c: usize| LayerSpec::BatchNorm2d { num_features: c, eps: 1e-5, mode: BatchNormMode::BatchStats };
    let h = side.div_ceil(2);
    NetworkSpec::sequential(
        name,
        &[channels, side, side],
        vec![
            conv(channels, 64, 3, 1, 1),
            bn(64),
            relu(),
            conv(64, 64, 3, 1, 1),
            bn(64),
            relu(),
            conv(64, 128, 3, 2, 1),
            bn(128),
            relu(),
            conv(128, 128, 3, 1, 1),
            bn(128),
            relu(),
            conv(128, 128, 3, 1, 1),
            bn(128),
            relu(),
            flatten(),
            linear(128 * h * h, 512),
            relu(),
            linear(512, 10),
        ],
    )
}

/// The small MNIST net widened by `k`: Conv(1→4k,k4,s2,p1) ReLU Conv(4k→8k,k4,s2,p1) ReLU Flatten
/// Linear(8k·7·7→128k) ReLU Linear(128k→10).
pub fn mnist_wide(k: usize) -> NetworkSpec {
    NetworkSpec::sequential(
        &format!("mnist-wide-{k}"),
        &[1, 28, 28],
        vec![
            conv(1, 4 * k, 4, 2, 1),
            relu(),
            conv(4 * k, 8 * k, 4, 2, 1),
            relu(),
            flatten(),
            linear(8 * k * 49, 128 * k),
            relu(),
            linear(128 * k, 10),
        ],
    )
}

/// The small MNIST net deepened: Conv(1→8,k4,s2,p1) ReLU, `k-1` × [Conv(8→8,k3,p1) ReLU],
/// Conv(8→8,k4,s2,p1) ReLU, Flatten, Linear(8·7·7→100) ReLU Linear(100→10).
pub fn mnist_deep(k: usize) -> NetworkSpec {
    let mut l = vec![conv(1, 8, 4, 2, 1), relu()];
    for _ in 1..k.max(1) {
        l.extend([conv(8, 8, 3, 1, 1), relu()]);
    }
    l.extend([conv(8, 8, 4, 2, 1), relu(), flatten(), linear(8 * 49, 100), relu(), linear(100, 10)]);
    NetworkSpec::sequential(&format!("mnist-deep-{k}"), &[1, 28, 28], l)
}

/// A ReLU MLP with the given widths (input first, classes last).
pub fn mlp(name: &str, widths: &[usize]) -> NetworkSpec {
    let mut l = Vec::new();
    for w in widths.windows(2) {
        l.push(linear(w[0], w[1]));
        l.push(relu());
    }
    l.pop();
    NetworkSpec::sequential(name, &[widths[0]], l)
}

/// The HAR residual MLP: Dense(Linear 561→561) ReLU Dense(identity, –, Linear 561→561) ReLU
/// Linear(561→6).
pub fn har_resnet() -> NetworkSpec {
    NetworkSpec::dense_sequential(
        "har-resnet",
        &[561],
        vec![
            dense(vec![Some(linear(561, 561))]),
            relu(),
            dense(vec![Some(LayerSpec::Identity), None, Some(linear(561, 561))]),
            relu(),
            linear(561, 6),
        ],
    )
}

fn cifar_block(l: &mut Vec<LayerSpec>, cin: usize, cout: usize, down: bool) {
    let (a, skip) = if down {
        (conv(cin, cout, 4, 2, 1), conv(cin, cout, 2, 2, 0))
    } else {
        (conv(cin, cout, 3, 1, 1), conv(cin, cout, 1, 1, 0))
    };
    l.push(dense(vec![Some(a)]));
    l.push(relu());
    l.push(dense(vec![Some(skip), None, Some(conv(cout, cout, 3, 1, 1))]));
    l.push(relu());
}

/// Paper 2's CIFAR residual network with `n` blocks per stage and width `factor`.
pub fn cifar_resnet(n: usize, factor: usize) -> NetworkSpec {
    let f = factor.max(1);
    let mut l = vec![conv(3, 16, 3, 1, 1), relu()];
    cifar_block(&mut l, 16, 16 * f, false);
    for _ in 0..n {
        cifar_block(&mut l, 16 * f, 16 * f, false);
    }
    cifar_block(&mut l, 16 * f, 32 * f, true);
    for _ in 1..n {
        cifar_block(&mut l, 32 * f, 32 * f, false);
    }
    cifar_block(&mut l, 32 * f, 64 * f, true);
    for _ in 1..n {
        cifar_block(&mut l, 64 * f, 64 * f, false);
    }
    l.extend([flatten(), linear(64 * f * 64, 1000), relu(), linear(1000, 10)]);
    NetworkSpec::dense_sequential(&format!("cifar-resnet-{n}-{f}"), &[3, 32, 32], l)
}

fn num(s: &str, name: &str) -> Result<usize> {
    s.parse().map_err(|_| NetError::UnknownModel(name.into(), NAMES.join(", ")))
}

/// The architecture called `name` (case-insensitive; `_` and `-` alike).
pub fn by_name(name: &str) -> Result<NetworkSpec> {
    let n = name.to_ascii_lowercase().replace('_', "-");
    let mut spec = match n.as_str() {
        "mnist-small" | "mnist" => small_conv("mnist-small", 1, 28),
        "fashion-mnist" | "fashion-mnist-small" => small_conv("fashion-mnist", 1, 28),
        "mnist-large" => large_conv("mnist-large", 1, 28),
        "mnist-mlp" => mlp("mnist-mlp", &[784, 500, 10]),
        "har-500" | "har" => mlp("har-500", &[561, 500, 6]),
        "har-500-250" => mlp("har-500-250", &[561, 500, 250, 6]),
        "har-500-250-100" => mlp("har-500-250-100", &[561, 500, 250, 100, 6]),
        "har-resnet" => har_resnet(),
        "svhn-small" | "svhn" => small_conv("svhn-small", 3, 32),
        "cifar-small" => small_conv("cifar-small", 3, 32),
        "cifar-large" => large_conv("cifar-large", 3, 32),
        "cnn7" | "mnist-cnn7" => cnn7("cnn7", 1, 28),
        "cifar-cnn7" => cnn7("cifar-cnn7", 3, 32),
        "cifar-resnet" => cifar_resnet(1, 1),
        "mnist-pool" => mnist_pool(),
        "mnist-smooth" => mnist_smooth(),
        _ => {
            if let Some(k) = n.strip_prefix("mnist-wide-") {
                mnist_wide(num(k, name)?)
            } else if let Some(k) = n.strip_prefix("mnist-deep-") {
                mnist_deep(num(k, name)?)
            } else if let Some(rest) = n.strip_prefix("cifar-resnet-") {
                let mut it = rest.splitn(2, '-');
                let a = num(it.next().unwrap_or(""), name)?;
                let b = it.next().map(|s| num(s, name)).transpose()?.unwrap_or(1);
                cifar_resnet(a, b)
            } else {
                return Err(NetError::UnknownModel(name.into(), NAMES.join(", ")));
            }
        }
    };
    if spec.name.is_empty() {
        spec.name = n;
    }
    Ok(spec)
}

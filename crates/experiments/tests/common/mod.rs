//! The tiny problem the training tests share: two separable blobs of 6x6 images and a small
//! convolutional network for them.

use experiments::datasets::Dataset;
use nets::{spec::build::*, NetworkSpec};
use rand::{Rng, SeedableRng};

/// Two separable blobs of 6x6 images: class 0 bright on top, class 1 bright below (gap 0.4,
/// noise ±0.1).
pub fn blobs(n: usize, seed: u64) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = (i % 2) as u32;
        for p in 0..36 {
            let base = if (p < 18) == (c == 0) { 0.7 } else { 0.3 };
            images.push((base + rng.random_range(-0.1f32..0.1)).clamp(0.0, 1.0));
        }
        labels.push(c);
    }
    Dataset { images, labels, n, channels: 1, height: 6, width: 6 }
}

/// conv(1→4, 3x3, stride 2) – ReLU – 36→16 – ReLU – 16→2.
pub fn spec() -> NetworkSpec {
    NetworkSpec::sequential(
        "blob",
        &[1, 6, 6],
        vec![conv(1, 4, 3, 2, 1), relu(), flatten(), linear(36, 16), relu(), linear(16, 2)],
    )
}

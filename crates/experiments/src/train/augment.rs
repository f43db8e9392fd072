//! Data augmentation of training batches (paper 2's CIFAR-10 runs): a random horizontal flip
//! and a random crop of the original size from the image padded by `crop_padding` on every
//! side (torchvision's `RandomHorizontalFlip` + `RandomCrop(32, padding=4)`).

use crate::datasets::Dataset;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which augmentations, and the value of padded pixels per channel (a black pixel in the
/// data set's units: 0, or `(0 - mean_c) / std` for normalised data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Flip left-right with probability 1/2.
    pub flip: bool,
    /// Pad by this many pixels, then crop back to the original size at a random offset.
    pub crop_padding: usize,
    /// Value of padded pixels, one per channel (one value for all if shorter).
    pub pad_value: Vec<f32>,
}

impl Augment {
    /// Paper 2's CIFAR-10 augmentation for inputs normalised with `mean` and `std`.
    pub fn cifar(mean: [f32; 3], std: f32) -> Self {
        Augment { flip: true, crop_padding: 4, pad_value: mean.iter().map(|m| -m / std).collect() }
    }

    /// Augments every example of `ds` in place (images `[n, C, H, W]`).
    pub fn apply(&self, ds: &mut Dataset, rng: &mut impl Rng) {
        let (c, h, w) = (ds.channels, ds.height, ds.width);
        let size = c * h * w;
        let p = self.crop_padding as i64;
        let mut out = vec![0f32; size];
        for e in 0..ds.n {
            let img = &mut ds.images[e * size..(e + 1) * size];
            let flip = self.flip && rng.random::<bool>();
            let (dy, dx) =
                if p > 0 { (rng.random_range(-p..=p) as isize, rng.random_range(-p..=p) as isize) } else { (0, 0) };
            if !flip && dy == 0 && dx == 0 {
                continue;
            }
            for ch in 0..c {
                let pad = self.pad_value.get(ch).or(self.pad_value.last()).copied().unwrap_or(0.0);
                for r in 0..h {
                    for col in 0..w {
                        // Output (r, col) of the crop reads the padded image at (r + dy, col + dx),
                        // taken from the flipped image when flipping.
                        let (sr, sc) = (r as isize + dy, col as isize + dx);
                        let v = if sr < 0 || sc < 0 || sr >= h as isize || sc >= w as isize {
                            pad
                        } else {
                            let sc = if flip { w - 1 - sc as usize } else { sc as usize };
                            img[ch * h * w + sr as usize * w + sc]
                        };
                        out[ch * h * w + r * w + col] = v;
                    }
                }
            }
            img.copy_from_slice(&out);
        }
    }
}

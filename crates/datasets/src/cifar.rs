//! Reader for the binary version of CIFAR-10 (`cifar-10-binary.tar.gz`, unpacked to
//! `cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` (training, 50,000 images)
//! and `test_batch.bin` (10,000). Each record is 3,073 bytes: the label (0–9), then the 32×32
//! red, green and blue planes, row-major.
//!
//! Papers' convention (Wong et al. 2018): pixels / 255, then per channel `(v - mean_c) / 0.225`
//! with means (0.485, 0.456, 0.406); epsilons are given in these normalised units
//! (2/255 → 0.0348, 8/255 → 0.139).

use super::data_root;
use super::idx::{io_err, Dataset, DatasetError, Split, NUM_CLASSES};
use std::path::{Path, PathBuf};

/// Bytes per record: 1 label + 3 × 32 × 32 pixels.
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;
/// Per-channel means of the papers' normalisation.
pub const CIFAR_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// The papers' standard deviation (the same for every channel).
pub const CIFAR_STD: f32 = 0.225;

/// The batch files of a split.
pub fn cifar10_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    }
}

/// Parses one batch file's bytes, appending to `images` / `labels`.
fn parse_batch(
    path: &Path,
    bytes: &[u8],
    normalize: bool,
    images: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) -> Result<(), DatasetError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(DatasetError::BadRecords { path: path.to_path_buf(), len: bytes.len(), record: CIFAR_RECORD });
    }
    let first = labels.len();
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] as usize >= NUM_CLASSES {
            return Err(DatasetError::BadLabel { path: path.to_path_buf(), index: first + i, label: rec[0] });
        }
        labels.push(rec[0] as u32);
        for (c, plane) in rec[1..].chunks_exact(1024).enumerate() {
            images.extend(plane.iter().map(|&b| {
                let v = b as f32 / 255.0;
                if normalize {
                    (v - CIFAR_MEAN[c]) / CIFAR_STD
                } else {
                    v
                }
            }));
        }
    }
    Ok(())
}

/// Loads a CIFAR-10 split from `dir` (the folder holding the `.bin` files, or its parent holding
/// `cifar-10-batches-bin/`). With `normalize`, applies the papers' per-channel normalisation;
/// otherwise pixels are in `[0, 1]`.
pub fn load_cifar10(dir: &Path, split: Split, normalize: bool) -> Result<Dataset, DatasetError> {
    let names = cifar10_files(split);
    let base = data_root(dir, "cifar-10-batches-bin", &names[0], &names)?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for name in &names {
        let path: PathBuf = base.join(name);
        if !path.is_file() {
            return Err(DatasetError::MissingFile { dir: base.clone(), tried: vec![name.clone()] });
        }
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        parse_batch(&path, &bytes, normalize, &mut images, &mut labels)?;
    }
    Ok(Dataset { n: labels.len(), images, labels, channels: 3, height: 32, width: 32 })
}

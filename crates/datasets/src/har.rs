//! Reader for the UCI Human Activity Recognition data set (`UCI HAR Dataset/`, the zip's
//! folder): `train/X_train.txt` (7,352 rows) and `test/X_test.txt` (2,947 rows) of 561
//! whitespace-separated features each (already scaled to `[-1, 1]`), and `y_*.txt` with one
//! activity label 1–6 per line (stored here as 0–5). Examples are flat feature vectors
//! (`channels = 561`, `height = width = 1`, batched as `[n, 561]`).

use super::data_root;
use super::idx::{io_err, Dataset, DatasetError, Split};
use std::path::{Path, PathBuf};

/// Features per example.
pub const HAR_FEATURES: usize = 561;
/// Activities (classes).
pub const HAR_CLASSES: usize = 6;

fn read(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Loads a split from `dir` (the `UCI HAR Dataset` folder, or its parent).
pub fn load_har(dir: &Path, split: Split) -> Result<Dataset, DatasetError> {
    let part = match split {
        Split::Train => "train",
        Split::Test => "test",
    };
    let xs = format!("{part}/X_{part}.txt");
    let ys = format!("{part}/y_{part}.txt");
    let base = data_root(dir, "UCI HAR Dataset", &xs, std::slice::from_ref(&xs))?;
    let xp: PathBuf = base.join(&xs);
    let yp: PathBuf = base.join(&ys);
    if !yp.is_file() {
        return Err(DatasetError::MissingFile { dir: base.clone(), tried: vec![ys] });
    }
    let mut images = Vec::new();
    let mut rows = 0;
    for (i, line) in read(&xp)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let before = images.len();
        for tok in line.split_whitespace() {
            let v: f32 = tok.parse().map_err(|_| DatasetError::Parse {
                path: xp.clone(),
                line: i + 1,
                msg: format!("`{tok}` is not a number"),
            })?;
            if !v.is_finite() {
                return Err(DatasetError::Parse {
                    path: xp.clone(),
                    line: i + 1,
                    msg: format!("`{tok}` is not finite"),
                });
            }
            images.push(v);
        }
        let got = images.len() - before;
        if got != HAR_FEATURES {
            return Err(DatasetError::Parse {
                path: xp.clone(),
                line: i + 1,
                msg: format!("{got} features, expected {HAR_FEATURES}"),
            });
        }
        rows += 1;
    }
    let mut labels = Vec::new();
    for (i, line) in read(&yp)?.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let v: u32 = t.parse().map_err(|_| DatasetError::Parse {
            path: yp.clone(),
            line: i + 1,
            msg: format!("`{t}` is not an activity label"),
        })?;
        if !(1..=HAR_CLASSES as u32).contains(&v) {
            return Err(DatasetError::Parse {
                path: yp.clone(),
                line: i + 1,
                msg: format!("activity {v} is not in 1..={HAR_CLASSES}"),
            });
        }
        labels.push(v - 1);
    }
    if labels.len() != rows {
        return Err(DatasetError::CountMismatch { images: rows, labels: labels.len() });
    }
    Ok(Dataset { n: rows, images, labels, channels: HAR_FEATURES, height: 1, width: 1 })
}

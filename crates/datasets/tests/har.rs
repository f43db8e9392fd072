//! The UCI HAR loader on small synthetic text files: values, labels 1–6 → 0–5, the flat batch
//! shape `[n, 561]`, the zip's sub-folder, and typed errors for malformed files.

use datasets::har::HAR_FEATURES;
use datasets::{load, load_har, DatasetError, Split};
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("car-har-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn row(r: usize) -> String {
    (0..HAR_FEATURES).map(|j| format!("{:.7e}", (r * 1000 + j) as f64 / 1e4 - 0.5)).collect::<Vec<_>>().join(" ")
}

fn write_split(root: &Path, part: &str, rows: &[String], labels: &str) {
    let d = root.join(part);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("X_{part}.txt")), rows.iter().map(|r| format!("  {r}\n")).collect::<String>())
        .unwrap();
    std::fs::write(d.join(format!("y_{part}.txt")), labels).unwrap();
}

#[test]
fn reads_features_and_labels() {
    let root = tmp("ok");
    let har = root.join("UCI HAR Dataset");
    write_split(&har, "test", &[row(0), row(1), row(2)], "1\n6\n3\n");
    let ds = load("har", &root, Split::Test).unwrap();
    assert_eq!(ds.labels, vec![0, 5, 2]);
    assert_eq!(ds.n, 3);
    assert_eq!(ds.example_shape(), vec![HAR_FEATURES]);
    assert!((ds.images[HAR_FEATURES + 7] - (1007.0 / 1e4 - 0.5) as f32).abs() < 1e-6);
    let (x, _) = ds.batch(0, 2, &candle_core::Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[2, HAR_FEATURES]);
    // The data set folder itself works too, and the training split is separate.
    assert_eq!(load_har(&har, Split::Test).unwrap(), ds);
    assert!(matches!(load_har(&har, Split::Train), Err(DatasetError::MissingFile { .. })));
}

#[test]
fn malformed_files_give_typed_errors() {
    let root = tmp("bad");
    let short: String = row(0).split_whitespace().take(10).collect::<Vec<_>>().join(" ");
    write_split(&root, "test", &[row(0), short], "1\n2\n");
    match load_har(&root, Split::Test) {
        Err(DatasetError::Parse { line: 2, msg, .. }) => assert!(msg.contains("10 features"), "{msg}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
    let mut bad = row(0);
    bad.push_str(" x1");
    write_split(&root, "test", &[bad], "1\n");
    assert!(matches!(load_har(&root, Split::Test), Err(DatasetError::Parse { line: 1, .. })));
    write_split(&root, "test", &[row(0)], "7\n");
    match load_har(&root, Split::Test) {
        Err(e @ DatasetError::Parse { .. }) => assert!(e.to_string().contains("activity 7"), "{e}"),
        other => panic!("expected a label error, got {other:?}"),
    }
    write_split(&root, "test", &[row(0), row(1)], "1\n");
    assert!(matches!(load_har(&root, Split::Test), Err(DatasetError::CountMismatch { images: 2, labels: 1 })));
}

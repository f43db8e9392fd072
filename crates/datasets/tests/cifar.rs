//! The CIFAR-10 binary loader on small synthetic batch files: layout, normalisation, the
//! `cifar-10-batches-bin/` sub-folder, and typed errors for malformed files.

use datasets::cifar::{CIFAR_MEAN, CIFAR_RECORD, CIFAR_STD};
use datasets::{load, load_cifar10, DatasetError, Split};
use std::path::PathBuf;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("car-cifar-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A record whose pixel `p` of channel `c` is `(label + 3c + p) % 256`.
fn record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    for c in 0..3 {
        r.extend((0..1024).map(|p| ((label as usize + 3 * c + p) % 256) as u8));
    }
    r
}

#[test]
fn test_batch_layout_and_normalisation() {
    let d = tmp("layout");
    let sub = d.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&sub).unwrap();
    let bytes: Vec<u8> = [3u8, 9, 0].iter().flat_map(|&l| record(l)).collect();
    std::fs::write(sub.join("test_batch.bin"), &bytes).unwrap();
    let raw = load_cifar10(&d, Split::Test, false).unwrap();
    assert_eq!((raw.n, raw.channels, raw.height, raw.width), (3, 3, 32, 32));
    assert_eq!(raw.labels, vec![3, 9, 0]);
    // Example 1, channel 2, row 5, column 7 → pixel 5*32+7 of plane 2.
    let p = 5 * 32 + 7;
    let v = raw.images[3072 + 2 * 1024 + p];
    assert_eq!(v, ((9 + 6 + p) % 256) as f32 / 255.0);
    let norm = load("cifar10", &d, Split::Test).unwrap();
    let w = norm.images[3072 + 2 * 1024 + p];
    assert!((w - (v - CIFAR_MEAN[2]) / CIFAR_STD).abs() < 1e-6);
    // The folder itself works too.
    assert_eq!(load_cifar10(&sub, Split::Test, false).unwrap(), raw);
    let (x, y) = raw.batch(0, 2, &candle_core::Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[2, 3, 32, 32]);
    assert_eq!(y, vec![3, 9]);
}

#[test]
fn training_split_reads_all_five_batches() {
    let d = tmp("train");
    for i in 1..=5u8 {
        std::fs::write(d.join(format!("data_batch_{i}.bin")), record(i)).unwrap();
    }
    let tr = load_cifar10(&d, Split::Train, false).unwrap();
    assert_eq!(tr.labels, vec![1, 2, 3, 4, 5]);
    std::fs::remove_file(d.join("data_batch_4.bin")).unwrap();
    match load_cifar10(&d, Split::Train, false) {
        Err(DatasetError::MissingFile { tried, .. }) => assert_eq!(tried, vec!["data_batch_4.bin".to_string()]),
        other => panic!("expected MissingFile, got {other:?}"),
    }
}

#[test]
fn malformed_batches_give_typed_errors() {
    let d = tmp("bad");
    // Truncated: one record and a half.
    let mut bytes = record(1);
    bytes.extend_from_slice(&record(2)[..CIFAR_RECORD / 2]);
    std::fs::write(d.join("test_batch.bin"), &bytes).unwrap();
    match load_cifar10(&d, Split::Test, true) {
        Err(DatasetError::BadRecords { len, record, .. }) => {
            assert_eq!((len, record), (CIFAR_RECORD + CIFAR_RECORD / 2, CIFAR_RECORD))
        }
        other => panic!("expected BadRecords, got {other:?}"),
    }
    // Empty file.
    std::fs::write(d.join("test_batch.bin"), b"").unwrap();
    assert!(matches!(load_cifar10(&d, Split::Test, true), Err(DatasetError::BadRecords { len: 0, .. })));
    // A label of 10 in the second record.
    let bytes: Vec<u8> = [1u8, 10].iter().flat_map(|&l| record(l)).collect();
    std::fs::write(d.join("test_batch.bin"), &bytes).unwrap();
    match load_cifar10(&d, Split::Test, true) {
        Err(e @ DatasetError::BadLabel { index: 1, label: 10, .. }) => assert!(e.to_string().contains("label 10")),
        other => panic!("expected BadLabel, got {other:?}"),
    }
    // Nothing there.
    let empty = tmp("empty");
    assert!(matches!(load_cifar10(&empty, Split::Test, true), Err(DatasetError::MissingFile { .. })));
    // An unknown data set name is an error naming the loaders.
    let e = load("imagenet", &empty, Split::Test).unwrap_err().to_string();
    assert!(e.contains("imagenet") && e.contains("cifar10"), "{e}");
}

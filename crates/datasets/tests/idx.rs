//! IDX loader: round trips through small hand-written files (plain and gzipped), every error
//! variant, and — when installed — the real Fashion-MNIST test split.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use datasets::{
    load_idx_pair, load_mnist_like, read_idx_images, read_idx_labels, DatasetError, Split, IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("experiments-idx-{tag}-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx_bytes(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// 3 images of 2x4 with pixel values 0..24 (scaled: k/255), labels 7, 0, 9.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..24u8).map(|k| k * 10).collect();
    let images = idx_bytes(IDX_IMAGES_MAGIC, &[3, 2, 4], &pixels);
    let labels = idx_bytes(IDX_LABELS_MAGIC, &[3], &[7, 0, 9]);
    (images, labels)
}

#[test]
fn round_trip_plain_and_gzipped() {
    let tmp = TempDir::new("roundtrip");
    let (images, labels) = sample();
    let ip = write(tmp.path(), "plain-images", &images);
    let lp = write(tmp.path(), "plain-labels", &labels);
    let igz = write(tmp.path(), "gz-images.gz", &gzip(&images));
    let lgz = write(tmp.path(), "gz-labels.gz", &gzip(&labels));
    // Detection is by content: a gzipped file without the .gz suffix works too.
    let igz2 = write(tmp.path(), "gz-images-nosuffix", &gzip(&images));

    let expected_pixels: Vec<u8> = (0..24u8).map(|k| k * 10).collect();
    for p in [&ip, &igz, &igz2] {
        let (n, rows, cols, bytes) = read_idx_images(p).unwrap();
        assert_eq!((n, rows, cols), (3, 2, 4), "{p:?}");
        assert_eq!(bytes, expected_pixels, "{p:?}");
    }
    for p in [&lp, &lgz] {
        assert_eq!(read_idx_labels(p).unwrap(), vec![7, 0, 9], "{p:?}");
    }

    for (i, l) in [(&ip, &lp), (&igz, &lgz), (&ip, &lgz)] {
        let ds = load_idx_pair(i, l).unwrap();
        assert_eq!((ds.len(), ds.n, ds.channels, ds.height, ds.width), (3, 3, 1, 2, 4));
        assert_eq!(ds.labels, vec![7, 0, 9]);
        assert_eq!(ds.images.len(), 24);
        for (k, &v) in ds.images.iter().enumerate() {
            assert!((v - (k as f32 * 10.0) / 255.0).abs() < 1e-7);
        }
    }
}

#[test]
fn dataset_batch_and_truncate() {
    let tmp = TempDir::new("batch");
    let (images, labels) = sample();
    let ip = write(tmp.path(), "i", &images);
    let lp = write(tmp.path(), "l", &labels);
    let mut ds = load_idx_pair(&ip, &lp).unwrap();

    let (x, y) = ds.batch(1, 3, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[2, 1, 2, 4]);
    assert_eq!(x.dtype(), candle_core::DType::F32);
    assert_eq!(y, vec![0, 9]);
    let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(flat, ds.images[8..24].to_vec());

    let (x, y) = ds.batch(2, 2, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[0, 1, 2, 4]);
    assert!(y.is_empty());
    assert!(ds.batch(2, 4, &Device::Cpu).is_err());
    assert!(ds.batch(2, 1, &Device::Cpu).is_err());

    ds.truncate(10);
    assert_eq!(ds.len(), 3);
    ds.truncate(2);
    assert_eq!((ds.len(), ds.images.len(), ds.labels.len()), (2, 16, 2));
    assert_eq!(ds.labels, vec![7, 0]);
    assert!(ds.batch(0, 3, &Device::Cpu).is_err());
}

#[test]
fn wrong_magic() {
    let tmp = TempDir::new("magic");
    let (images, labels) = sample();
    let ip = write(tmp.path(), "i", &images);
    let lp = write(tmp.path(), "l", &labels);
    // Labels read as images and vice versa.
    match read_idx_images(&lp) {
        Err(DatasetError::BadMagic { found, expected, .. }) => {
            assert_eq!((found, expected), (IDX_LABELS_MAGIC, IDX_IMAGES_MAGIC))
        }
        other => panic!("expected BadMagic, got {other:?}"),
    }
    assert!(matches!(read_idx_labels(&ip), Err(DatasetError::BadMagic { .. })));
    // Garbage, plain and gzipped.
    let junk = write(tmp.path(), "junk", b"hello world, not an idx file");
    assert!(matches!(read_idx_images(&junk), Err(DatasetError::BadMagic { found: 0x68656c6c, .. })));
    let junkgz = write(tmp.path(), "junk.gz", &gzip(b"hello world, not an idx file"));
    assert!(matches!(read_idx_labels(&junkgz), Err(DatasetError::BadMagic { .. })));
    // Float IDX type (0x0D) is not accepted.
    let f = write(tmp.path(), "float", &idx_bytes(0x0000_0D03, &[1, 1, 1], &[0, 0, 0, 0]));
    assert!(matches!(read_idx_images(&f), Err(DatasetError::BadMagic { found: 0x0D03, .. })));
}

#[test]
fn truncated_files() {
    let tmp = TempDir::new("trunc");
    let (images, labels) = sample();
    // Body cut short.
    let cut = write(tmp.path(), "cut", &images[..images.len() - 5]);
    match read_idx_images(&cut) {
        Err(DatasetError::SizeMismatch { expected, found, .. }) => assert_eq!((expected, found), (24, 19)),
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    let cutgz = write(tmp.path(), "cut.gz", &gzip(&labels[..labels.len() - 1]));
    match read_idx_labels(&cutgz) {
        Err(DatasetError::SizeMismatch { expected, found, .. }) => assert_eq!((expected, found), (3, 2)),
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    // Header cut short.
    let head = write(tmp.path(), "head", &images[..10]);
    assert!(matches!(read_idx_images(&head), Err(DatasetError::TruncatedHeader { needed: 16, found: 10, .. })));
    let tiny = write(tmp.path(), "tiny", &[0, 0]);
    assert!(matches!(read_idx_labels(&tiny), Err(DatasetError::TruncatedHeader { needed: 4, found: 2, .. })));
    let empty = write(tmp.path(), "empty", &[]);
    assert!(matches!(read_idx_images(&empty), Err(DatasetError::TruncatedHeader { found: 0, .. })));
    // A gzip stream that is itself cut off is an I/O error, not a panic.
    let gz = gzip(&images);
    let badgz = write(tmp.path(), "bad.gz", &gz[..gz.len() / 2]);
    let r = read_idx_images(&badgz);
    assert!(
        matches!(
            r,
            Err(DatasetError::Io { .. })
                | Err(DatasetError::SizeMismatch { .. })
                | Err(DatasetError::TruncatedHeader { .. })
        ),
        "{r:?}"
    );
}

#[test]
fn header_size_mismatch() {
    let tmp = TempDir::new("size");
    let pixels: Vec<u8> = vec![1; 24];
    // Header says 4 images of 2x4 = 32 bytes; 24 present.
    let p = write(tmp.path(), "short", &idx_bytes(IDX_IMAGES_MAGIC, &[4, 2, 4], &pixels));
    assert!(matches!(read_idx_images(&p), Err(DatasetError::SizeMismatch { expected: 32, found: 24, .. })));
    // Trailing bytes beyond the header's size.
    let p = write(tmp.path(), "long", &idx_bytes(IDX_IMAGES_MAGIC, &[2, 2, 4], &pixels));
    assert!(matches!(read_idx_images(&p), Err(DatasetError::SizeMismatch { expected: 16, found: 24, .. })));
    let p = write(tmp.path(), "longlabels", &idx_bytes(IDX_LABELS_MAGIC, &[2], &[1, 2, 3]));
    assert!(matches!(read_idx_labels(&p), Err(DatasetError::SizeMismatch { expected: 2, found: 3, .. })));
    // Absurd headers must fail cleanly, without trying to allocate terabytes.
    let p = write(tmp.path(), "huge", &idx_bytes(IDX_IMAGES_MAGIC, &[u32::MAX, 28, 28], &pixels));
    match read_idx_images(&p) {
        Err(DatasetError::SizeMismatch { expected, found, .. }) => {
            assert_eq!(expected, u32::MAX as usize * 784);
            assert_eq!(found, 24);
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    let p = write(tmp.path(), "hugest", &idx_bytes(IDX_IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &pixels));
    assert!(matches!(read_idx_images(&p), Err(DatasetError::SizeMismatch { found: 24, .. })));
    let p = write(tmp.path(), "hugelabels.gz", &gzip(&idx_bytes(IDX_LABELS_MAGIC, &[u32::MAX], &[1, 2])));
    assert!(matches!(read_idx_labels(&p), Err(DatasetError::SizeMismatch { found: 2, .. })));
}

#[test]
fn count_mismatch_and_bad_label() {
    let tmp = TempDir::new("count");
    let (images, _) = sample();
    let ip = write(tmp.path(), "i", &images);
    let lp = write(tmp.path(), "l", &idx_bytes(IDX_LABELS_MAGIC, &[2], &[1, 2]));
    assert!(matches!(load_idx_pair(&ip, &lp), Err(DatasetError::CountMismatch { images: 3, labels: 2 })));
    let lp = write(tmp.path(), "l10", &idx_bytes(IDX_LABELS_MAGIC, &[3], &[1, 10, 2]));
    assert!(matches!(load_idx_pair(&ip, &lp), Err(DatasetError::BadLabel { index: 1, label: 10, .. })));
    let lp = write(tmp.path(), "l255", &idx_bytes(IDX_LABELS_MAGIC, &[3], &[1, 2, 255]));
    assert!(matches!(load_idx_pair(&ip, &lp), Err(DatasetError::BadLabel { index: 2, label: 255, .. })));
}

#[test]
fn load_mnist_like_layouts_and_missing() {
    let tmp = TempDir::new("layout");
    let (images, labels) = sample();
    // Test split gzipped (Debian's layout), train split plain.
    write(tmp.path(), "t10k-images-idx3-ubyte.gz", &gzip(&images));
    write(tmp.path(), "t10k-labels-idx1-ubyte.gz", &gzip(&labels));
    let test = load_mnist_like(tmp.path(), Split::Test).unwrap();
    assert_eq!((test.len(), test.height, test.width), (3, 2, 4));
    assert_eq!(test.labels, vec![7, 0, 9]);

    // Train split missing: MissingFile listing what was tried.
    match load_mnist_like(tmp.path(), Split::Train) {
        Err(DatasetError::MissingFile { dir, tried }) => {
            assert_eq!(dir, tmp.path());
            assert!(tried.contains(&"train-images-idx3-ubyte".to_string()), "{tried:?}");
            assert!(tried.contains(&"train-images-idx3-ubyte.gz".to_string()), "{tried:?}");
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    write(tmp.path(), "train-images-idx3-ubyte", &images);
    match load_mnist_like(tmp.path(), Split::Train) {
        Err(DatasetError::MissingFile { tried, .. }) => {
            assert!(tried.contains(&"train-labels-idx1-ubyte".to_string()), "{tried:?}")
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    write(tmp.path(), "train-labels-idx1-ubyte", &labels);
    let train = load_mnist_like(tmp.path(), Split::Train).unwrap();
    assert_eq!(train, test);

    // A directory that does not exist.
    let missing = tmp.path().join("does-not-exist");
    assert!(matches!(load_mnist_like(&missing, Split::Test), Err(DatasetError::MissingFile { .. })));
    // A nonexistent file read directly is an I/O error.
    assert!(matches!(read_idx_images(&missing.join("x")), Err(DatasetError::Io { .. })));
}

#[test]
fn fashion_mnist_test_split() {
    let Some(fashion_dir) = shared_data::fashion_mnist_dir() else { return };
    let Some(fashion_x20) = shared_data::shared_path("reference/fashion_mnist_eps0.1/fashion_X20.npy") else { return };
    let Some(fashion_y20) = shared_data::shared_path("reference/fashion_mnist_eps0.1/fashion_y20.npy") else { return };
    let ds = load_mnist_like(&fashion_dir, Split::Test).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (10_000, 1, 28, 28));
    assert_eq!(ds.images.len(), 10_000 * 784);
    assert!(ds.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(ds.labels.iter().all(|&l| l < 10));
    assert_eq!(ds.labels[0], 9, "the first Fashion-MNIST test image is an ankle boot");

    let (x, y) = ds.batch(0, 20, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[20, 1, 28, 28]);
    assert_eq!(y[0], 9);

    let reference = Tensor::read_npy(fashion_x20).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let ref_first: Vec<f32> = reference.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ref_first.len(), 784);
    let ours = &ds.images[..784];
    let max_diff = ours.iter().zip(&ref_first).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-6, "first image differs from the reference by {max_diff}");

    // The reference holds the first 20 test images; compare them all.
    assert_eq!(reference.dims(), &[20, 1, 28, 28]);
    let n_ref = 20;
    let ref_all: Vec<f32> = reference.narrow(0, 0, n_ref).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let max_diff = ds.images[..n_ref * 784].iter().zip(&ref_all).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-6, "first {n_ref} images differ from the reference by {max_diff}");
    let y_ref: Vec<i64> = Tensor::read_npy(fashion_y20)
        .unwrap()
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(y_ref.len(), n_ref);
    let ours: Vec<i64> = ds.labels[..n_ref].iter().map(|&l| l as i64).collect();
    assert_eq!(ours, y_ref);
}

//! Reader for the IDX file format used by MNIST and Fashion-MNIST.
//!
//! An IDX file is a big-endian header — a 4-byte magic `0x0000TTDD` (`TT` the element type,
//! `DD` the number of dimensions), then one big-endian `u32` per dimension — followed by the
//! elements in row-major order. Only the unsigned-byte type (`TT = 0x08`) is supported, which is
//! what MNIST-like data sets use: images are `0x00000803` (`n x rows x cols`) and labels
//! `0x00000801` (`n`). Files may be gzip-compressed; compression is detected from the content
//! (gzip magic `1f 8b`), not from the file name.
//!
//! Every failure is reported as a [`DatasetError`]; nothing here panics on malformed input. The
//! size implied by a header is checked against the data actually present before any buffer of
//! that size is allocated, so a corrupt header claiming billions of images fails cleanly with
//! [`DatasetError::SizeMismatch`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// Magic number of an IDX file holding `u8` images (3 dimensions).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file holding `u8` labels (1 dimension).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
/// Number of classes of MNIST-like data sets; labels must be `< NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;

/// Errors from reading IDX files.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be opened or read (including corrupt gzip streams).
    #[error("I/O error reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file ends before its header does.
    #[error("{path}: truncated IDX header ({found} bytes, need {needed})")]
    TruncatedHeader { path: PathBuf, needed: usize, found: usize },
    /// The magic number is not the one expected for this kind of file.
    #[error("{path}: bad IDX magic {found:#010x}, expected {expected:#010x}")]
    BadMagic { path: PathBuf, found: u32, expected: u32 },
    /// The number of data bytes differs from what the header's dimensions imply.
    #[error("{path}: header implies {expected} data bytes but the file holds {found}")]
    SizeMismatch { path: PathBuf, expected: usize, found: usize },
    /// The image and label files hold different numbers of examples.
    #[error("{images} images but {labels} labels")]
    CountMismatch { images: usize, labels: usize },
    /// None of the candidate file names exists in the directory.
    #[error("none of {tried:?} found in {dir}")]
    MissingFile { dir: PathBuf, tried: Vec<String> },
    /// A file of fixed-size records (CIFAR-10's binary batches) whose length is not a positive
    /// multiple of the record size.
    #[error("{path}: {len} bytes is not a whole number of {record}-byte records")]
    BadRecords { path: PathBuf, len: usize, record: usize },
    /// A text file (UCI HAR) with a value that is not a number or a row of the wrong length.
    #[error("{path}, line {line}: {msg}")]
    Parse { path: PathBuf, line: usize, msg: String },
    /// A MATLAB file (SVHN) that is malformed or lacks what the data set needs.
    #[error("{path}: {msg}")]
    Mat { path: PathBuf, msg: String },
    /// A label is outside `0..NUM_CLASSES`.
    #[error("{path}: label {label} at index {index} is not in 0..{}", NUM_CLASSES)]
    BadLabel { path: PathBuf, index: usize, label: u8 },
}

/// An in-memory image classification data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The inputs as the model takes them, row-major `n x channels x height x width`: pixels
    /// scaled to `[0, 1]` (byte / 255), normalised per channel where the data set's models
    /// expect it (CIFAR-10).
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u32>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the data set has no examples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The shape of one example as the model takes it: `[channels, height, width]`, or
    /// `[channels]` for flat feature vectors (stored with `height = width = 1`, e.g. UCI HAR).
    pub fn example_shape(&self) -> Vec<usize> {
        if self.height == 1 && self.width == 1 {
            vec![self.channels]
        } else {
            vec![self.channels, self.height, self.width]
        }
    }

    /// Number of values per example (`channels * height * width`).
    pub fn example_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Keeps only the first `n` examples (no-op if `n >= len()`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.n {
            self.n = n;
            self.images.truncate(n * self.example_size());
            self.labels.truncate(n);
        }
    }

    /// The examples `idx` (any order, repeats allowed) as a new data set.
    ///
    /// Panics if an index is out of range (callers pass indices they made from `0..len()`).
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let s = self.example_size();
        let mut images = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            images.extend_from_slice(&self.images[i * s..(i + 1) * s]);
        }
        Dataset {
            images,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            n: idx.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// The examples `idx` as a tensor `[idx.len(), *example_shape]` of `dtype` on `device`,
    /// with their labels.
    pub fn gather(
        &self,
        idx: &[usize],
        dtype: candle_core::DType,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Vec<u32>)> {
        let sub = self.subset(idx);
        let (x, y) = sub.batch(0, sub.n, device)?;
        Ok((x.to_dtype(dtype)?, y))
    }

    /// Examples `start..end` as an `f32` tensor `[end - start, *example_shape]` on `device`,
    /// with their labels. Fails (without panicking) if the range is not within `0..=len()`.
    pub fn batch(&self, start: usize, end: usize, device: &Device) -> candle_core::Result<(Tensor, Vec<u32>)> {
        if start > end || end > self.n {
            candle_core::bail!("batch range {start}..{end} out of bounds for a data set of {} examples", self.n);
        }
        let size = self.example_size();
        let mut shape = vec![end - start];
        shape.extend(self.example_shape());
        let x = Tensor::from_slice(&self.images[start * size..end * size], shape, device)?;
        Ok((x, self.labels[start..end].to_vec()))
    }
}

/// Which half of a data set to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix MNIST-like data sets use for this split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Wraps an I/O error with the path it happened on.
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.to_path_buf(), source }
}

/// Opens `path`, transparently decompressing it if it starts with the gzip magic.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>, DatasetError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    // fill_buf may return fewer than 2 bytes only at the end of the file, or for tiny reads;
    // a file this short cannot hold a valid header either way.
    let head = reader.fill_buf().map_err(io_err(path))?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads as many bytes as are available, up to `buf.len()`; returns how many were read.
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads an IDX file with the given magic; returns its dimensions and its data bytes.
fn read_idx(path: &Path, expected_magic: u32) -> Result<(Vec<usize>, Vec<u8>), DatasetError> {
    let mut reader = open_maybe_gz(path)?;

    let mut magic = [0u8; 4];
    let got = read_up_to(&mut *reader, &mut magic).map_err(io_err(path))?;
    if got < 4 {
        return Err(DatasetError::TruncatedHeader { path: path.to_path_buf(), needed: 4, found: got });
    }
    let magic = u32::from_be_bytes(magic);
    if magic != expected_magic {
        return Err(DatasetError::BadMagic { path: path.to_path_buf(), found: magic, expected: expected_magic });
    }

    let ndims = (expected_magic & 0xff) as usize;
    let mut dim_bytes = vec![0u8; 4 * ndims];
    let got = read_up_to(&mut *reader, &mut dim_bytes).map_err(io_err(path))?;
    if got < dim_bytes.len() {
        return Err(DatasetError::TruncatedHeader {
            path: path.to_path_buf(),
            needed: 4 + dim_bytes.len(),
            found: 4 + got,
        });
    }
    let dims: Vec<usize> =
        dim_bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();

    // Size implied by the header, computed without overflow; saturates at usize::MAX (which no
    // real file can match, so it ends as a SizeMismatch).
    let expected = dims
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(usize::MAX);

    // Read at most expected + 1 bytes: the buffer only ever grows with data actually present,
    // so an absurd header cannot trigger an absurd allocation.
    let mut body = Vec::with_capacity(expected.min(1 << 26));
    let limit = (expected as u64).saturating_add(1);
    (&mut reader).take(limit).read_to_end(&mut body).map_err(io_err(path))?;
    if body.len() != expected {
        let mut found = body.len();
        if found > expected {
            // Count the trailing excess for an accurate message.
            let rest = io::copy(&mut reader, &mut io::sink()).map_err(io_err(path))?;
            found = found.saturating_add(rest as usize);
        }
        return Err(DatasetError::SizeMismatch { path: path.to_path_buf(), expected, found });
    }
    Ok((dims, body))
}

/// Reads an IDX image file (magic `0x00000803`); returns `(n, rows, cols, bytes)` with
/// `bytes.len() == n * rows * cols`.
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DatasetError> {
    let (dims, bytes) = read_idx(path, IDX_IMAGES_MAGIC)?;
    Ok((dims[0], dims[1], dims[2], bytes))
}

/// Reads an IDX label file (magic `0x00000801`); returns the raw label bytes (no range check).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let (_, bytes) = read_idx(path, IDX_LABELS_MAGIC)?;
    Ok(bytes)
}

/// Loads a pair of IDX files (images and labels) into a single-channel [`Dataset`]. Labels must
/// be `< 10` and as many as the images.
pub fn load_idx_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset, DatasetError> {
    let (n, rows, cols, pixels) = read_idx_images(images_path)?;
    let raw_labels = read_idx_labels(labels_path)?;
    if raw_labels.len() != n {
        return Err(DatasetError::CountMismatch { images: n, labels: raw_labels.len() });
    }
    if let Some((index, &label)) = raw_labels.iter().enumerate().find(|(_, &l)| l as usize >= NUM_CLASSES) {
        return Err(DatasetError::BadLabel { path: labels_path.to_path_buf(), index, label });
    }
    Ok(Dataset {
        images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: raw_labels.iter().map(|&l| l as u32).collect(),
        n,
        channels: 1,
        height: rows,
        width: cols,
    })
}

/// Candidate file names for one kind (`"images-idx3"` or `"labels-idx1"`) of one split, in order
/// of preference.
fn candidates(split: Split, kind: &str) -> Vec<String> {
    let p = split.prefix();
    // The canonical names, and the `train-images.idx3-ubyte` spelling some mirrors use.
    let dotted = kind.replacen('-', ".", 1);
    vec![
        format!("{p}-{kind}-ubyte"),
        format!("{p}-{kind}-ubyte.gz"),
        format!("{p}-{dotted}-ubyte"),
        format!("{p}-{dotted}-ubyte.gz"),
    ]
}

fn find_file(dir: &Path, split: Split, kind: &str) -> Result<PathBuf, DatasetError> {
    let tried = candidates(split, kind);
    tried
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| DatasetError::MissingFile { dir: dir.to_path_buf(), tried })
}

/// Loads MNIST-layout IDX files from `dir`: `{train,t10k}-{images-idx3,labels-idx1}-ubyte` with
/// or without `.gz` (e.g. Debian's `/usr/share/datasets/fashion-mnist/`, which holds
/// `t10k-images-idx3-ubyte.gz` and friends). Pixels are scaled to `[0, 1]`.
pub fn load_mnist_like(dir: &Path, split: Split) -> Result<Dataset, DatasetError> {
    let images = find_file(dir, split, "images-idx3")?;
    let labels = find_file(dir, split, "labels-idx1")?;
    load_idx_pair(&images, &labels)
}

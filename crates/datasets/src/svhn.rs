//! Reader for SVHN's cropped digits (`train_32x32.mat`, `test_32x32.mat`): MATLAB level-5 MAT
//! files holding `X`, a 32×32×3×N `uint8` array (column-major), and `y`, N labels 1–10 where 10
//! stands for the digit 0 (stored here as 0–9). Pixels are scaled to `[0, 1]`.
//!
//! The MAT reader understands what these files use: the 128-byte header, little-endian data
//! elements (full and small tags, 8-byte padding), `miCOMPRESSED` (zlib) elements and numeric
//! `miMATRIX` arrays. Every length is checked against the bytes present; malformed files give
//! [`DatasetError::Mat`], never a panic.

use super::idx::{io_err, Dataset, DatasetError, Split, NUM_CLASSES};
use std::io::Read;
use std::path::Path;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// Largest decompressed element accepted (the SVHN training array is about 180 MB).
const MAX_INFLATED: u64 = 4 << 30;

/// A numeric array of a MAT file.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    /// Variable name.
    pub name: String,
    /// Dimensions (column-major, as MATLAB stores them).
    pub dims: Vec<usize>,
    /// The real part: bytes for `uint8` arrays.
    pub bytes: Option<Vec<u8>>,
    /// The real part of any other numeric type, as f64.
    pub values: Option<Vec<f64>>,
}

fn bad(msg: impl Into<String>) -> String {
    msg.into()
}

/// One data element: `(type, payload, bytes consumed including padding)`.
fn element(buf: &[u8]) -> Result<(u32, &[u8], usize), String> {
    if buf.len() < 8 {
        return Err(bad(format!("truncated element tag ({} bytes left)", buf.len())));
    }
    let first = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if first >> 16 != 0 {
        // Small element: type in the low half, size in the high half, data in the next 4 bytes.
        let (ty, n) = (first & 0xffff, (first >> 16) as usize);
        if n > 4 {
            return Err(bad(format!("small element of {n} bytes")));
        }
        return Ok((ty, &buf[4..4 + n], 8));
    }
    let n = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if n > buf.len() - 8 {
        return Err(bad(format!("element of {n} bytes but only {} left", buf.len() - 8)));
    }
    let padded = if first == MI_COMPRESSED { n } else { n.div_ceil(8) * 8 };
    Ok((first, &buf[8..8 + n], (8 + padded).min(buf.len())))
}

fn numbers(ty: u32, p: &[u8]) -> Result<Vec<f64>, String> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            if p.len() % $n != 0 {
                return Err(bad(format!("{} bytes is not a whole number of {}-byte values", p.len(), $n)));
            }
            p.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().expect("size")) as f64).collect()
        }};
    }
    Ok(match ty {
        MI_INT8 => p.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 => p.iter().map(|&b| b as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        t => return Err(bad(format!("unsupported numeric type {t}"))),
    })
}

fn matrix(p: &[u8]) -> Result<MatArray, String> {
    let (_, flags, a) = element(p)?;
    if flags.len() < 4 {
        return Err(bad("array flags too short"));
    }
    let class = flags[0];
    if flags.get(1).is_some_and(|f| f & 0x08 != 0) {
        return Err(bad("complex arrays are not supported"));
    }
    if !(6..=15).contains(&class) {
        return Err(bad(format!("array class {class} is not numeric")));
    }
    let (dty, d, b) = element(&p[a..])?;
    if dty != MI_INT32 {
        return Err(bad(format!("dimensions of type {dty}")));
    }
    let dims: Vec<usize> = numbers(MI_INT32, d)?.into_iter().map(|v| v.max(0.0) as usize).collect();
    let (_, name, c) = element(&p[a + b..])?;
    let name = String::from_utf8_lossy(name).into_owned();
    let (rty, real, _) = element(&p[a + b + c..])?;
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad("dimensions overflow"))?;
    let arr = if rty == MI_UINT8 {
        MatArray { name, dims, bytes: Some(real.to_vec()), values: None }
    } else {
        MatArray { name, dims, bytes: None, values: Some(numbers(rty, real)?) }
    };
    let got = arr.bytes.as_ref().map_or_else(|| arr.values.as_ref().map_or(0, |v| v.len()), |b| b.len());
    if got != count {
        return Err(bad(format!("`{}` has dimensions {:?} ({count} values) but {got} values", arr.name, arr.dims)));
    }
    Ok(arr)
}

/// The numeric arrays of a MAT level-5 file's bytes.
pub fn parse_mat(bytes: &[u8]) -> Result<Vec<MatArray>, String> {
    if bytes.len() < 128 {
        return Err(bad(format!("{} bytes: shorter than the 128-byte MAT header", bytes.len())));
    }
    match &bytes[126..128] {
        b"IM" => {}
        b"MI" => return Err(bad("big-endian MAT files are not supported")),
        _ => return Err(bad("not a MAT level-5 file (no endian indicator)")),
    }
    let mut out = Vec::new();
    let mut rest = &bytes[128..];
    while !rest.is_empty() {
        let (ty, p, used) = element(rest)?;
        match ty {
            MI_MATRIX => out.push(matrix(p)?),
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(p)
                    .take(MAX_INFLATED + 1)
                    .read_to_end(&mut inflated)
                    .map_err(|e| bad(format!("corrupt compressed element: {e}")))?;
                if inflated.len() as u64 > MAX_INFLATED {
                    return Err(bad("compressed element inflates beyond 4 GiB"));
                }
                let (ity, ip, _) = element(&inflated)?;
                if ity == MI_MATRIX {
                    out.push(matrix(ip)?);
                }
            }
            _ => {}
        }
        rest = &rest[used..];
    }
    Ok(out)
}

/// Loads `train_32x32.mat` or `test_32x32.mat` from `dir`.
pub fn load_svhn(dir: &Path, split: Split) -> Result<Dataset, DatasetError> {
    let name = match split {
        Split::Train => "train_32x32.mat",
        Split::Test => "test_32x32.mat",
    };
    let path = dir.join(name);
    if !path.is_file() {
        return Err(DatasetError::MissingFile { dir: dir.to_path_buf(), tried: vec![name.into()] });
    }
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let mat = |msg: String| DatasetError::Mat { path: path.clone(), msg };
    let arrays = parse_mat(&bytes).map_err(mat)?;
    let x = arrays.iter().find(|a| a.name == "X").ok_or_else(|| mat("no variable `X`".into()))?;
    let y = arrays.iter().find(|a| a.name == "y").ok_or_else(|| mat("no variable `y`".into()))?;
    let xb = x.bytes.as_ref().ok_or_else(|| mat("`X` is not uint8".into()))?;
    if x.dims.len() != 4 || x.dims[..3] != [32, 32, 3] {
        return Err(mat(format!("`X` has dimensions {:?}, expected 32×32×3×N", x.dims)));
    }
    let n = x.dims[3];
    let yv: Vec<f64> = match (&y.values, &y.bytes) {
        (Some(v), _) => v.clone(),
        (None, Some(b)) => b.iter().map(|&v| v as f64).collect(),
        _ => Vec::new(),
    };
    if yv.len() != n {
        return Err(DatasetError::CountMismatch { images: n, labels: yv.len() });
    }
    let mut labels = Vec::with_capacity(n);
    for (i, &v) in yv.iter().enumerate() {
        if v.fract() != 0.0 || !(1.0..=10.0).contains(&v) {
            return Err(mat(format!("label {v} at index {i} is not in 1..=10")));
        }
        labels.push((v as u32) % NUM_CLASSES as u32);
    }
    // Column-major X[row, col, channel, n] → row-major [n, channel, row, col].
    let mut images = vec![0f32; n * 3072];
    for e in 0..n {
        for c in 0..3 {
            for col in 0..32 {
                let src = &xb[e * 3072 + c * 1024 + col * 32..][..32];
                for (row, &b) in src.iter().enumerate() {
                    images[e * 3072 + c * 1024 + row * 32 + col] = b as f32 / 255.0;
                }
            }
        }
    }
    Ok(Dataset { n, images, labels, channels: 3, height: 32, width: 32 })
}

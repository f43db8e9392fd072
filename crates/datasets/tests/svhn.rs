//! The SVHN loader and its MAT level-5 reader on small files written here: column-major
//! layout, label 10 → 0, plain and zlib-compressed elements, small-element tags, and typed
//! errors for malformed files.

use datasets::svhn::parse_mat;
use datasets::{load, load_svhn, DatasetError, Split};
use std::io::Write;
use std::path::PathBuf;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("car-svhn-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pad8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

fn tagged(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut v = ty.to_le_bytes().to_vec();
    v.extend((data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    pad8(&mut v);
    v
}

/// A small-element tag (data of at most 4 bytes inside the tag).
fn small(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut v = (ty | ((data.len() as u32) << 16)).to_le_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(8, 0);
    v
}

/// miMATRIX with class `class`, dims, name, and the real part as (type, bytes).
fn matrix(class: u8, dims: &[i32], name: &str, ty: u32, real: &[u8]) -> Vec<u8> {
    let mut body = tagged(6, &[class, 0, 0, 0, 0, 0, 0, 0]);
    body.extend(tagged(5, &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>()));
    body.extend(if name.len() <= 4 { small(1, name.as_bytes()) } else { tagged(1, name.as_bytes()) });
    body.extend(tagged(ty, real));
    tagged(14, &body)
}

fn header() -> Vec<u8> {
    let mut h = b"MATLAB 5.0 MAT-file, written by a test".to_vec();
    h.resize(124, b' ');
    h.extend([0x00, 0x01]);
    h.extend(b"IM");
    h
}

fn compressed(el: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(el).unwrap();
    let c = z.finish().unwrap();
    let mut v = 15u32.to_le_bytes().to_vec();
    v.extend((c.len() as u32).to_le_bytes());
    v.extend(c);
    v
}

/// X[row, col, ch, n] = (row + 2 col + 5 ch + 7 n) % 256, stored column-major.
fn svhn_file(n: usize, labels: &[f64], compress: bool) -> Vec<u8> {
    let mut x = Vec::with_capacity(3072 * n);
    for e in 0..n {
        for ch in 0..3 {
            for col in 0..32 {
                for row in 0..32 {
                    x.push(((row + 2 * col + 5 * ch + 7 * e) % 256) as u8);
                }
            }
        }
    }
    let xm = matrix(9, &[32, 32, 3, n as i32], "X", 2, &x);
    let ym =
        matrix(6, &[labels.len() as i32, 1], "y", 9, &labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let mut f = header();
    if compress {
        f.extend(compressed(&xm));
        f.extend(compressed(&ym));
    } else {
        f.extend(xm);
        f.extend(ym);
    }
    f
}

#[test]
fn reads_images_and_labels_plain_and_compressed() {
    for compress in [false, true] {
        let d = tmp(if compress { "z" } else { "plain" });
        std::fs::write(d.join("test_32x32.mat"), svhn_file(2, &[10.0, 3.0], compress)).unwrap();
        let ds = load("svhn", &d, Split::Test).unwrap();
        assert_eq!((ds.n, ds.channels, ds.height, ds.width), (2, 3, 32, 32));
        assert_eq!(ds.labels, vec![0, 3], "label 10 is the digit 0");
        // Example 1, channel 2, row 4, column 9.
        let v = ds.images[3072 + 2 * 1024 + 4 * 32 + 9];
        assert_eq!(v, (4 + 18 + 10 + 7) as f32 / 255.0);
        assert!(matches!(load_svhn(&d, Split::Train), Err(DatasetError::MissingFile { .. })));
    }
}

#[test]
fn malformed_files_give_typed_errors() {
    let d = tmp("bad");
    let p = d.join("test_32x32.mat");
    let good = svhn_file(2, &[1.0, 2.0], false);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..100].to_vec(), "header"),
        (good[..good.len() - 20].to_vec(), "left"),
        (
            {
                let mut g = good.clone();
                g[126..128].copy_from_slice(b"MI");
                g
            },
            "big-endian",
        ),
        (
            {
                let mut g = good.clone();
                g[126..128].copy_from_slice(b"xx");
                g
            },
            "not a MAT",
        ),
        (svhn_file(2, &[1.0], false), "labels"),
        (svhn_file(1, &[11.0], false), "label 11"),
        (
            {
                let mut g = header();
                g.extend(compressed(&[1, 2, 3]));
                let n = g.len();
                g[n - 3] ^= 0xff;
                g
            },
            "compressed",
        ),
        (
            {
                let mut g = header();
                g.extend(matrix(6, &[1, 1], "y", 9, &1.0f64.to_le_bytes()));
                g
            },
            "no variable `X`",
        ),
    ];
    for (bytes, want) in cases {
        std::fs::write(&p, &bytes).unwrap();
        let e = load_svhn(&d, Split::Test).unwrap_err();
        assert!(matches!(e, DatasetError::Mat { .. } | DatasetError::CountMismatch { .. }), "{want}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains(want) || (want == "labels" && msg.contains("labels")), "expected `{want}` in: {msg}");
    }
    // Dimensions that disagree with the data.
    let mut f = header();
    f.extend(matrix(9, &[32, 32, 3, 2], "X", 2, &[0u8; 3072]));
    assert!(parse_mat(&f).unwrap_err().contains("dimensions"));
}

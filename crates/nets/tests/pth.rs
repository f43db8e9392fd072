//! Tests of the PyTorch checkpoint reader (`nets::pth`).
//!
//! The papers' checkpoints live in `../shared` beside the checkout (`CONVEX_SHARED_DIR`); tests
//! that need them fail when it is missing, unless the run opts out with `CONVEX_SKIP_SHARED=1`.
//! The cascade, dtype and stride cases use checkpoints assembled byte by byte here (torch is not
//! available to write them).

use candle_core::{DType, Tensor};
use nets::pth::{read_pth, read_pth_bytes, PthError, StateDict};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;

/// A file of the shared data; see the `shared-data` crate (fails the test when missing, `None`
/// only when the run opted out with `CONVEX_SKIP_SHARED=1`).
fn shared(rel: &str) -> Option<PathBuf> {
    shared_data::shared_path(rel)
}

fn flat_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

// ------------------------------------------------------------------------------------------
// The papers' checkpoints.

#[test]
fn fashion_mnist_legacy_checkpoint_matches_reference_weights() {
    let Some(path) = shared("models/fashion_mnist_small_eps0.1.pth") else {
        return;
    };
    let dicts = read_pth(&path).unwrap();
    assert_eq!(dicts.len(), 1);
    let sd = &dicts[0];
    assert_eq!(sd.names(), ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias", "7.weight", "7.bias"]);
    let shapes: [(&str, &[usize]); 8] = [
        ("0.weight", &[16, 1, 4, 4]),
        ("0.bias", &[16]),
        ("2.weight", &[32, 16, 4, 4]),
        ("2.bias", &[32]),
        ("5.weight", &[100, 1568]),
        ("5.bias", &[100]),
        ("7.weight", &[10, 100]),
        ("7.bias", &[10]),
    ];
    for (name, shape) in shapes {
        let t = sd.get(name).unwrap();
        assert_eq!(t.dims(), shape, "{name}");
        assert_eq!(t.dtype(), DType::F32, "{name}");
        assert!(t.device().is_cpu());
        let Some(npy) = shared(&format!("reference/fashion_mnist_eps0.1/weights/{name}.npy")) else {
            return;
        };
        let reference = Tensor::read_npy(&npy).unwrap();
        assert_eq!(reference.dims(), shape, "{name} reference");
        let reference = reference.to_dtype(DType::F32).unwrap();
        assert_eq!(flat_f32(t), flat_f32(&reference), "{name} values");
    }
    assert!(sd.get("1.weight").is_none());
}

#[test]
fn mnist_legacy_checkpoint_loads() {
    let Some(path) = shared("models/mnist_small_eps0.1.pth") else {
        return;
    };
    let dicts = read_pth(&path).unwrap();
    assert_eq!(dicts.len(), 1);
    assert_eq!(dicts[0].len(), 8);
    assert_eq!(dicts[0].get("5.weight").unwrap().dims(), &[100, 1568]);
}

#[test]
fn tiny_resnet_zip_checkpoint_loads() {
    let Some(path) = shared("reference/tiny_resnet/tiny_resnet.pth") else {
        return;
    };
    let dicts = read_pth(&path).unwrap();
    assert_eq!(dicts.len(), 1);
    let sd = &dicts[0];
    let shapes: [(&str, &[usize]); 16] = [
        ("0.weight", &[8, 3, 3, 3]),
        ("0.bias", &[8]),
        ("2.Ws.0.weight", &[8, 8, 3, 3]),
        ("2.Ws.0.bias", &[8]),
        ("4.Ws.2.weight", &[8, 8, 3, 3]),
        ("4.Ws.2.bias", &[8]),
        ("6.Ws.0.weight", &[16, 8, 4, 4]),
        ("6.Ws.0.bias", &[16]),
        ("8.Ws.0.weight", &[16, 8, 2, 2]),
        ("8.Ws.0.bias", &[16]),
        ("8.Ws.2.weight", &[16, 16, 3, 3]),
        ("8.Ws.2.bias", &[16]),
        ("11.weight", &[50, 1024]),
        ("11.bias", &[50]),
        ("13.weight", &[10, 50]),
        ("13.bias", &[10]),
    ];
    // File order.
    let names: Vec<&str> = shapes.iter().map(|(n, _)| *n).collect();
    assert_eq!(sd.names(), names);
    for (name, shape) in shapes {
        let t = sd.get(name).unwrap_or_else(|| panic!("{name} missing: {:?}", sd.names()));
        assert_eq!(t.dims(), shape, "{name}");
        assert_eq!(t.dtype(), DType::F32);
        let v = flat_f32(t);
        assert!(v.iter().all(|x| x.is_finite() && x.abs() < 10.0), "{name}");
        assert!(v.iter().any(|&x| x != 0.0), "{name} all zero");
    }
}

// ------------------------------------------------------------------------------------------
// Checkpoints assembled by hand: a minimal protocol-2 pickle writer.

struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn int(&mut self, v: i32) -> &mut Self {
        self.0.push(b'J');
        self.0.extend(v.to_le_bytes());
        self
    }
    fn global(&mut self, module: &str, class: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{class}\n").as_bytes());
        self
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.op(b'(');
        for &x in v {
            self.int(x as i32);
        }
        self.op(b't')
    }
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, t: &Spec) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        self.op(b'(').str("storage").global("torch", t.class).str(t.key).str("cpu");
        self.int(t.numel as i32).op(b'N').op(b't').op(b'Q');
        self.int(t.offset as i32).ints(&t.size).ints(&t.stride);
        self.op(0x89).global("collections", "OrderedDict").op(b')').op(b'R');
        self.op(b't').op(b'R')
    }
    /// An `OrderedDict` of tensors.
    fn state_dict(&mut self, tensors: &[Spec]) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R').op(b'(');
        for t in tensors {
            self.str(t.name).tensor(t);
        }
        self.op(b'u')
    }
    fn done(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.0)
    }
}

struct Spec {
    name: &'static str,
    class: &'static str,
    key: &'static str,
    numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn spec(
    name: &'static str,
    class: &'static str,
    key: &'static str,
    numel: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
) -> Spec {
    Spec { name, class, key, numel, offset, size: size.to_vec(), stride: stride.to_vec() }
}

/// A legacy-format file: magic, protocol, system info, `object`, key list, storages.
fn legacy_file(object: &[u8], storages: &[(&str, usize, Vec<u8>)]) -> Vec<u8> {
    let mut f = vec![0x80, 2, 0x8a, 10];
    f.extend(&0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10]);
    f.push(b'.');
    f.extend(Pickle::new().op(b'M').op(0xe9).op(0x03).done());
    f.extend(
        Pickle::new().op(b'}').op(b'(').str("protocol_version").int(1001).str("little_endian").op(0x88).op(b'u').done(),
    );
    f.extend(object);
    let mut keys = Pickle::new();
    keys.op(b']').op(b'(');
    for (k, _, _) in storages {
        keys.str(k);
    }
    f.extend(keys.op(b'e').done());
    for (_, count, data) in storages {
        f.extend((*count as i64).to_le_bytes());
        f.extend(data);
    }
    f
}

/// A zip-format file with the same content.
fn zip_file(object: &[u8], storages: &[(&str, usize, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(object).unwrap();
    w.start_file("archive/byteorder", opts).unwrap();
    w.write_all(b"little").unwrap();
    for (key, _, data) in storages {
        w.start_file(format!("archive/data/{key}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

fn stage0() -> Vec<Spec> {
    vec![
        spec("0.weight", "FloatStorage", "k0", 6, 0, &[2, 3], &[3, 1]),
        spec("0.bias", "FloatStorage", "k0", 6, 4, &[2], &[1]),
        // A transposed view of the same storage.
        spec("0.t", "FloatStorage", "k0", 6, 0, &[3, 2], &[1, 3]),
    ]
}

fn stage1() -> Vec<Spec> {
    vec![
        spec("1.weight", "DoubleStorage", "k1", 3, 0, &[3], &[1]),
        spec("1.steps", "LongStorage", "k2", 1, 0, &[], &[]),
        spec("1.half", "HalfStorage", "k3", 3, 0, &[1, 3], &[3, 1]),
        spec("1.mask", "ByteStorage", "k4", 4, 0, &[2, 2], &[1, 2]),
    ]
}

/// The storages, deliberately in an order unlike their first use.
fn storages() -> Vec<(&'static str, usize, Vec<u8>)> {
    vec![
        ("k3", 3, le(&[0x3C00u16, 0x4000, 0xB800], u16::to_le_bytes)),
        ("k0", 6, le(&[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0], f32::to_le_bytes)),
        ("k1", 3, le(&[1.5f64, -2.25, 3.0], f64::to_le_bytes)),
        ("k2", 1, le(&[7i64], i64::to_le_bytes)),
        ("k4", 4, vec![1u8, 0, 1, 1]),
    ]
}

/// `{'epoch': 3, <key>: [stage0, stage1]}`.
fn cascade_object(key: &str) -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b'}').op(b'(').str("epoch").int(3).str(key).op(b']').op(b'(');
    p.state_dict(&stage0()).state_dict(&stage1());
    p.op(b'e').op(b'u').done()
}

fn check_cascade(dicts: &[StateDict]) {
    assert_eq!(dicts.len(), 2);
    assert_eq!(dicts[0].names(), ["0.weight", "0.bias", "0.t"]);
    assert_eq!(dicts[1].names(), ["1.weight", "1.steps", "1.half", "1.mask"]);
    let s0 = &dicts[0];
    let w = s0.get("0.weight").unwrap();
    assert_eq!(w.dims(), &[2, 3]);
    assert_eq!(w.to_vec2::<f32>().unwrap(), [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]);
    assert_eq!(s0.get("0.bias").unwrap().to_vec1::<f32>().unwrap(), [4.0, 5.0]);
    let t = s0.get("0.t").unwrap();
    assert!(t.is_contiguous());
    assert_eq!(t.to_vec2::<f32>().unwrap(), [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]);
    let s1 = &dicts[1];
    let w = s1.get("1.weight").unwrap();
    assert_eq!(w.dtype(), DType::F64);
    assert_eq!(w.to_vec1::<f64>().unwrap(), [1.5, -2.25, 3.0]);
    let steps = s1.get("1.steps").unwrap();
    assert_eq!(steps.dtype(), DType::I64);
    assert_eq!(steps.dims(), &[] as &[usize]);
    assert_eq!(steps.to_scalar::<i64>().unwrap(), 7);
    let h = s1.get("1.half").unwrap();
    assert_eq!(h.dtype(), DType::F16);
    let h = h.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(h, [[1.0, 2.0, -0.5]]);
    let m = s1.get("1.mask").unwrap();
    assert_eq!(m.dtype(), DType::U8);
    assert_eq!(m.to_vec2::<u8>().unwrap(), [[1, 1], [0, 1]]);
}

#[test]
fn legacy_cascade_gives_one_state_dict_per_stage() {
    let file = legacy_file(&cascade_object("state_dict"), &storages());
    check_cascade(&read_pth_bytes(&file).unwrap());
    let file = legacy_file(&cascade_object("model_state_dict"), &storages());
    check_cascade(&read_pth_bytes(&file).unwrap());
}

#[test]
fn zip_cascade_gives_one_state_dict_per_stage() {
    let file = zip_file(&cascade_object("state_dict"), &storages());
    check_cascade(&read_pth_bytes(&file).unwrap());
}

#[test]
fn nested_single_and_plain_state_dicts() {
    // {'state_dict': stage0}
    let mut p = Pickle::new();
    p.op(b'}').op(b'(').str("state_dict").state_dict(&stage0()).op(b'u');
    // (A legacy file lists exactly the storages its object references.)
    let only = |keys: &[&str]| -> Vec<_> { storages().into_iter().filter(|(k, _, _)| keys.contains(k)).collect() };
    let dicts = read_pth_bytes(&legacy_file(&p.done(), &only(&["k0"]))).unwrap();
    assert_eq!(dicts.len(), 1);
    assert_eq!(dicts[0].names(), ["0.weight", "0.bias", "0.t"]);
    // A plain state dict, in both formats.
    let object = Pickle::new().state_dict(&stage1()).done();
    let st = only(&["k1", "k2", "k3", "k4"]);
    for file in [legacy_file(&object, &st), zip_file(&object, &st)] {
        let dicts = read_pth_bytes(&file).unwrap();
        assert_eq!(dicts.len(), 1);
        assert_eq!(dicts[0].names(), ["1.weight", "1.steps", "1.half", "1.mask"]);
    }
}

#[test]
fn storage_too_short_is_an_error() {
    // Claims 2x4 elements from a 6-element storage.
    let specs = [spec("w", "FloatStorage", "k0", 6, 0, &[2, 4], &[4, 1])];
    let object = Pickle::new().state_dict(&specs).done();
    let st = vec![("k0", 6, le(&[0f32; 6], f32::to_le_bytes))];
    for file in [legacy_file(&object, &st), zip_file(&object, &st)] {
        let err = read_pth_bytes(&file).unwrap_err();
        assert!(matches!(err, PthError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("needs 8 elements"), "{err}");
    }
    // An offset past the end, and a stride past the end.
    for (offset, size, stride) in [(6, vec![1], vec![1]), (0, vec![2, 2], vec![5, 1])] {
        let specs = [Spec { offset, size, stride, ..spec("w", "FloatStorage", "k0", 6, 0, &[], &[]) }];
        let object = Pickle::new().state_dict(&specs).done();
        assert!(matches!(read_pth_bytes(&legacy_file(&object, &st)), Err(PthError::Corrupt(_))));
    }
    // A file cut inside its last storage: truncated.
    let mut file = legacy_file(&object, &[("k0", 6, le(&[0f32; 6], f32::to_le_bytes))]);
    file.truncate(file.len() - 4);
    assert!(matches!(read_pth_bytes(&file), Err(PthError::Truncated { .. })));
}

#[test]
fn hostile_pickles_are_errors() {
    // Nesting a million levels deep.
    let mut p = Pickle::new();
    p.op(b'N');
    for _ in 0..1_000_000 {
        p.op(0x85);
    }
    let file = legacy_file(&p.done(), &[]);
    assert!(matches!(read_pth_bytes(&file), Err(PthError::Unsupported(_))));
    // A memo "billion laughs": each step doubles the object.
    let mut p = Pickle::new();
    p.op(b'N').op(b'q').op(0);
    for _ in 0..64 {
        p.op(b'(').op(b'h').op(0).op(b'h').op(0).op(b't').op(b'q').op(0);
    }
    let file = legacy_file(&p.done(), &[]);
    assert!(matches!(read_pth_bytes(&file), Err(PthError::Unsupported(_))));
    // Not a dict; a dict without tensors; a LONG1 wider than 8 bytes.
    for object in [
        Pickle::new().int(5).done(),
        Pickle::new().op(b'}').str("epoch").int(3).op(b's').done(),
        Pickle::new().op(0x8a).op(9).op(1).op(2).op(3).op(4).op(5).op(6).op(7).op(8).op(9).done(),
    ] {
        let err = read_pth_bytes(&legacy_file(&object, &[])).unwrap_err();
        assert!(matches!(err, PthError::Unsupported(_)), "{err}");
    }
    // Stack underflow, a memo read before any write.
    for object in [Pickle::new().op(b't').done(), Pickle::new().op(b'h').op(7).done()] {
        let err = read_pth_bytes(&legacy_file(&object, &[])).unwrap_err();
        assert!(matches!(err, PthError::Corrupt(_)), "{err}");
    }
}

// ------------------------------------------------------------------------------------------
// Damaged files.

#[test]
fn every_truncation_of_a_legacy_checkpoint_is_reported_as_truncated() {
    let Some(path) = shared("models/fashion_mnist_small_eps0.1.pth") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    // Every length through the pickles (the first storage starts at byte 1008), then a sweep
    // through the storages, then the last few bytes.
    let lengths = (0..1100).chain((1100..bytes.len()).step_by(997)).chain(bytes.len() - 9..bytes.len());
    for len in lengths {
        match read_pth_bytes(&bytes[..len]) {
            Err(PthError::Truncated { .. }) => {}
            other => panic!("length {len}: expected Truncated, got {other:?}"),
        }
    }
    assert!(read_pth_bytes(&bytes).is_ok());
}

#[test]
fn truncated_zip_checkpoints_are_errors() {
    let Some(path) = shared("reference/tiny_resnet/tiny_resnet.pth") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let lengths = (0..300).chain((300..bytes.len()).step_by(499)).chain(bytes.len() - 30..bytes.len());
    for len in lengths {
        assert!(read_pth_bytes(&bytes[..len]).is_err(), "length {len}");
    }
}

#[test]
fn corrupted_headers_are_errors() {
    let Some(path) = shared("models/fashion_mnist_small_eps0.1.pth") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    // First bytes overwritten.
    let mut b = bytes.clone();
    b[..4].copy_from_slice(&[0, 0, 0, 0]);
    let err = read_pth_bytes(&b).unwrap_err();
    assert!(matches!(err, PthError::Corrupt(_)), "{err}");
    // One bit of the magic number flipped.
    let mut b = bytes.clone();
    b[6] ^= 0x10;
    let err = read_pth_bytes(&b).unwrap_err();
    assert!(matches!(err, PthError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("magic"), "{err}");
}

#[test]
fn single_byte_corruptions_of_the_pickles_never_panic() {
    let Some(path) = shared("models/fashion_mnist_small_eps0.1.pth") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let mut errors = 0;
    for pos in 0..1016 {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[pos] ^= flip;
            if read_pth_bytes(&b).is_err() {
                errors += 1;
            }
        }
    }
    assert!(errors > 1000, "only {errors} corruptions detected");
}

#[test]
fn random_bytes_are_errors() {
    let mut rng = StdRng::seed_from_u64(7);
    let magic_and_version = {
        let mut f = vec![0x80, 2, 0x8a, 10];
        f.extend(&0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10]);
        f.extend([b'.', 0x80, 2, b'M', 0xe9, 0x03, b'.']);
        f
    };
    let prefixes: [&[u8]; 4] = [b"", &[0x80, 2], &magic_and_version, b"PK\x03\x04"];
    for prefix in prefixes {
        for trial in 0..200 {
            let len = rng.random_range(0..4096);
            let mut b = prefix.to_vec();
            b.extend((0..len).map(|_| rng.random::<u8>()));
            if prefix.is_empty() && b.first() == Some(&b'P') {
                continue;
            }
            assert!(read_pth_bytes(&b).is_err(), "prefix {prefix:?}, trial {trial}");
        }
    }
}

#[test]
fn empty_and_missing_files_are_errors() {
    let err = read_pth_bytes(&[]).unwrap_err();
    assert!(matches!(err, PthError::Truncated { .. }), "{err}");

    let dir = std::env::temp_dir().join(format!("nets-pth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let err = read_pth(&empty).unwrap_err();
    assert!(matches!(err, PthError::Truncated { .. }), "{err}");

    let missing = dir.join("missing.pth");
    match read_pth(&missing) {
        Err(PthError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

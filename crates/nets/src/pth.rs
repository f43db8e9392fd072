//! Reader for PyTorch `.pth` checkpoints, in both serialisation formats.
//!
//! * The **legacy format** (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`), used by the
//!   papers' published models: a sequence of pickles — magic number, protocol version, system
//!   information, the checkpoint object, the list of storage keys — followed by the raw storages in
//!   that key order, each prefixed by its element count as a little-endian `i64`.
//! * The **zip format** (PyTorch >= 1.6): a zip archive holding `<prefix>/data.pkl` (the checkpoint
//!   object) and one entry `<prefix>/data/<key>` of raw little-endian bytes per storage.
//!
//! In both, tensors are pickled as calls to `torch._utils._rebuild_tensor_v2` (or the older
//! `_rebuild_tensor`, possibly wrapped in `_rebuild_parameter`) whose first argument is a
//! persistent id `('storage', storage_type, key, location, numel[, view_metadata])`.
//!
//! Pickles are decoded into Candle's [`candle_core::pickle::Object`] tree by a small checked
//! pickle machine in this file (Candle's own `Stack` reverses dict order and trusts its input):
//! every length, stack access, nesting depth and memo expansion is checked. Tensor offsets, shapes
//! and strides are checked against the storage sizes before any data is touched. Malformed input of any
//! kind is reported as a [`PthError`], never a panic.

use candle_core::pickle::Object;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What can go wrong reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The file could not be read.
    #[error("cannot read checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes end before a part that must be there.
    #[error(
        "checkpoint truncated: {what} needs {needed} byte(s) at offset {offset}, \
         but only {available} remain"
    )]
    Truncated {
        /// The part being read.
        what: String,
        /// Byte offset (within the file, or within a zip entry) where it starts.
        offset: usize,
        /// Bytes it needs from `offset`.
        needed: usize,
        /// Bytes present from `offset`.
        available: usize,
    },
    /// The bytes are not a well-formed checkpoint.
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    /// A well-formed checkpoint using a feature this reader does not handle.
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    /// Candle failed to build a tensor.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, PthError>;

/// A checkpoint's tensors, in file order, with their dotted names.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    pub tensors: Vec<(String, Tensor)>,
}

impl StateDict {
    /// The tensor stored under `name` (the first one, should a name repeat).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// All names, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the state dict holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Reads a `.pth` file in either format. Returns one [`StateDict`] per model: a plain state dict
/// gives one; a dict whose `state_dict` (or `model_state_dict`) entry holds a list of state dicts
/// (a cascade) gives one per stage; a dict whose `state_dict` entry is a single state dict gives
/// one. Tensors keep their stored dtype and live on the CPU.
pub fn read_pth(path: &Path) -> Result<Vec<StateDict>> {
    let bytes = std::fs::read(path).map_err(|source| PthError::Io { path: path.to_path_buf(), source })?;
    read_pth_bytes(&bytes)
}

/// [`read_pth`] on a checkpoint already in memory.
pub fn read_pth_bytes(bytes: &[u8]) -> Result<Vec<StateDict>> {
    if bytes.is_empty() {
        return Err(PthError::Truncated {
            what: "checkpoint header (the file is empty)".into(),
            offset: 0,
            needed: 1,
            available: 0,
        });
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes)
    } else if bytes[0] == PICKLE_PROTO {
        read_legacy(bytes)
    } else if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        Err(PthError::Unsupported("tar-based checkpoint (PyTorch < 0.1.10)".into()))
    } else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(PthError::Corrupt(format!(
            "not a PyTorch checkpoint: starts with bytes {} (expected a pickle or a zip archive)",
            head.join(" ")
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Storages and tensors described by the pickled object tree.

/// Element type of a pickled storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StorageKind {
    class: &'static str,
    elem_size: usize,
    dtype: Option<DType>,
}

fn storage_kind(class_name: &str) -> Option<StorageKind> {
    let (class, elem_size, dtype) = match class_name {
        "FloatStorage" => ("FloatStorage", 4, Some(DType::F32)),
        "DoubleStorage" => ("DoubleStorage", 8, Some(DType::F64)),
        "HalfStorage" => ("HalfStorage", 2, Some(DType::F16)),
        "BFloat16Storage" => ("BFloat16Storage", 2, Some(DType::BF16)),
        "LongStorage" => ("LongStorage", 8, Some(DType::I64)),
        "IntStorage" => ("IntStorage", 4, Some(DType::I32)),
        "ShortStorage" => ("ShortStorage", 2, Some(DType::I16)),
        "ByteStorage" => ("ByteStorage", 1, Some(DType::U8)),
        "BoolStorage" => ("BoolStorage", 1, Some(DType::U8)),
        "CharStorage" => ("CharStorage", 1, None),
        "ComplexFloatStorage" => ("ComplexFloatStorage", 8, None),
        "ComplexDoubleStorage" => ("ComplexDoubleStorage", 16, None),
        _ => return None,
    };
    Some(StorageKind { class, elem_size, dtype })
}

/// A persistent id `('storage', type, key, location, numel[, view_metadata])`.
#[derive(Debug, Clone)]
struct StorageId {
    key: String,
    kind: StorageKind,
    /// For a view: (offset, length) in elements within the root storage `key`.
    view: Option<(usize, usize)>,
}

/// A tensor to rebuild from a storage.
#[derive(Debug, Clone)]
struct TensorSpec {
    storage: StorageId,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn non_negative(obj: &Object, what: &str) -> Result<usize> {
    let v = match obj {
        Object::Int(v) => *v as i64,
        Object::Long(v) => *v,
        Object::Bool(b) => *b as i64,
        other => return Err(PthError::Corrupt(format!("{what}: expected an integer, found {}", brief(other)))),
    };
    usize::try_from(v).map_err(|_| PthError::Corrupt(format!("{what}: expected a non-negative integer, found {v}")))
}

fn int_tuple(obj: &Object, what: &str) -> Result<Vec<usize>> {
    match obj {
        Object::Tuple(items) | Object::List(items) => items.iter().map(|o| non_negative(o, what)).collect(),
        other => Err(PthError::Corrupt(format!("{what}: expected a tuple of integers, found {}", brief(other)))),
    }
}

/// A short description of an object for error messages (never its whole subtree).
fn brief(obj: &Object) -> String {
    match obj {
        Object::Class { module_name, class_name } => format!("class {module_name}.{class_name}"),
        Object::Int(v) => format!("int {v}"),
        Object::Long(v) => format!("int {v}"),
        Object::Float(v) => format!("float {v}"),
        Object::Unicode(s) if s.len() <= 64 => format!("string {s:?}"),
        Object::Unicode(s) => format!("string of {} bytes", s.len()),
        Object::Bool(b) => format!("bool {b}"),
        Object::None => "None".into(),
        Object::Tuple(v) => format!("tuple of {}", v.len()),
        Object::List(v) => format!("list of {}", v.len()),
        Object::Mark => "mark".into(),
        Object::Dict(v) => format!("dict of {}", v.len()),
        Object::Reduce { callable, .. } => format!("call of {}", brief(callable)),
        Object::Build { callable, .. } => format!("object built from {}", brief(callable)),
        Object::PersistentLoad(_) => "persistent id".into(),
    }
}

fn storage_id(pid: &Object) -> Result<StorageId> {
    let items = match pid {
        Object::Tuple(items) => items,
        other => return Err(PthError::Corrupt(format!("persistent id: expected a tuple, found {}", brief(other)))),
    };
    match items.first() {
        Some(Object::Unicode(s)) if s == "storage" => {}
        Some(other) => {
            return Err(PthError::Unsupported(format!(
                "persistent id of kind {} (only 'storage' is known)",
                brief(other)
            )))
        }
        None => return Err(PthError::Corrupt("empty persistent id".into())),
    }
    if items.len() < 5 {
        return Err(PthError::Corrupt(format!(
            "storage persistent id has {} fields, expected at least 5",
            items.len()
        )));
    }
    let kind = match &items[1] {
        Object::Class { module_name, class_name } => storage_kind(class_name)
            .ok_or_else(|| PthError::Unsupported(format!("storage type {module_name}.{class_name}")))?,
        other => return Err(PthError::Corrupt(format!("storage type: expected a class, found {}", brief(other)))),
    };
    let key = match &items[2] {
        Object::Unicode(s) => s.clone(),
        Object::Int(v) => v.to_string(),
        Object::Long(v) => v.to_string(),
        other => return Err(PthError::Corrupt(format!("storage key: expected a string, found {}", brief(other)))),
    };
    // items[3] is the location ('cpu', 'cuda:0'): everything is loaded onto the CPU.
    non_negative(&items[4], "storage size")?;
    let view = match items.get(5) {
        None | Some(Object::None) => None,
        Some(Object::Tuple(v)) if v.len() >= 3 => {
            Some((non_negative(&v[1], "storage view offset")?, non_negative(&v[2], "storage view size")?))
        }
        Some(other) => {
            return Err(PthError::Corrupt(format!(
                "storage view metadata: expected (key, offset, size), found {}",
                brief(other)
            )))
        }
    };
    Ok(StorageId { key, kind, view })
}

/// Decodes `callable(*args)` as a tensor rebuild, or `None` when the call is not one.
fn tensor_call(callable: &Object, args: &Object) -> Result<Option<TensorSpec>> {
    let (module, class) = match callable {
        Object::Class { module_name, class_name } => (module_name.as_str(), class_name.as_str()),
        _ => return Ok(None),
    };
    let args = match args {
        Object::Tuple(a) => a.as_slice(),
        other => {
            if module.starts_with("torch") && class.starts_with("_rebuild") {
                return Err(PthError::Corrupt(format!(
                    "{module}.{class}: expected an argument tuple, found {}",
                    brief(other)
                )));
            }
            return Ok(None);
        }
    };
    match (module, class) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(PthError::Corrupt(format!(
                    "{module}.{class} called with {} arguments, expected at least 4",
                    args.len()
                )));
            }
            let storage = match &args[0] {
                Object::PersistentLoad(pid) => storage_id(pid)?,
                other => {
                    return Err(PthError::Corrupt(format!(
                        "tensor storage: expected a persistent id, found {}",
                        brief(other)
                    )))
                }
            };
            let offset = non_negative(&args[1], "tensor storage offset")?;
            let size = int_tuple(&args[2], "tensor size")?;
            let stride = int_tuple(&args[3], "tensor stride")?;
            if size.len() != stride.len() {
                return Err(PthError::Corrupt(format!("tensor size {size:?} and stride {stride:?} differ in rank")));
            }
            Ok(Some(TensorSpec { storage, offset, size, stride }))
        }
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
            match args.first() {
                Some(Object::Reduce { callable, args }) => match tensor_call(callable, args)? {
                    Some(spec) => Ok(Some(spec)),
                    None => Err(PthError::Unsupported(format!("parameter wrapping {}", brief(callable)))),
                },
                _ => Err(PthError::Corrupt("_rebuild_parameter without a tensor argument".into())),
            }
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            // (func, type, args, state): the tensor is func(*args).
            if args.len() < 3 {
                return Err(PthError::Corrupt("_rebuild_from_type_v2 called with fewer than 3 arguments".into()));
            }
            match tensor_call(&args[0], &args[2])? {
                Some(spec) => Ok(Some(spec)),
                None => Err(PthError::Unsupported(format!("tensor subclass rebuilt with {}", brief(&args[0])))),
            }
        }
        (m, c) if m.starts_with("torch") && c.starts_with("_rebuild") => {
            Err(PthError::Unsupported(format!("tensors rebuilt with {m}.{c} (quantized, sparse, ...)")))
        }
        _ => Ok(None),
    }
}

fn as_tensor(obj: &Object) -> Result<Option<TensorSpec>> {
    match obj {
        Object::Reduce { callable, args } => tensor_call(callable, args),
        _ => Ok(None),
    }
}

/// The named tensors of one state dict, in order. Entries that are not tensors (e.g. the
/// `_metadata` attribute Candle merges into an `OrderedDict`) are skipped.
fn state_dict_specs(entries: &[(Object, Object)]) -> Result<Vec<(String, TensorSpec)>> {
    let mut out = Vec::new();
    for (key, value) in entries {
        if let Some(spec) = as_tensor(value)? {
            let name = match key {
                Object::Unicode(s) => s.clone(),
                other => {
                    return Err(PthError::Corrupt(format!("state dict key: expected a string, found {}", brief(other))))
                }
            };
            out.push((name, spec));
        }
    }
    Ok(out)
}

/// Finds the state dict(s) in the checkpoint object.
fn find_state_dicts(obj: &Object) -> Result<Vec<Vec<(String, TensorSpec)>>> {
    let as_dicts = |v: &Object, what: &str| -> Result<Vec<Vec<(String, TensorSpec)>>> {
        match v {
            Object::Dict(entries) => Ok(vec![state_dict_specs(entries)?]),
            Object::List(items) | Object::Tuple(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Object::Dict(entries) => state_dict_specs(entries),
                    other => Err(PthError::Unsupported(format!("{what}[{i}] is a {}, not a state dict", brief(other)))),
                })
                .collect(),
            other => Err(PthError::Unsupported(format!(
                "{what} is a {}, not a state dict or a list of state dicts",
                brief(other)
            ))),
        }
    };
    let dicts = match obj {
        Object::Dict(entries) => {
            let nested = entries
                .iter()
                .find(|(k, _)| matches!(k, Object::Unicode(s) if s == "state_dict" || s == "model_state_dict"));
            match nested {
                Some((Object::Unicode(k), v)) => as_dicts(v, &format!("entry '{k}'"))?,
                _ => vec![state_dict_specs(entries)?],
            }
        }
        Object::List(_) => as_dicts(obj, "the checkpoint")?,
        other => {
            return Err(PthError::Unsupported(format!(
                "the checkpoint holds a {}, not a state dict (a whole pickled module cannot be read)",
                brief(other)
            )))
        }
    };
    if dicts.iter().all(|d| d.is_empty()) {
        return Err(PthError::Unsupported("no tensors found in the checkpoint".into()));
    }
    Ok(dicts)
}

/// Every storage referenced anywhere in the object tree, by key.
fn collect_storages(obj: &Object, out: &mut HashMap<String, StorageKind>) -> Result<()> {
    match obj {
        Object::PersistentLoad(pid) => {
            let id = storage_id(pid)?;
            if let Some(prev) = out.insert(id.key.clone(), id.kind) {
                if prev != id.kind {
                    return Err(PthError::Corrupt(format!(
                        "storage {} is declared both as {} and as {}",
                        id.key, prev.class, id.kind.class
                    )));
                }
            }
        }
        Object::Tuple(v) | Object::List(v) => {
            for o in v {
                collect_storages(o, out)?;
            }
        }
        Object::Dict(kv) => {
            for (k, v) in kv {
                collect_storages(k, out)?;
                collect_storages(v, out)?;
            }
        }
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storages(callable, out)?;
            collect_storages(args, out)?;
        }
        _ => {}
    }
    Ok(())
}

/// Copies the elements of `spec` out of `storage` (the root storage's bytes) into a contiguous
/// CPU tensor of the stored dtype.
fn materialize(name: &str, spec: &TensorSpec, storage: &[u8]) -> Result<Tensor> {
    let kind = spec.storage.kind;
    let es = kind.elem_size;
    let dtype = kind.dtype.ok_or_else(|| {
        PthError::Unsupported(format!("tensor '{name}' has storage type {}, which Candle cannot represent", kind.class))
    })?;
    let root_len = storage.len() / es;
    let (base, len) = match spec.storage.view {
        None => (0, root_len),
        Some((off, n)) => {
            if off.checked_add(n).is_none_or(|end| end > root_len) {
                return Err(PthError::Corrupt(format!(
                    "tensor '{name}': storage view [{off}, {off}+{n}) lies outside storage {} of {root_len} elements",
                    spec.storage.key
                )));
            }
            (off, n)
        }
    };
    // A dimension of size 1 never advances along its stride: zero it, so that a huge stride
    // there can neither overflow the index arithmetic nor defeat the contiguity test.
    let stride: Vec<usize> = spec.size.iter().zip(&spec.stride).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
    let overflow = || PthError::Corrupt(format!("tensor '{name}': size {:?} overflows", spec.size));
    let numel = spec.size.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)?;
    let nbytes = numel.checked_mul(es).ok_or_else(overflow)?;
    if numel == 0 {
        return Ok(Tensor::zeros(spec.size.as_slice(), dtype, &Device::Cpu)?);
    }
    // Highest element index the tensor touches.
    let mut last = spec.offset;
    for (&d, &s) in spec.size.iter().zip(&stride) {
        last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or_else(overflow)?;
    }
    if last >= len {
        return Err(PthError::Corrupt(format!(
            "tensor '{name}' (offset {}, size {:?}, stride {:?}) needs {} elements but storage {} holds only {len}",
            spec.offset,
            spec.size,
            spec.stride,
            last as u128 + 1,
            spec.storage.key
        )));
    }
    // Zero or overlapping strides can make a tensor larger than its storage: refuse absurd ones.
    const MAX_EXPANDED_BYTES: usize = 1 << 28;
    if numel > len && nbytes > MAX_EXPANDED_BYTES {
        return Err(PthError::Unsupported(format!("tensor '{name}' expands {len} stored elements to {numel}")));
    }
    let data = &storage[base * es..(base + len) * es];
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&d, &s) in spec.size.iter().zip(&stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(d);
    }
    let mut buf: Vec<u8>;
    let bytes: &[u8] = if contiguous {
        &data[spec.offset * es..spec.offset * es + nbytes]
    } else {
        buf = Vec::with_capacity(nbytes);
        let rank = spec.size.len();
        let mut index = vec![0usize; rank];
        let mut pos = spec.offset;
        for _ in 0..numel {
            buf.extend_from_slice(&data[pos * es..(pos + 1) * es]);
            // Advance the row-major odometer.
            for ax in (0..rank).rev() {
                index[ax] += 1;
                pos += stride[ax];
                if index[ax] < spec.size[ax] {
                    break;
                }
                pos -= stride[ax] * spec.size[ax];
                index[ax] = 0;
            }
        }
        &buf
    };
    #[cfg(target_endian = "big")]
    let bytes: &[u8] = {
        let mut swapped = bytes.to_vec();
        swapped.chunks_mut(es).for_each(|c| c.reverse());
        buf = swapped;
        &buf
    };
    Ok(Tensor::from_raw_buffer(bytes, dtype, spec.size.as_slice(), &Device::Cpu)?)
}

fn build_state_dicts<'a>(
    specs: Vec<Vec<(String, TensorSpec)>>,
    mut storage_bytes: impl FnMut(&StorageId) -> Result<&'a [u8]>,
) -> Result<Vec<StateDict>> {
    specs
        .into_iter()
        .map(|dict| {
            let tensors = dict
                .into_iter()
                .map(|(name, spec)| {
                    let bytes = storage_bytes(&spec.storage)?;
                    let t = materialize(&name, &spec, bytes)?;
                    Ok((name, t))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(StateDict { tensors })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Legacy (pre-1.6) format.

const PICKLE_PROTO: u8 = 0x80;
/// `torch.serialization.MAGIC_NUMBER`.
const MAGIC_NUMBER: u128 = 0x1950a86a20f9469cfc6c;
/// `torch.serialization.PROTOCOL_VERSION`.
const LEGACY_PROTOCOL_VERSION: usize = 1001;

fn truncated(what: &str, bytes: &[u8], offset: usize, needed: usize) -> PthError {
    PthError::Truncated { what: what.to_string(), offset, needed, available: bytes.len().saturating_sub(offset) }
}

/// Checks the magic-number pickle (`PROTO 2, LONG1 10 <bytes>, STOP`) and returns the offset
/// after it. Parsed by hand: the number is wider than Candle's `Long1` handles.
fn check_magic(bytes: &[u8]) -> Result<usize> {
    let what = "magic number";
    let bad = || PthError::Corrupt("bad magic number: not a PyTorch checkpoint (or its header is damaged)".into());
    let get = |i: usize| bytes.get(i).copied().ok_or_else(|| truncated(what, bytes, i, 1));
    let mut p = 0;
    if get(p)? == PICKLE_PROTO {
        get(p + 1)?;
        p += 2;
    }
    if get(p)? != 0x8a {
        return Err(bad());
    }
    let n = get(p + 1)? as usize;
    p += 2;
    if n == 0 || n > 16 {
        return Err(bad());
    }
    let digits = bytes.get(p..p + n).ok_or_else(|| truncated(what, bytes, p, n))?;
    let value = digits.iter().rev().fold(0u128, |acc, &b| (acc << 8) | b as u128);
    p += n;
    if value != MAGIC_NUMBER || get(p)? != b'.' {
        return Err(bad());
    }
    Ok(p + 1)
}

fn read_legacy(bytes: &[u8]) -> Result<Vec<StateDict>> {
    let mut pos = check_magic(bytes)?;

    let (version, next) = parse_pickle(bytes, pos, "protocol version")?;
    pos = next;
    match non_negative(&version, "protocol version") {
        Ok(LEGACY_PROTOCOL_VERSION) => {}
        Ok(v) => {
            return Err(PthError::Unsupported(format!(
                "legacy protocol version {v} (expected {LEGACY_PROTOCOL_VERSION})"
            )))
        }
        Err(e) => return Err(e),
    }

    let (sys_info, next) = parse_pickle(bytes, pos, "system info")?;
    pos = next;
    if let Object::Dict(entries) = &sys_info {
        for (k, v) in entries {
            if matches!(k, Object::Unicode(s) if s == "little_endian") && *v == Object::Bool(false) {
                return Err(PthError::Unsupported("checkpoint written on a big-endian machine".into()));
            }
        }
    }

    let (root, next) = parse_pickle(bytes, pos, "checkpoint object")?;
    pos = next;
    let (keys, next) = parse_pickle(bytes, pos, "storage key list")?;
    pos = next;
    let keys = match &keys {
        Object::List(items) | Object::Tuple(items) => items
            .iter()
            .map(|k| match k {
                Object::Unicode(s) => Ok(s.clone()),
                other => Err(PthError::Corrupt(format!("storage key list holds a {}, expected strings", brief(other)))),
            })
            .collect::<Result<Vec<_>>>()?,
        other => return Err(PthError::Corrupt(format!("storage key list is a {}, expected a list", brief(other)))),
    };

    let specs = find_state_dicts(&root)?;
    let mut kinds = HashMap::new();
    collect_storages(&root, &mut kinds)?;

    // The raw storages follow in key order, each as an i64 element count then the elements.
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for key in &keys {
        let kind = kinds.get(key).ok_or_else(|| {
            PthError::Corrupt(format!(
                "storage key '{key}' is listed but never referenced, so its element size is unknown"
            ))
        })?;
        let what = format!("element count of storage '{key}'");
        let count = bytes.get(pos..pos + 8).ok_or_else(|| truncated(&what, bytes, pos, 8))?;
        let count = i64::from_le_bytes(count.try_into().expect("8 bytes"));
        pos += 8;
        let count = usize::try_from(count)
            .map_err(|_| PthError::Corrupt(format!("storage '{key}' has a negative element count {count}")))?;
        let what = format!("storage '{key}' ({count} elements of {})", kind.class);
        let nbytes = count
            .checked_mul(kind.elem_size)
            .ok_or_else(|| PthError::Corrupt(format!("storage '{key}' claims an impossible {count} elements")))?;
        let data = pos
            .checked_add(nbytes)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| truncated(&what, bytes, pos, nbytes))?;
        pos += nbytes;
        if storages.insert(key.as_str(), data).is_some() {
            return Err(PthError::Corrupt(format!("storage key '{key}' appears twice in the key list")));
        }
    }

    build_state_dicts(specs, |id| {
        storages.get(id.key.as_str()).copied().ok_or_else(|| {
            PthError::Corrupt(format!("storage '{}' is referenced but missing from the storage key list", id.key))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Zip format.

fn read_zip(bytes: &[u8]) -> Result<Vec<StateDict>> {
    // The zip crate is third-party code parsing untrusted bytes: read everything we need inside
    // `catch_unwind` so that a bug there surfaces as an error, not a panic.
    let entries = std::panic::catch_unwind(|| read_zip_entries(bytes)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        PthError::Corrupt(format!("zip archive could not be read (zip reader panicked: {msg})"))
    })??;

    let pkl_name = entries
        .keys()
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .min()
        .cloned()
        .ok_or_else(|| PthError::Corrupt("zip archive has no data.pkl: not a PyTorch checkpoint".into()))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Some(order) = entries.get(&format!("{prefix}byteorder")) {
        if order.as_slice() != b"little" {
            return Err(PthError::Unsupported(format!("byte order '{}'", String::from_utf8_lossy(order))));
        }
    }
    let pkl = &entries[&pkl_name];
    let (root, _) = parse_pickle(pkl, 0, &pkl_name)?;
    let specs = find_state_dicts(&root)?;
    build_state_dicts(specs, |id| {
        let name = format!("{prefix}data/{}", id.key);
        entries.get(&name).map(|v| v.as_slice()).ok_or_else(|| {
            PthError::Corrupt(format!("storage '{}' is missing from the archive (no entry {name})", id.key))
        })
    })
}

fn read_zip_entries(bytes: &[u8]) -> Result<HashMap<String, Vec<u8>>> {
    let zip_err = |e: zip::result::ZipError| {
        PthError::Corrupt(format!("zip archive could not be read ({e}); the file may be truncated"))
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zip_err)?;
    let mut entries = HashMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(zip_err)?;
        if file.is_dir() {
            continue;
        }
        let name = file.name().to_string();
        let declared = file.size();
        let mut data = Vec::new();
        (&mut file)
            .take(declared.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| PthError::Corrupt(format!("zip entry {name} could not be read ({e})")))?;
        if data.len() as u64 != declared {
            return Err(PthError::Corrupt(format!(
                "zip entry {name} holds {} bytes but declares {declared}",
                data.len()
            )));
        }
        entries.insert(name, data);
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------------------------
// Pickles.
//
// Candle's `pickle::Stack` cannot be used as is: its SETITEMS inserts each batch of dict items in
// reverse order (so a state dict would come out reversed), its LONG1 overflows on the 80-bit magic
// number, its DICT opcode ignores its items, and it allocates whatever length a string claims.
// The small machine below keeps Candle's `Object` tree (and its conventions: an `OrderedDict`
// call becomes a `Dict`, BUILD of a dict with a dict merges them) but executes the opcodes in
// order and checks every length, stack access, nesting depth and memo expansion against limits.

/// Deepest nesting of containers accepted in a pickle (state dicts need about 10).
const MAX_PICKLE_DEPTH: u32 = 200;
/// Most objects a pickle may create, counting memo copies (memoised objects are cloned).
const MAX_PICKLE_NODES: u64 = 1 << 24;

/// Parses the pickle starting at `start`, returning the object and the offset after its STOP.
fn parse_pickle(bytes: &[u8], start: usize, what: &str) -> Result<(Object, usize)> {
    let mut m = Machine {
        bytes,
        p: start,
        label: format!("{what} pickle"),
        at: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        total: 0,
    };
    let obj = m.run()?;
    Ok((obj, m.p))
}

/// An object on the machine's stack with its nesting depth and size in nodes.
struct Slot {
    obj: Object,
    depth: u32,
    nodes: u64,
}

impl Slot {
    fn leaf(obj: Object) -> Self {
        Slot { obj, depth: 1, nodes: 1 }
    }

    /// A container holding `children`.
    fn of(children: Vec<Slot>, make: impl FnOnce(Vec<Object>) -> Object) -> Self {
        let depth = 1 + children.iter().map(|s| s.depth).max().unwrap_or(0);
        let nodes = children.iter().fold(1u64, |n, s| n.saturating_add(s.nodes));
        Slot { obj: make(children.into_iter().map(|s| s.obj).collect()), depth, nodes }
    }
}

struct Machine<'a> {
    bytes: &'a [u8],
    /// Next byte to read.
    p: usize,
    label: String,
    /// Offset of the opcode being executed, for messages.
    at: usize,
    stack: Vec<Slot>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Slot>,
    total: u64,
}

impl Machine<'_> {
    fn corrupt(&self, msg: impl std::fmt::Display) -> PthError {
        PthError::Corrupt(format!("{}, byte {}: {msg}", self.label, self.at))
    }

    fn unsupported(&self, msg: impl std::fmt::Display) -> PthError {
        PthError::Unsupported(format!("{}, byte {}: {msg}", self.label, self.at))
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let bytes = self.bytes;
        let s = self
            .p
            .checked_add(n)
            .and_then(|end| bytes.get(self.p..end))
            .ok_or_else(|| truncated(&self.label, bytes, self.p, n))?;
        self.p += n;
        Ok(s)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> Result<String> {
        let rest = self.bytes.get(self.p..).unwrap_or(&[]);
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| truncated(&self.label, self.bytes, self.p, rest.len() + 1))?;
        let s = self.text(&rest[..n])?;
        self.p += n + 1;
        Ok(s)
    }

    fn text(&self, b: &[u8]) -> Result<String> {
        std::str::from_utf8(b).map(str::to_string).map_err(|_| self.corrupt("string is not valid UTF-8"))
    }

    fn push(&mut self, slot: Slot) -> Result<()> {
        if slot.depth > MAX_PICKLE_DEPTH {
            return Err(self.unsupported(format!("objects nested deeper than {MAX_PICKLE_DEPTH} levels")));
        }
        self.count(1)?;
        self.stack.push(slot);
        Ok(())
    }

    fn count(&mut self, nodes: u64) -> Result<()> {
        self.total = self.total.saturating_add(nodes);
        if self.total > MAX_PICKLE_NODES {
            return Err(self.unsupported(format!("pickle expands to more than {MAX_PICKLE_NODES} objects")));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Slot> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.corrupt("pickle pops across a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.corrupt("pickle stack underflow"))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Slot>> {
        let mut v = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
        v.reverse();
        Ok(v)
    }

    fn pop_mark(&mut self) -> Result<Vec<Slot>> {
        let m = self.marks.pop().ok_or_else(|| self.corrupt("pickle MARK not found"))?;
        Ok(self.stack.split_off(m))
    }

    fn top(&mut self) -> Result<&mut Slot> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.corrupt("pickle reads across a MARK"));
        }
        match self.stack.last_mut() {
            Some(s) => Ok(s),
            None => Err(PthError::Corrupt(format!("{}, byte {}: pickle stack underflow", self.label, self.at))),
        }
    }

    /// Adds `items` into the container on top of the stack (list or dict).
    fn extend_top(&mut self, items: Vec<Slot>, dict: bool) -> Result<()> {
        if dict && !items.len().is_multiple_of(2) {
            return Err(self.corrupt("dict items are not key/value pairs"));
        }
        let at = self.at;
        let label = self.label.clone();
        let top = self.top()?;
        let depth = items.iter().map(|s| s.depth + 1).max().unwrap_or(0);
        let nodes = items.iter().fold(0u64, |n, s| n.saturating_add(s.nodes));
        let mut objs = items.into_iter().map(|s| s.obj);
        match (&mut top.obj, dict) {
            (Object::List(v), false) => v.extend(objs),
            (Object::Dict(v), true) => {
                while let (Some(k), Some(val)) = (objs.next(), objs.next()) {
                    v.push((k, val));
                }
            }
            (other, _) => {
                return Err(PthError::Corrupt(format!("{label}, byte {at}: cannot add items to a {}", brief(other))))
            }
        }
        top.depth = top.depth.max(depth);
        top.nodes = top.nodes.saturating_add(nodes);
        if top.depth > MAX_PICKLE_DEPTH {
            return Err(self.unsupported(format!("objects nested deeper than {MAX_PICKLE_DEPTH} levels")));
        }
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let top = self.top()?;
        let copy = Slot { obj: top.obj.clone(), depth: top.depth, nodes: top.nodes };
        self.count(copy.nodes)?;
        self.memo.insert(id, copy);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        let slot = self.memo.get(&id).ok_or_else(|| self.corrupt(format!("memo entry {id} used before it is set")))?;
        let copy = Slot { obj: slot.obj.clone(), depth: slot.depth, nodes: slot.nodes };
        self.count(copy.nodes)?;
        self.push(copy)
    }

    /// Runs to STOP and returns the object on top of the stack.
    fn run(&mut self) -> Result<Object> {
        loop {
            self.at = self.p;
            let op = self.take(1)?[0];
            match op {
                // PROTO
                0x80 => {
                    self.take(1)?;
                }
                // FRAME (protocol 4): a length hint only.
                0x95 => {
                    self.take(8)?;
                }
                // GLOBAL
                b'c' => {
                    let module_name = self.line()?;
                    let class_name = self.line()?;
                    self.push(Slot::leaf(Object::Class { module_name, class_name }))?;
                }
                // STACK_GLOBAL (protocol 4)
                0x93 => {
                    let v = self.pop_n(2)?;
                    let mut names = v.into_iter().map(|s| match s.obj {
                        Object::Unicode(s) => Some(s),
                        _ => None,
                    });
                    match (names.next().flatten(), names.next().flatten()) {
                        (Some(module_name), Some(class_name)) => {
                            self.push(Slot::leaf(Object::Class { module_name, class_name }))?
                        }
                        _ => return Err(self.corrupt("STACK_GLOBAL needs two strings")),
                    }
                }
                // BININT1, BININT2, BININT
                b'K' => {
                    let v = self.take(1)?[0] as i32;
                    self.push(Slot::leaf(Object::Int(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?) as i32;
                    self.push(Slot::leaf(Object::Int(v)))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Slot::leaf(Object::Int(v)))?;
                }
                // LONG1: little-endian two's complement of n bytes.
                0x8a => {
                    let n = self.take(1)?[0] as usize;
                    if n > 8 {
                        return Err(self.unsupported(format!("integer of {n} bytes")));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Slot::leaf(Object::Long(v)))?;
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Slot::leaf(Object::Float(v)))?;
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => self.take(1)?[0] as u64,
                        b'X' => u32::from_le_bytes(self.take_array()?) as u64,
                        _ => u64::from_le_bytes(self.take_array()?),
                    };
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    let b = self.take(n)?.to_vec();
                    let s = self.text(&b)?;
                    self.push(Slot::leaf(Object::Unicode(s)))?;
                }
                b'N' => self.push(Slot::leaf(Object::None))?,
                0x88 => self.push(Slot::leaf(Object::Bool(true)))?,
                0x89 => self.push(Slot::leaf(Object::Bool(false)))?,
                b')' => self.push(Slot::leaf(Object::Tuple(vec![])))?,
                b']' => self.push(Slot::leaf(Object::List(vec![])))?,
                b'}' => self.push(Slot::leaf(Object::Dict(vec![])))?,
                // MARK, POP, POP_MARK, DUP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    let copy = Slot { obj: top.obj.clone(), depth: top.depth, nodes: top.nodes };
                    self.count(copy.nodes)?;
                    self.push(copy)?;
                }
                // BINPERSID
                b'Q' => {
                    let v = self.pop_n(1)?;
                    let s = Slot::of(v, |mut o| Object::PersistentLoad(Box::new(o.remove(0))));
                    self.push(s)?;
                }
                // TUPLE, TUPLE1-3, LIST, DICT
                b't' | b'l' | b'd' => {
                    let v = self.pop_mark()?;
                    let s = match op {
                        b't' => Slot::of(v, Object::Tuple),
                        b'l' => Slot::of(v, Object::List),
                        _ => {
                            if !v.len().is_multiple_of(2) {
                                return Err(self.corrupt("dict items are not key/value pairs"));
                            }
                            Slot::of(v, |o| {
                                let mut it = o.into_iter();
                                let mut d = Vec::new();
                                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                    d.push((k, v));
                                }
                                Object::Dict(d)
                            })
                        }
                    };
                    self.push(s)?;
                }
                0x85..=0x87 => {
                    let v = self.pop_n((op - 0x84) as usize)?;
                    self.push(Slot::of(v, Object::Tuple))?;
                }
                // REDUCE, NEWOBJ: callable(*args)
                b'R' | 0x81 => {
                    let v = self.pop_n(2)?;
                    let is_dict = matches!(&v[0].obj, Object::Class { module_name, class_name }
                        if module_name == "collections"
                            && (class_name == "OrderedDict" || class_name == "defaultdict"));
                    let s = if is_dict {
                        Slot::leaf(Object::Dict(vec![]))
                    } else {
                        Slot::of(v, |mut o| {
                            let args = o.pop().unwrap_or(Object::None);
                            let callable = o.pop().unwrap_or(Object::None);
                            Object::Reduce { callable: Box::new(callable), args: Box::new(args) }
                        })
                    };
                    self.push(s)?;
                }
                // BUILD: obj.__setstate__(state); a dict state on a dict merges into it.
                b'b' => {
                    let v = self.pop_n(2)?;
                    let s = Slot::of(v, |mut o| {
                        let state = o.pop().unwrap_or(Object::None);
                        let obj = o.pop().unwrap_or(Object::None);
                        match (obj, state) {
                            (Object::Dict(mut d), Object::Dict(mut s)) => {
                                d.append(&mut s);
                                Object::Dict(d)
                            }
                            (obj, state) => Object::Build { callable: Box::new(obj), args: Box::new(state) },
                        }
                    });
                    self.push(s)?;
                }
                // APPEND, APPENDS, SETITEM, SETITEMS
                b'a' => {
                    let v = self.pop_n(1)?;
                    self.extend_top(v, false)?;
                }
                b'e' => {
                    let v = self.pop_mark()?;
                    self.extend_top(v, false)?;
                }
                b's' => {
                    let v = self.pop_n(2)?;
                    self.extend_top(v, true)?;
                }
                b'u' => {
                    let v = self.pop_mark()?;
                    self.extend_top(v, true)?;
                }
                // BINGET, LONG_BINGET, BINPUT, LONG_BINPUT, MEMOIZE
                b'h' => {
                    let id = self.take(1)?[0] as u32;
                    self.memo_get(id)?;
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.take_array()?);
                    self.memo_get(id)?;
                }
                b'q' => {
                    let id = self.take(1)?[0] as u32;
                    self.memo_put(id)?;
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.take_array()?);
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).map_err(|_| self.corrupt("memo overflow"))?;
                    self.memo_put(id)?;
                }
                // STOP
                b'.' => {
                    return match self.stack.pop() {
                        Some(s) if self.marks.is_empty() => Ok(s.obj),
                        Some(_) => Err(self.corrupt("pickle stops with an open MARK")),
                        None => Err(self.corrupt("pickle stops with an empty stack")),
                    };
                }
                // Other valid opcodes (text protocol 0, bytes, sets, extensions, buffers).
                b'F'
                | b'I'
                | b'L'
                | b'P'
                | b'S'
                | b'T'
                | b'U'
                | b'V'
                | b'g'
                | b'i'
                | b'o'
                | b'p'
                | b'B'
                | b'C'
                | 0x82..=0x84
                | 0x8b
                | 0x8e..=0x92
                | 0x96..=0x98 => return Err(self.unsupported(format!("pickle opcode 0x{op:02x} is not supported"))),
                _ => return Err(self.corrupt(format!("invalid pickle opcode 0x{op:02x}"))),
            }
        }
    }
}

//! Storages and tensors described by the pickled object tree.

use super::{PthError, Result, StateDict};
use candle_core::pickle::Object;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// Element type of a pickled storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StorageKind {
    pub(super) class: &'static str,
    pub(super) elem_size: usize,
    pub(super) dtype: Option<DType>,
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
pub(super) struct StorageId {
    pub(super) key: String,
    pub(super) kind: StorageKind,
    /// For a view: (offset, length) in elements within the root storage `key`.
    pub(super) view: Option<(usize, usize)>,
}

/// A tensor to rebuild from a storage.
#[derive(Debug, Clone)]
pub(super) struct TensorSpec {
    pub(super) storage: StorageId,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

pub(super) fn non_negative(obj: &Object, what: &str) -> Result<usize> {
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
pub(super) fn brief(obj: &Object) -> String {
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
pub(super) fn find_state_dicts(obj: &Object) -> Result<Vec<Vec<(String, TensorSpec)>>> {
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
pub(super) fn collect_storages(obj: &Object, out: &mut HashMap<String, StorageKind>) -> Result<()> {
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

pub(super) fn build_state_dicts<'a>(
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

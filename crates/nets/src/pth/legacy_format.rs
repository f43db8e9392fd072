//! Legacy (pre-1.6) format.

use super::pickle::parse_pickle;
use super::tensors::{brief, build_state_dicts, collect_storages, find_state_dicts, non_negative};
use super::{truncated, PthError, Result, StateDict};
use candle_core::pickle::Object;
use std::collections::HashMap;

pub(super) const PICKLE_PROTO: u8 = 0x80;
/// `torch.serialization.MAGIC_NUMBER`.
const MAGIC_NUMBER: u128 = 0x1950a86a20f9469cfc6c;
/// `torch.serialization.PROTOCOL_VERSION`.
const LEGACY_PROTOCOL_VERSION: usize = 1001;

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

pub(super) fn read_legacy(bytes: &[u8]) -> Result<Vec<StateDict>> {
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

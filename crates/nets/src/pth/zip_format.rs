//! Zip format.

use super::pickle::parse_pickle;
use super::tensors::{build_state_dicts, find_state_dicts};
use super::{PthError, Result, StateDict};
use std::collections::HashMap;
use std::io::Read;

pub(super) fn read_zip(bytes: &[u8]) -> Result<Vec<StateDict>> {
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

pub(super) fn read_zip_entries(bytes: &[u8]) -> Result<HashMap<String, Vec<u8>>> {
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

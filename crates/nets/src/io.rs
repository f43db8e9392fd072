//! Saving and loading networks: safetensors with the architecture inside its metadata, and
//! PyTorch checkpoints given an architecture.

use crate::{pth, spec::NetworkSpec, zoo, NetError, Network, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Metadata key under which the architecture JSON is stored.
pub const ARCH_KEY: &str = "architecture";

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed, then renamed, so a
/// crash never leaves a half-written file under the real name. When any step fails the
/// temporary file is removed, and a `path` that is a folder or a device is refused up front.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    check_not_special(path)?;
    let io = |e| NetError::Io { path: path.to_path_buf(), source: e };
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(io)?;
    let fname = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{fname}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        // Never leave the temporary file behind (it may not exist if creating it failed).
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// The folder a file path lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Refuses an output path that exists and is not a regular file (a folder, a device such as
/// `/dev/null`, a pipe): renaming a file over it would fail or replace something that is not
/// ours.
fn check_not_special(path: &Path) -> Result<()> {
    let bad = |msg: &str| NetError::BadFile { path: path.to_path_buf(), msg: msg.into() };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(bad("is a folder; give a file name (e.g. FOLDER/results.json)")),
        Ok(m) if !m.is_file() => Err(bad("is not a regular file (a device or a pipe); give a file name")),
        _ => Ok(()),
    }
}

/// Checks, before any long work, that [`atomic_write`] can write `path`: the path is not a
/// folder or a device, its folder exists or can be created (it is created), and a file can be
/// created in it (a probe file is created and removed).
pub fn check_writable_file(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(NetError::BadFile { path: path.to_path_buf(), msg: "is not a file name".into() });
    }
    check_not_special(path)?;
    check_writable_dir(parent_dir(path))
}

/// Checks, before any long work, that files can be written into the folder `dir`: it is
/// created if missing (failing if a part of the path is a file), and a probe file is created in
/// it and removed.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    let bad = |msg: String| NetError::BadFile { path: dir.to_path_buf(), msg };
    if dir.exists() && !dir.is_dir() {
        return Err(bad("exists and is not a folder".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create this folder: {e}")))?;
    let probe = dir.join(format!(".write-probe{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(bad(format!("cannot write into this folder: {e}"))),
    }
}

/// Checks that `path` names a model file: it exists, is a regular file (not a folder or a
/// device such as `/dev/null`) and is not empty.
pub fn check_model_file(path: &Path) -> Result<()> {
    let bad = |msg: &str| NetError::BadFile { path: path.to_path_buf(), msg: msg.into() };
    let m = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("model file does not exist"),
        _ => NetError::Io { path: path.to_path_buf(), source: e },
    })?;
    if m.is_dir() {
        return Err(bad("is a folder, not a model file (give a .pth or .safetensors file)"));
    }
    if !m.is_file() {
        return Err(bad("is not a regular file (a device or a pipe), not a model file"));
    }
    if m.len() == 0 {
        return Err(bad("is empty, not a model file"));
    }
    Ok(())
}

/// The name of the first tensor holding a NaN or an infinity, if any. (`t - t` is 0 for
/// every finite entry and NaN otherwise, so its sum is finite exactly when all entries are.)
pub fn first_non_finite(tensors: &[(String, Tensor)]) -> Result<Option<String>> {
    for (name, t) in tensors {
        if !t.dtype().is_float() || t.elem_count() == 0 {
            continue;
        }
        let s = t.sub(t)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !s.is_finite() {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Refuses a checkpoint with a non-finite parameter: no bound computed from it would mean
/// anything.
fn check_finite(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    match first_non_finite(tensors)? {
        None => Ok(()),
        Some(name) => Err(NetError::BadFile {
            path: path.to_path_buf(),
            msg: format!("parameter `{name}` holds NaN or infinite values; refusing to use this model"),
        }),
    }
}

/// Saves the network as safetensors; the architecture goes into the metadata as JSON.
pub fn save_safetensors(net: &Network, path: &Path) -> Result<()> {
    let sd = net.state_dict();
    let mut meta = HashMap::new();
    meta.insert(ARCH_KEY.to_string(), serde_json::to_string(&net.spec()).expect("spec serialises"));
    let bytes = safetensors::serialize(sd.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| NetError::BadFile { path: path.to_path_buf(), msg: format!("cannot serialise: {e}") })?;
    atomic_write(path, &bytes)
}

/// Named tensors in file order, as a state dict holds them.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Reads a safetensors file: its tensors and, if present, the architecture in its metadata.
pub fn read_safetensors(path: &Path) -> Result<(Option<NetworkSpec>, NamedTensors)> {
    let bytes = std::fs::read(path).map_err(|e| NetError::Io { path: path.to_path_buf(), source: e })?;
    let bad = |msg: String| NetError::BadFile { path: path.to_path_buf(), msg };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let spec = match meta.metadata().as_ref().and_then(|m| m.get(ARCH_KEY)) {
        None => None,
        Some(s) => Some(serde_json::from_str(s).map_err(|e| bad(format!("architecture metadata is not valid: {e}")))?),
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(format!("cannot read tensors: {e}")))?;
    let mut v: Vec<(String, Tensor)> = tensors.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((spec, v))
}

/// Whether a model file carries its own architecture (a `.safetensors` file with the description
/// in its metadata); a PyTorch checkpoint never does.
pub fn holds_architecture(path: &Path) -> Result<bool> {
    if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Ok(false);
    }
    check_model_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| NetError::Io { path: path.to_path_buf(), source: e })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| NetError::BadFile {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    Ok(meta.metadata().as_ref().is_some_and(|m| m.contains_key(ARCH_KEY)))
}

/// Loads a model file: `.safetensors` (architecture inside, or given by `arch`) or a PyTorch
/// `.pth` (architecture required: a zoo name or a JSON spec file). A cascade checkpoint gives
/// one network per stage.
pub fn load_models(path: &Path, arch: Option<&str>, dtype: DType, device: &Device) -> Result<Vec<Network>> {
    check_model_file(path)?;
    let arch_spec = arch.map(resolve_arch).transpose()?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "safetensors" {
        let (spec, tensors) = read_safetensors(path)?;
        let spec = arch_spec.or(spec).ok_or_else(|| NetError::BadFile {
            path: path.to_path_buf(),
            msg: "holds no architecture; pass one (e.g. --arch mnist-small)".into(),
        })?;
        check_finite(path, &tensors)?;
        return Ok(vec![Network::from_state_dict(&spec, &tensors, dtype, device)?]);
    }
    let spec = arch_spec.ok_or_else(|| NetError::BadFile {
        path: path.to_path_buf(),
        msg: "a PyTorch checkpoint holds no architecture; pass one (e.g. --arch mnist-small)".into(),
    })?;
    let dicts = pth::read_pth(path)?;
    for sd in &dicts {
        check_finite(path, &sd.tensors)?;
    }
    dicts.iter().map(|sd| Network::from_state_dict(&spec, &sd.tensors, dtype, device)).collect()
}

/// Loads a single model (the first stage of a cascade is an error: use [`load_models`]).
pub fn load_model(path: &Path, arch: Option<&str>, dtype: DType, device: &Device) -> Result<Network> {
    let mut v = load_models(path, arch, dtype, device)?;
    if v.len() != 1 {
        return Err(NetError::BadFile {
            path: path.to_path_buf(),
            msg: format!("holds a cascade of {} models, not one", v.len()),
        });
    }
    Ok(v.remove(0))
}

/// An architecture given as a zoo name or as the path of a JSON description.
pub fn resolve_arch(arch: &str) -> Result<NetworkSpec> {
    let p = PathBuf::from(arch);
    if arch.ends_with(".json") || p.is_file() {
        let s = std::fs::read_to_string(&p).map_err(|e| NetError::Io { path: p.clone(), source: e })?;
        return serde_json::from_str(&s)
            .map_err(|e| NetError::BadFile { path: p, msg: format!("not an architecture description: {e}") });
    }
    zoo::by_name(arch)
}

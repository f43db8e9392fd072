//! Saving and loading networks: safetensors with the architecture inside its metadata, and
//! PyTorch checkpoints given an architecture.

use crate::{pth, spec::NetworkSpec, zoo, NetError, Network, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Metadata key under which the architecture JSON is stored.
pub const ARCH_KEY: &str = "architecture";

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed, then renamed, so a
/// crash never leaves a half-written file under the real name.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e| NetError::Io { path: path.to_path_buf(), source: e };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let fname = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{fname}.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
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

/// Loads a model file: `.safetensors` (architecture inside, or given by `arch`) or a PyTorch
/// `.pth` (architecture required: a zoo name or a JSON spec file). A cascade checkpoint gives
/// one network per stage.
pub fn load_models(path: &Path, arch: Option<&str>, dtype: DType, device: &Device) -> Result<Vec<Network>> {
    let arch_spec = arch.map(resolve_arch).transpose()?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "safetensors" {
        let (spec, tensors) = read_safetensors(path)?;
        let spec = arch_spec.or(spec).ok_or_else(|| NetError::BadFile {
            path: path.to_path_buf(),
            msg: "holds no architecture; pass one (e.g. --arch mnist-small)".into(),
        })?;
        return Ok(vec![Network::from_state_dict(&spec, &tensors, dtype, device)?]);
    }
    let spec = arch_spec.ok_or_else(|| NetError::BadFile {
        path: path.to_path_buf(),
        msg: "a PyTorch checkpoint holds no architecture; pass one (e.g. --arch mnist-small)".into(),
    })?;
    let dicts = pth::read_pth(path)?;
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

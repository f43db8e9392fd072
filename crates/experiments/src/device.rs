//! Choosing where to compute: `cpu` (default) or `cuda[:N]`.

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA needs a build with `--features cuda` (which needs
/// nvcc); without it the error says so.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => bail!("device `{s}` is not cpu, cuda or cuda:N"),
        },
        None => bail!("device `{s}` is not cpu, cuda or cuda:N"),
    };
    if !candle_core::utils::cuda_is_available() {
        bail!("device `{s}`: this build has no CUDA support; rebuild with `--features cuda` on a machine with the CUDA toolkit (see README)");
    }
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(test)]
mod tests {
    use super::parse_device;
    #[test]
    fn parses() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !candle_core::utils::cuda_is_available() {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}

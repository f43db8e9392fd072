//! Parsing of byte sizes such as `4GiB`, `512MiB`, `1e9`.

use anyhow::{bail, Result};

/// Bytes in a size written as a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB).
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.trim().parse().map_err(|_| anyhow::anyhow!("`{s}` is not a size (e.g. 4GiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        u => bail!("unknown size unit `{u}` in `{s}` (use B, KiB, MiB, GiB)"),
    };
    if !(v > 0.0) || !v.is_finite() {
        bail!("size `{s}` must be positive");
    }
    Ok((v * mult) as usize)
}

#[cfg(test)]
mod tests {
    use super::parse_size;
    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("-1GiB").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("lots").is_err());
    }
}

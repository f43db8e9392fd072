//! Byte sizes for `--memory-budget`.
//!
//! A size is a number (whole, decimal or scientific: `4`, `0.5`, `1e9`) followed by an optional
//! unit, case-insensitive, with or without a space: `B`; decimal `KB`, `MB`, `GB`, `TB`
//! (powers of 1000); binary `KiB`, `MiB`, `GiB`, `TiB` and the letters `K`, `M`, `G`, `T`
//! (powers of 1024). The value is rounded down to whole bytes. A memory budget must be at least
//! [`MIN_MEMORY_BUDGET`]: below that the bound would push a handful of columns at a time, and a
//! value like `0.5` is almost surely a unit forgotten, not a wish.

/// The smallest memory budget accepted: 1 MiB.
pub const MIN_MEMORY_BUDGET: usize = 1 << 20;

/// Bytes in a size such as `4GiB`, `512 MiB`, `1e9`, `10TiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    // The unit is the trailing run of letters: `1e9` has none (its `e` is followed by a digit).
    let split = t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (num, unit) = t.split_at(split);
    let num = num.trim();
    let v: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (write e.g. 4GiB, 512MiB or 1e9)"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        u => return Err(format!("unknown unit `{u}` in `{s}` (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")),
    };
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("size `{s}` must be a positive finite number"));
    }
    let bytes = (v * mult).floor();
    if bytes >= usize::MAX as f64 {
        return Err(format!("size `{s}` is too large"));
    }
    Ok(bytes as usize)
}

/// A `--memory-budget`: a size of at least [`MIN_MEMORY_BUDGET`].
pub fn parse_memory_budget(s: &str) -> Result<usize, String> {
    let b = parse_size(s)?;
    if b < MIN_MEMORY_BUDGET {
        return Err(format!(
            "`{s}` is {b} bytes; a memory budget must be at least 1 MiB (a unit missing? e.g. 512MiB, 4GiB)"
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("1e9").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1.5e9B").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("10TiB").unwrap(), 10 << 40);
        assert_eq!(parse_size("2tb").unwrap(), 2_000_000_000_000);
        assert_eq!(parse_size("0.5GiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4g").unwrap(), 4 << 30);
        for bad in ["-1GiB", "0", "4XB", "lots", "", "GiB", "inf", "nan", "1e400", "1e30TiB", "5e"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }
    #[test]
    fn budgets() {
        assert_eq!(parse_memory_budget("1e9").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory_budget("1MiB").unwrap(), MIN_MEMORY_BUDGET);
        let e = parse_memory_budget("0.5").unwrap_err();
        assert!(e.contains("at least 1 MiB"), "{e}");
        assert!(parse_memory_budget("1000KB").is_err());
    }
}

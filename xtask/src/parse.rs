//! Checks of numeric flags at parse time (clap `value_parser` functions), so that a bad value
//! is refused with the flag's name before any data is loaded or any work starts.
//!
//! Every float flag must be finite (Rust's parser accepts `inf` and `nan`, which would
//! otherwise run: an infinite learning rate trains all-inf weights, a NaN step size makes PGD
//! report nonsense), and lie in the range that makes sense for it; every count that means
//! "how many" must be at least 1.

/// A finite number.
fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("must be a finite number, got `{s}`"));
    }
    Ok(v)
}

/// A finite number `≥ 0` (radii, weight decay).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v < 0.0 {
        return Err(format!("must be ≥ 0, got {v}"));
    }
    Ok(v)
}

/// A finite number `> 0` (learning rates, step sizes, gradient-norm limits, largest radii).
pub fn positive(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 {
        return Err(format!("must be > 0, got {v}"));
    }
    Ok(v)
}

/// A failure probability in the open interval `(0, 1)`.
pub fn probability(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(v > 0.0 && v < 1.0) {
        return Err(format!("must be a probability strictly between 0 and 1, got {v}"));
    }
    Ok(v)
}

/// A weight in `[0, 1]` (the mixing weights of the certified losses).
pub fn unit_interval(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("must be in [0, 1], got {v}"));
    }
    Ok(v)
}

/// A momentum factor in `[0, 1)` (1 or more never forgets and diverges).
pub fn momentum(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("must be in [0, 1), got {v}"));
    }
    Ok(v)
}

/// A count that must be at least 1 (examples, batches, epochs, steps, projections).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    let v: usize = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number"))?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// [`at_least_one`] as a `u32`.
pub fn at_least_one_u32(s: &str) -> Result<u32, String> {
    let v = at_least_one(s)?;
    u32::try_from(v).map_err(|_| format!("must be at most {}", u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ranges() {
        assert_eq!(non_negative("0").unwrap(), 0.0);
        assert!(non_negative("-0.1").is_err());
        for bad in ["inf", "-inf", "nan", "NaN", "infinity", "x", ""] {
            assert!(non_negative(bad).is_err(), "{bad}");
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert!(positive("0").is_err());
        assert_eq!(positive("1e-3").unwrap(), 1e-3);
        assert!(probability("0").is_err() && probability("1").is_err());
        assert_eq!(probability("0.01").unwrap(), 0.01);
        assert!(momentum("1").is_err() && momentum("-0.1").is_err());
        assert_eq!(momentum("0").unwrap(), 0.0);
        assert!(at_least_one("0").is_err() && at_least_one("-1").is_err() && at_least_one("1.5").is_err());
        assert_eq!(at_least_one("3").unwrap(), 3);
    }
}

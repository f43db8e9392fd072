//! The CPU features this build was compiled for, checked against the CPU it runs on.
//!
//! `.cargo/config.toml` builds everything for x86-64-v3 (AVX, AVX2, FMA, BMI1/2, F16C, LZCNT,
//! MOVBE on top of SSE4.2): the compiler may use those instructions anywhere, so a CPU without
//! them stops the program with "illegal instruction" at some arbitrary point. Binaries call
//! [`check_cpu`] first and exit with a message naming what is missing instead.

/// The features of the x86-64 levels above the baseline (v2 and v3) that `is_x86_feature_detected!`
/// can test: each is required when the build enables it (`cfg!(target_feature)`), so a baseline
/// build requires none.
#[cfg(target_arch = "x86_64")]
macro_rules! missing {
    ($($f:tt),*) => {{
        let mut v: Vec<&'static str> = Vec::new();
        $(if cfg!(target_feature = $f) && !std::arch::is_x86_feature_detected!($f) { v.push($f); })*
        v
    }};
}

/// The instruction-set extensions this build uses that this CPU lacks (empty: it can run).
pub fn missing_cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        missing!(
            "sse3",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "popcnt",
            "cmpxchg16b",
            "avx",
            "avx2",
            "bmi1",
            "bmi2",
            "f16c",
            "fma",
            "lzcnt",
            "movbe",
            "xsave"
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// `Err(message)` when this CPU cannot run this build: the message names the missing extensions
/// and how to build for this CPU instead.
pub fn check_cpu() -> Result<(), String> {
    let missing = missing_cpu_features();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this build uses CPU instructions this processor does not have: {}. It was compiled for \
         x86-64-v3 (AVX2 + FMA, x86-64 CPUs from 2013 on; set in .cargo/config.toml). To run on this \
         CPU, build for it instead: RUSTFLAGS=\"-C target-cpu=native\" cargo xtask ... (slower \
         kernels without AVX2)",
        missing.join(", ")
    ))
}

/// For the first line of a binary's `main`: prints [`check_cpu`]'s message to stderr and exits
/// with status 1 when this CPU cannot run this build.
pub fn exit_if_unsupported() {
    if let Err(msg) = check_cpu() {
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

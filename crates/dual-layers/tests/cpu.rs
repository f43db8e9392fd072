//! The CPU check of the binaries (`dual_layers::cpu`).

use dual_layers::cpu::{check_cpu, missing_cpu_features};

/// This test binary is built like the others and is running, so the CPU has every extension the
/// build uses: the check must find nothing missing (no false alarm).
#[test]
fn the_running_cpu_has_what_the_build_uses() {
    assert_eq!(missing_cpu_features(), Vec::<&str>::new());
    assert!(check_cpu().is_ok());
}

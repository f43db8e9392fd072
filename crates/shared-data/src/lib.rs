//! Where tests find the data that is not in the repository — one place for every test.
//!
//! * The `shared` folder beside the checkout (`../shared` from the workspace root): the papers'
//!   models and the reference values computed with PyTorch. [`SHARED_DIR_VAR`]
//!   (`CONVEX_SHARED_DIR`) names another folder.
//! * The Fashion-MNIST IDX files of Debian's `dataset-fashion-mnist` package
//!   (`/usr/share/datasets/fashion-mnist`, installed by `.ci/run`). [`FASHION_MNIST_DIR_VAR`]
//!   (`CONVEX_FASHION_MNIST_DIR`) names another folder.
//!
//! A test that needs such data asks for it here, e.g.
//!
//! ```no_run
//! let Some(model) = shared_data::shared_path("models/fashion_mnist_small_eps0.1.pth") else { return };
//! ```
//!
//! When the data is there the call returns its path. When it is missing the call **panics**, so
//! the test fails with a message naming what is missing and how to get it — a conformance test
//! must never pass without checking anything. Only a run that opts out explicitly with
//! [`SKIP_VAR`]`=1` (`CONVEX_SKIP_SHARED=1`) gets `None` instead; the skip is then written to
//! the process's standard error directly, past the test harness's output capture, so it shows
//! in the output of every run, passing or not.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The variable naming the shared folder (default: `shared` beside the checkout).
pub const SHARED_DIR_VAR: &str = "CONVEX_SHARED_DIR";
/// The variable naming the Fashion-MNIST IDX folder (default: [`DEBIAN_FASHION_MNIST`]).
pub const FASHION_MNIST_DIR_VAR: &str = "CONVEX_FASHION_MNIST_DIR";
/// Set to `1` to skip, visibly, the tests whose data is missing instead of failing them.
pub const SKIP_VAR: &str = "CONVEX_SKIP_SHARED";
/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The four Fashion-MNIST files, each present gzipped (`.gz`) or not.
const FASHION_MNIST_FILES: [&str; 4] =
    ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"];

/// The shared folder: `$CONVEX_SHARED_DIR` if set, else `shared` beside the workspace checkout.
/// Whether it exists is not checked here.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os(SHARED_DIR_VAR) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_shared_dir(),
    }
}

/// `shared` beside the checkout: this crate is `crates/shared-data` of the workspace.
fn default_shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// Whether this run opted out of the tests whose data is missing (`CONVEX_SKIP_SHARED` set to
/// anything but empty or `0`).
pub fn skip_requested() -> bool {
    std::env::var_os(SKIP_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The file or folder `rel` of the shared folder. Panics with instructions when it is missing,
/// unless the run opted out ([`skip_requested`]): then prints the skip and returns `None`.
pub fn shared_path(rel: &str) -> Option<PathBuf> {
    let dir = shared_dir();
    let path = dir.join(rel);
    if path.exists() {
        return Some(path);
    }
    let source = match std::env::var_os(SHARED_DIR_VAR) {
        Some(v) if !v.is_empty() => format!("{SHARED_DIR_VAR}={}", v.to_string_lossy()),
        _ => format!("the default, `shared` beside the checkout ({SHARED_DIR_VAR} is not set)"),
    };
    let what = if dir.is_dir() {
        format!("{} is missing from the shared data folder {} (from {source})", rel, dir.display())
    } else {
        format!("the shared data folder {} does not exist (from {source}); this test needs {rel} in it", dir.display())
    };
    let how = format!(
        "put the project's `shared` folder (models and PyTorch reference values, see its README.md) beside the \
         checkout, or point {SHARED_DIR_VAR} at a copy of it"
    );
    missing(&what, &how)
}

/// The folder holding the four Fashion-MNIST IDX files (gzipped or not):
/// `$CONVEX_FASHION_MNIST_DIR` if set, else Debian's [`DEBIAN_FASHION_MNIST`]. Panics with
/// instructions when a file is missing, unless the run opted out ([`skip_requested`]): then
/// prints the skip and returns `None`.
pub fn fashion_mnist_dir() -> Option<PathBuf> {
    let (dir, source) = match std::env::var_os(FASHION_MNIST_DIR_VAR) {
        Some(v) if !v.is_empty() => (PathBuf::from(&v), format!("{FASHION_MNIST_DIR_VAR}={}", v.to_string_lossy())),
        _ => (PathBuf::from(DEBIAN_FASHION_MNIST), format!("the default ({FASHION_MNIST_DIR_VAR} is not set)")),
    };
    let absent: Vec<&str> = FASHION_MNIST_FILES
        .into_iter()
        .filter(|f| !dir.join(f).is_file() && !dir.join(format!("{f}.gz")).is_file())
        .collect();
    if absent.is_empty() {
        return Some(dir);
    }
    let what =
        format!("the Fashion-MNIST IDX files {} are missing from {} (from {source})", absent.join(", "), dir.display());
    let how = format!(
        "install Debian's package (`apt-get install dataset-fashion-mnist`, as .ci/run does), or point \
         {FASHION_MNIST_DIR_VAR} at a folder holding the four IDX files (`cargo xtask download fashion-mnist` \
         writes them to data/fashion-mnist)"
    );
    missing(&what, &how)
}

/// Fails the test (panics) with `what` and `how`, or, when the run opted out, prints the skip
/// straight to the process's stderr (`eprintln!` would be captured, hence hidden, by the test
/// harness for a passing test) and returns `None`.
fn missing(what: &str, how: &str) -> Option<PathBuf> {
    missing_to(what, how, &mut std::io::stderr())
}

/// [`missing`], writing the skip to `out`.
fn missing_to(what: &str, how: &str, out: &mut dyn Write) -> Option<PathBuf> {
    let test = std::thread::current().name().filter(|n| *n != "main").map(|n| format!(" {n}")).unwrap_or_default();
    if skip_requested() {
        // One write, so the line is not torn up by the harness's own output.
        let _ = out.write_all(format!("SKIPPED{test} ({SKIP_VAR} is set): {what}\n").as_bytes());
        return None;
    }
    panic!("test data missing: {what}.\nTo get it: {how}.\nTo skip such tests explicitly instead, set {SKIP_VAR}=1.")
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the environment, so no other test of this crate races with it.
    #[test]
    fn finds_skips_and_fails() {
        let tmp = std::env::temp_dir().join(format!("shared-data-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("models")).unwrap();
        std::fs::write(tmp.join("models/a.pth"), b"x").unwrap();
        std::env::set_var(SHARED_DIR_VAR, &tmp);
        std::env::remove_var(SKIP_VAR);
        assert_eq!(shared_dir(), tmp);
        assert_eq!(shared_path("models/a.pth"), Some(tmp.join("models/a.pth")));
        assert_eq!(shared_path("models"), Some(tmp.join("models")));

        let err = std::panic::catch_unwind(|| shared_path("models/b.pth")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("models/b.pth") && msg.contains(SHARED_DIR_VAR) && msg.contains(SKIP_VAR), "{msg}");

        std::env::set_var(SHARED_DIR_VAR, tmp.join("nowhere"));
        let err = std::panic::catch_unwind(|| shared_path("models/a.pth")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("does not exist") && msg.contains("nowhere"), "{msg}");

        std::env::set_var(FASHION_MNIST_DIR_VAR, &tmp);
        let err = std::panic::catch_unwind(fashion_mnist_dir).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("t10k-images-idx3-ubyte") && msg.contains("dataset-fashion-mnist"), "{msg}");
        for f in FASHION_MNIST_FILES {
            std::fs::write(tmp.join(format!("{f}.gz")), b"x").unwrap();
        }
        assert_eq!(fashion_mnist_dir(), Some(tmp.clone()));

        // Opted out: `None` and one line saying what was skipped (here into a buffer, so this
        // test's own run prints no skip).
        std::env::set_var(SKIP_VAR, "1");
        let mut out = Vec::new();
        assert_eq!(missing_to("X is missing", "get X", &mut out), None);
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("SKIPPED") && line.contains(SKIP_VAR) && line.contains("X is missing"), "{line}");
        std::env::set_var(SKIP_VAR, "0");
        assert!(std::panic::catch_unwind(|| shared_path("models/a.pth")).is_err());

        std::env::remove_var(SKIP_VAR);
        std::env::remove_var(SHARED_DIR_VAR);
        std::env::remove_var(FASHION_MNIST_DIR_VAR);
        std::fs::remove_dir_all(&tmp).ok();
    }
}

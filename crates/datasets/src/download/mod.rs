//! Data set downloader behind `cargo xtask download NAME`.
//!
//! Each file of a [`DatasetSource`] is fetched from the first mirror that serves it
//! (`BASE_URL + file`), into `NAME.part`; an interrupted transfer is continued with an HTTP
//! Range request, on a later attempt or a later run. Only a `.part` whose checksum matches is
//! renamed (atomically) to its final name, so a final name never holds a partial or corrupt
//! file. A file already present with the right checksum is not fetched again. `--from DIR`
//! ([`DownloadOptions::from`]) imports copies a user already has instead, with the same
//! verification. Archives (CIFAR-10's tar.gz, HAR's zip) are then unpacked next to them.
//!
//! Everything here is testable without the network: [`DownloadOptions::mirrors`] overrides the
//! registry's mirrors (the tests serve files from `http://127.0.0.1:PORT/`).

mod fetch;
mod hash;
mod registry;
mod unpack;

pub use hash::{gunzipped_sha256, hash_bytes, hash_file, hash_reader, Digests};
pub use registry::{find_dataset, registry};

use fetch::FetchError;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a downloaded archive is unpacked into the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// Kept as it is (the IDX `.gz` files are read compressed).
    None,
    /// A gzip-compressed tar archive.
    TarGz,
    /// A zip archive.
    Zip,
}

/// One file of a data set, and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Name in the data directory (and, URL-encoded, on the mirrors).
    pub name: String,
    /// Path on the mirrors when it differs from `name` (already URL-encoded).
    pub remote_path: Option<String>,
    /// Published MD5 of the file (lower-case hex).
    pub md5: Option<String>,
    /// Published SHA-256 of the file.
    pub sha256: Option<String>,
    /// SHA-256 of the decompressed content of a `.gz` file: accepts recompressed copies.
    pub gunzipped_sha256: Option<String>,
    /// What to do with the file once verified.
    pub unpack: Unpack,
}

impl RemoteFile {
    /// A file with no checksum yet, kept as it is.
    pub fn new(name: impl Into<String>) -> Self {
        RemoteFile {
            name: name.into(),
            remote_path: None,
            md5: None,
            sha256: None,
            gunzipped_sha256: None,
            unpack: Unpack::None,
        }
    }
    pub fn md5(mut self, hex: impl Into<String>) -> Self {
        self.md5 = Some(hex.into().to_ascii_lowercase());
        self
    }
    pub fn sha256(mut self, hex: impl Into<String>) -> Self {
        self.sha256 = Some(hex.into().to_ascii_lowercase());
        self
    }
    pub fn gunzipped_sha256(mut self, hex: impl Into<String>) -> Self {
        self.gunzipped_sha256 = Some(hex.into().to_ascii_lowercase());
        self
    }
    pub fn remote_path(mut self, path: impl Into<String>) -> Self {
        self.remote_path = Some(path.into());
        self
    }
    pub fn unpack(mut self, unpack: Unpack) -> Self {
        self.unpack = unpack;
        self
    }
    /// Whether any published checksum can verify this file.
    pub fn has_checksum(&self) -> bool {
        self.md5.is_some() || self.sha256.is_some() || self.gunzipped_sha256.is_some()
    }
    /// The file's URL on a mirror (a base URL; a missing trailing `/` is added).
    pub fn url(&self, mirror: &str) -> String {
        let path = self.remote_path.clone().unwrap_or_else(|| encode_path(&self.name));
        if mirror.ends_with('/') {
            format!("{mirror}{path}")
        } else {
            format!("{mirror}/{path}")
        }
    }
}

/// Percent-encodes what may not stand in a URL path segment (e.g. the spaces of HAR's zip).
fn encode_path(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A data set: its files and the base URLs that serve them, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSource {
    /// Canonical name (`cargo xtask download NAME`, default folder `data/NAME`).
    pub name: String,
    /// Other accepted spellings.
    pub aliases: Vec<String>,
    pub description: String,
    pub files: Vec<RemoteFile>,
    /// Base URLs, standard location first.
    pub mirrors: Vec<String>,
}

/// Knobs of [`download_dataset`].
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Base URLs to use instead of the data set's own.
    pub mirrors: Option<Vec<String>>,
    /// Import the files from this folder (copy + verify) instead of downloading them.
    pub from: Option<PathBuf>,
    /// Unpack archives after verification.
    pub unpack: bool,
    /// Per mirror: attempts that make no progress before the next mirror is tried (an attempt
    /// that received bytes does not count, up to 4× this many attempts in all).
    pub attempts_per_mirror: u32,
    pub connect_timeout: Duration,
    /// Longest wait for the answer or for the next bytes of the body.
    pub read_timeout: Duration,
    /// Pause before retrying the same mirror.
    pub retry_delay: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            mirrors: None,
            from: None,
            unpack: true,
            attempts_per_mirror: 3,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retry_delay: Duration::from_secs(2),
        }
    }
}

/// What happens, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A transfer (download attempt or import copy) starts at byte `offset` of `total`.
    Transfer { file: &'a str, url: &'a str, offset: u64, total: Option<u64> },
    /// `done` bytes of the file are in its `.part` now.
    Bytes { file: &'a str, done: u64, total: Option<u64> },
    /// The file is being checked.
    Verifying { file: &'a str },
    /// The file is in place (downloaded, imported or already there).
    Done { file: &'a str, check: Check },
    /// Something the user should know that does not stop the run (a mirror failed, a file has
    /// no known checksum, a present file was bad).
    Warning(&'a str),
    /// An archive is being unpacked.
    Unpacking { file: &'a str },
}

/// How a file was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Md5,
    Sha256,
    /// The SHA-256 of the decompressed content matched (a recompressed copy of the same data).
    GunzippedSha256,
    /// No checksum is published; the SHA-256 recorded by an earlier run in `SHA256SUMS` matched.
    Recorded,
    /// No checksum is known: accepted with a warning, its SHA-256 recorded in `SHA256SUMS`.
    Unverified,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::Md5 => "MD5 ok",
            Check::Sha256 => "SHA-256 ok",
            Check::GunzippedSha256 => "SHA-256 of decompressed content ok",
            Check::Recorded => "recorded SHA-256 ok",
            Check::Unverified => "UNVERIFIED (no known checksum)",
        })
    }
}

/// Where a file in the data directory came from in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// It was there already with the right checksum: nothing was fetched.
    AlreadyPresent,
    /// Downloaded from `url`, the last attempt continuing a `.part` at byte `resumed_from`.
    Downloaded { url: String, resumed_from: u64 },
    /// Copied from a user's file (`--from`).
    Imported { from: PathBuf },
}

/// One file's result.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub name: String,
    pub path: PathBuf,
    pub origin: Origin,
    pub check: Check,
    /// SHA-256 of the file as it is now in the data directory.
    pub sha256: String,
    /// Top-level paths unpacked from it (empty for files that are not archives).
    pub unpacked: Vec<PathBuf>,
}

/// Result of [`download_dataset`].
#[derive(Debug, Clone)]
pub struct Report {
    pub dataset: String,
    pub dir: PathBuf,
    pub files: Vec<FileReport>,
}

/// Everything that can go wrong, naming the URL or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("unknown data set `{name}` (known: {known})")]
    UnknownDataset { name: String, known: String },
    #[error("{url}: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: {message}")]
    Transfer { url: String, message: String },
    #[error("checksum mismatch for {file} (from {origin}): expected {algo} {expected}, got {actual}")]
    ChecksumMismatch { file: PathBuf, origin: String, algo: &'static str, expected: String, actual: String },
    #[error("{file}: could not be downloaded from any mirror:\n  {}", list(.errors))]
    AllMirrorsFailed { file: String, errors: Vec<DownloadError> },
    #[error("{}: file to import not found", .path.display())]
    MissingImport { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: bad archive: {message}", .path.display())]
    Archive { path: PathBuf, message: String },
    #[error("no mirror to download {file} from")]
    NoMirrors { file: String },
}

fn list(errors: &[DownloadError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  ")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io { path: path.to_path_buf(), source }
}

/// The registry entry for `name`, or an error listing the known ones.
pub fn dataset(name: &str) -> Result<DatasetSource, DownloadError> {
    find_dataset(name).ok_or_else(|| DownloadError::UnknownDataset {
        name: name.to_string(),
        known: registry().iter().map(|d| d.name.clone()).collect::<Vec<_>>().join(", "),
    })
}

/// Default folder of a data set: `data/NAME`.
pub fn default_dir(src: &DatasetSource) -> PathBuf {
    PathBuf::from("data").join(&src.name)
}

/// Name of the file (in the data directory) that records the SHA-256 of every file fetched.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// Reads `SHA256SUMS` (`HEX  NAME` lines) of a data directory; missing or odd lines are skipped.
pub fn read_sums(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Ok(text) = fs::read_to_string(dir.join(SUMS_FILE)) {
        for line in text.lines() {
            if let Some((hex, name)) = line.split_once("  ") {
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    m.insert(name.to_string(), hex.to_ascii_lowercase());
                }
            }
        }
    }
    m
}

fn write_sums(dir: &Path, sums: &BTreeMap<String, String>) -> Result<(), DownloadError> {
    let path = dir.join(SUMS_FILE);
    let tmp = dir.join(format!("{SUMS_FILE}.part"));
    let text: String = sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    fs::write(&tmp, text).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Fetches (or imports), verifies and unpacks every file of `src` into `dest`.
///
/// Stops at the first file that cannot be had; files finished before it stay (verified).
pub fn download_dataset(
    src: &DatasetSource,
    dest: &Path,
    opts: &DownloadOptions,
    progress: &dyn Fn(&Event),
) -> Result<Report, DownloadError> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mirrors = opts.mirrors.clone().unwrap_or_else(|| src.mirrors.clone());
    let agent = fetch::agent(opts.connect_timeout, opts.read_timeout);
    let mut sums = read_sums(dest);
    let mut files = Vec::new();
    for file in &src.files {
        let recorded = if file.has_checksum() { None } else { sums.get(&file.name).cloned() };
        let rep = obtain(file, dest, &mirrors, recorded.as_deref(), opts, &agent, progress)?;
        if rep.check == Check::Unverified {
            progress(&Event::Warning(&format!(
                "{}: no checksum is known for this file; accepted unverified, SHA-256 {} recorded in {}",
                rep.path.display(),
                rep.sha256,
                dest.join(SUMS_FILE).display()
            )));
        }
        progress(&Event::Done { file: &file.name, check: rep.check });
        sums.insert(file.name.clone(), rep.sha256.clone());
        write_sums(dest, &sums)?;
        files.push(rep);
    }
    if opts.unpack {
        let protected: Vec<String> = src.files.iter().map(|f| f.name.clone()).chain([SUMS_FILE.to_string()]).collect();
        for (file, rep) in src.files.iter().zip(files.iter_mut()) {
            if file.unpack == Unpack::None {
                continue;
            }
            progress(&Event::Unpacking { file: &file.name });
            match unpack::unpack(&rep.path, file.unpack, dest, &rep.sha256, &protected) {
                Ok((entries, _fresh)) => rep.unpacked = entries,
                Err(e) => {
                    // With no published checksum the archive itself may be what is wrong:
                    // forget it so that the next run fetches it again.
                    if matches!(rep.check, Check::Unverified | Check::Recorded) {
                        let _ = fs::remove_file(&rep.path);
                        sums.remove(&file.name);
                        write_sums(dest, &sums)?;
                    }
                    return Err(e);
                }
            }
        }
    }
    Ok(Report { dataset: src.name.clone(), dir: dest.to_path_buf(), files })
}

fn obtain(
    file: &RemoteFile,
    dest: &Path,
    mirrors: &[String],
    recorded: Option<&str>,
    opts: &DownloadOptions,
    agent: &ureq::Agent,
    progress: &dyn Fn(&Event),
) -> Result<FileReport, DownloadError> {
    let path = dest.join(&file.name);
    let report = |origin, v: hash::Verified| FileReport {
        name: file.name.clone(),
        path: path.clone(),
        origin,
        check: v.check,
        sha256: v.sha256,
        unpacked: Vec::new(),
    };
    if path.is_file() {
        progress(&Event::Verifying { file: &file.name });
        match hash::verify(file, &path, recorded).map_err(io_err(&path))? {
            Ok(v) => return Ok(report(Origin::AlreadyPresent, v)),
            Err(m) => {
                progress(&Event::Warning(&format!(
                    "{} is present but wrong ({} expected {}, got {}): fetching it again",
                    path.display(),
                    m.algo,
                    m.expected,
                    m.actual
                )));
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
    }
    let part = dest.join(format!("{}.part", file.name));
    if let Some(from) = &opts.from {
        let src = from.join(&file.name);
        let v = import(file, &src, &part, progress)?;
        fs::rename(&part, &path).map_err(io_err(&path))?;
        return Ok(report(Origin::Imported { from: src }, v));
    }
    if mirrors.is_empty() {
        return Err(DownloadError::NoMirrors { file: file.name.clone() });
    }
    let (url, resumed_from, v) = download(file, &path, &part, mirrors, opts, agent, progress)?;
    fs::rename(&part, &path).map_err(io_err(&path))?;
    Ok(report(Origin::Downloaded { url, resumed_from }, v))
}

/// Copies `src` into `part` and verifies it; a wrong copy is removed.
fn import(
    file: &RemoteFile,
    src: &Path,
    part: &Path,
    progress: &dyn Fn(&Event),
) -> Result<hash::Verified, DownloadError> {
    if !src.is_file() {
        return Err(DownloadError::MissingImport { path: src.to_path_buf() });
    }
    let mut input = File::open(src).map_err(io_err(src))?;
    let total = input.metadata().ok().map(|m| m.len());
    let shown = src.display().to_string();
    progress(&Event::Transfer { file: &file.name, url: &shown, offset: 0, total });
    let mut out = File::create(part).map_err(io_err(part))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DownloadError::Io { path: src.to_path_buf(), source: e }),
        };
        out.write_all(&buf[..n]).map_err(io_err(part))?;
        done += n as u64;
        progress(&Event::Bytes { file: &file.name, done, total });
    }
    out.sync_all().map_err(io_err(part))?;
    drop(out);
    progress(&Event::Verifying { file: &file.name });
    match hash::verify(file, part, None).map_err(io_err(part))? {
        Ok(v) => Ok(v),
        Err(m) => {
            let _ = fs::remove_file(part);
            Err(DownloadError::ChecksumMismatch {
                file: src.to_path_buf(),
                origin: shown,
                algo: m.algo,
                expected: m.expected,
                actual: m.actual,
            })
        }
    }
}

fn retryable_status(s: u16) -> bool {
    s == 408 || s == 429 || s >= 500
}

fn part_len(part: &Path) -> u64 {
    fs::metadata(part).map(|m| m.len()).unwrap_or(0)
}

/// Tries the mirrors in order until one yields a `.part` that verifies. Returns the URL, the
/// offset the last transfer continued from, and the verification.
fn download(
    file: &RemoteFile,
    path: &Path,
    part: &Path,
    mirrors: &[String],
    opts: &DownloadOptions,
    agent: &ureq::Agent,
    progress: &dyn Fn(&Event),
) -> Result<(String, u64, hash::Verified), DownloadError> {
    let mut errors = Vec::new();
    let max_stalls = opts.attempts_per_mirror.max(1);
    let max_tries = max_stalls * 4;
    for mirror in mirrors {
        let url = file.url(mirror);
        let (mut stalls, mut tries) = (0, 0);
        while stalls < max_stalls && tries < max_tries {
            if tries > 0 {
                std::thread::sleep(opts.retry_delay);
            }
            tries += 1;
            let before = part_len(part);
            let outcome = fetch::fetch_to(agent, &url, part, &file.name, progress);
            let gained = part_len(part) > before || (outcome.is_ok() && before == 0);
            if !gained {
                stalls += 1;
            }
            let err = match outcome {
                Ok(resumed_from) => {
                    progress(&Event::Verifying { file: &file.name });
                    match hash::verify(file, part, None).map_err(io_err(part))? {
                        Ok(v) => return Ok((url, resumed_from, v)),
                        Err(m) => {
                            let _ = fs::remove_file(part);
                            let e = mismatch_error(path, &url, m);
                            progress(&Event::Warning(&e.to_string()));
                            errors.push(e);
                            if resumed_from > 0 {
                                // The earlier bytes may be what was wrong: once more from scratch.
                                stalls = stalls.max(max_stalls - 1);
                                continue;
                            }
                            break;
                        }
                    }
                }
                Err(FetchError::RangeNotSatisfiable) => {
                    // The `.part` is as long as the file (or longer): keep it only if it verifies.
                    if file.has_checksum() {
                        if let Ok(v) = hash::verify(file, part, None).map_err(io_err(part))? {
                            return Ok((url, before, v));
                        }
                    }
                    let _ = fs::remove_file(part);
                    DownloadError::Transfer {
                        url: url.clone(),
                        message: format!("HTTP status 416 for a resume at byte {before}; starting over"),
                    }
                }
                Err(FetchError::Status(status)) => {
                    let e = DownloadError::HttpStatus { url: url.clone(), status };
                    if !retryable_status(status) {
                        progress(&Event::Warning(&e.to_string()));
                        errors.push(e);
                        break;
                    }
                    e
                }
                Err(FetchError::Transfer(message)) => DownloadError::Transfer { url: url.clone(), message },
                Err(FetchError::Local(source)) => return Err(DownloadError::Io { path: part.to_path_buf(), source }),
            };
            progress(&Event::Warning(&err.to_string()));
            errors.push(err);
        }
    }
    Err(DownloadError::AllMirrorsFailed { file: file.name.clone(), errors })
}

fn mismatch_error(path: &Path, url: &str, m: hash::Mismatch) -> DownloadError {
    DownloadError::ChecksumMismatch {
        file: path.to_path_buf(),
        origin: url.to_string(),
        algo: m.algo,
        expected: m.expected,
        actual: m.actual,
    }
}

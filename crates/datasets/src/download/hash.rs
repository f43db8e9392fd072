//! Checksums of files: MD5 and SHA-256 in one pass, and SHA-256 of gzip content.

use super::{Check, RemoteFile};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Digests of a file's bytes, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub md5: String,
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `r` to its end and returns the MD5 and SHA-256 of what it read.
pub fn hash_reader(mut r: impl Read) -> io::Result<Digests> {
    let mut md5 = Md5::new();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
    }
    Ok(Digests { md5: hex(&md5.finalize()), sha256: hex(&sha.finalize()) })
}

/// MD5 and SHA-256 of a file.
pub fn hash_file(path: &Path) -> io::Result<Digests> {
    hash_reader(File::open(path)?)
}

/// MD5 and SHA-256 of bytes in memory.
pub fn hash_bytes(bytes: &[u8]) -> Digests {
    hash_reader(bytes).expect("reading from memory does not fail")
}

/// SHA-256 of the decompressed content of a gzip file (all members).
pub fn gunzipped_sha256(path: &Path) -> io::Result<String> {
    let d = hash_reader(flate2::read::MultiGzDecoder::new(io::BufReader::new(File::open(path)?)))?;
    Ok(d.sha256)
}

/// A failed verification: which checksum, what was expected and what the file has.
#[derive(Debug, Clone)]
pub(crate) struct Mismatch {
    pub algo: &'static str,
    pub expected: String,
    pub actual: String,
}

/// Outcome of checking a file against what is known about it.
pub(crate) struct Verified {
    pub check: Check,
    pub sha256: String,
}

/// Checks `path` against the checksums of `file`: every published checksum must match; when
/// one does not (or none is published) the SHA-256 of the gzip content, if known, decides.
/// With no checksum at all, `recorded` (a SHA-256 from an earlier run) decides, else the file
/// is accepted as [`Check::Unverified`] if it at least has the format its unpacking expects.
pub(crate) fn verify(file: &RemoteFile, path: &Path, recorded: Option<&str>) -> io::Result<Result<Verified, Mismatch>> {
    let d = hash_file(path)?;
    let mut matched = None;
    let mut mismatch = None;
    if let Some(e) = &file.sha256 {
        if e.eq_ignore_ascii_case(&d.sha256) {
            matched = Some(Check::Sha256);
        } else {
            mismatch = Some(Mismatch { algo: "SHA-256", expected: e.clone(), actual: d.sha256.clone() });
        }
    }
    if let Some(e) = &file.md5 {
        if e.eq_ignore_ascii_case(&d.md5) {
            matched.get_or_insert(Check::Md5);
        } else if mismatch.is_none() {
            mismatch = Some(Mismatch { algo: "MD5", expected: e.clone(), actual: d.md5.clone() });
        }
    }
    if let (Some(check), None) = (matched, &mismatch) {
        return Ok(Ok(Verified { check, sha256: d.sha256 }));
    }
    if let Some(e) = &file.gunzipped_sha256 {
        // A file that is not gzip at all simply does not match.
        let actual = gunzipped_sha256(path).unwrap_or_else(|err| format!("(not gzip: {err})"));
        if e.eq_ignore_ascii_case(&actual) {
            return Ok(Ok(Verified { check: Check::GunzippedSha256, sha256: d.sha256 }));
        }
        if mismatch.is_none() {
            mismatch = Some(Mismatch { algo: "SHA-256 of gunzipped content", expected: e.clone(), actual });
        }
    }
    if let Some(m) = mismatch {
        return Ok(Err(m));
    }
    match recorded {
        Some(r) if r.eq_ignore_ascii_case(&d.sha256) => Ok(Ok(Verified { check: Check::Recorded, sha256: d.sha256 })),
        Some(r) => Ok(Err(Mismatch { algo: "recorded SHA-256", expected: r.to_string(), actual: d.sha256 })),
        // Nothing to compare with: at least an archive must look like one, so that an error
        // page served with status 200 is not taken for the data.
        None => match super::unpack::plausible(file.unpack, path) {
            Ok(()) => Ok(Ok(Verified { check: Check::Unverified, sha256: d.sha256 })),
            Err(why) => Ok(Err(Mismatch {
                algo: "format",
                expected: super::unpack::kind_name(file.unpack).to_string(),
                actual: why,
            })),
        },
    }
}

//! Unpacking of verified archives into the data directory.
//!
//! An archive is unpacked into a hidden temporary folder first; only when that succeeded are
//! its top-level entries moved into place, and a marker (`.NAME.unpacked`, holding the
//! archive's SHA-256 and the entries) lets later runs skip the work.

use super::{DownloadError, Unpack};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io { path: path.to_path_buf(), source }
}

fn archive_err(path: &Path, message: impl std::fmt::Display) -> DownloadError {
    DownloadError::Archive { path: path.to_path_buf(), message: message.to_string() }
}

/// Unpacks `archive` into `dest` unless the marker says this exact archive already was.
/// `protected` names entries of `dest` that an archive may not replace (the downloaded files).
/// Returns the top-level paths the archive provides and whether it was unpacked now.
pub(crate) fn unpack(
    archive: &Path,
    kind: Unpack,
    dest: &Path,
    archive_sha256: &str,
    protected: &[String],
) -> Result<(Vec<PathBuf>, bool), DownloadError> {
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let marker = dest.join(format!(".{name}.unpacked"));
    if let Ok(text) = fs::read_to_string(&marker) {
        let mut lines = text.lines();
        if lines.next() == Some(archive_sha256) {
            let entries: Vec<PathBuf> = lines.filter(|l| !l.is_empty()).map(|l| dest.join(l)).collect();
            if !entries.is_empty() && entries.iter().all(|p| p.exists()) {
                return Ok((entries, false));
            }
        }
    }
    let tmp = dest.join(format!(".{name}.unpack-tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let res = match kind {
        Unpack::None => Ok(()),
        Unpack::TarGz => untar_gz(archive, &tmp),
        Unpack::Zip => unzip(archive, &tmp),
    };
    if let Err(e) = res {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let mut top: Vec<String> = Vec::new();
    for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
        let entry = entry.map_err(io_err(&tmp))?;
        top.push(entry.file_name().to_string_lossy().into_owned());
    }
    top.sort();
    if top.is_empty() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(archive_err(archive, "archive holds no files"));
    }
    if let Some(clash) = top.iter().find(|t| protected.contains(t) || t.ends_with(".part") || t.starts_with(".")) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(archive_err(archive, format!("archive entry `{clash}` would replace a downloaded file")));
    }
    let _ = fs::remove_file(&marker);
    for t in &top {
        let target = dest.join(t);
        if let Ok(meta) = fs::symlink_metadata(&target) {
            if meta.is_dir() {
                fs::remove_dir_all(&target).map_err(io_err(&target))?;
            } else {
                fs::remove_file(&target).map_err(io_err(&target))?;
            }
        }
        fs::rename(tmp.join(t), &target).map_err(io_err(&target))?;
    }
    fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    let mut text = format!("{archive_sha256}\n");
    for t in &top {
        text.push_str(t);
        text.push('\n');
    }
    fs::write(&marker, text).map_err(io_err(&marker))?;
    Ok((top.iter().map(|t| dest.join(t)).collect(), true))
}

/// What an archive kind is called in messages.
pub(crate) fn kind_name(kind: Unpack) -> &'static str {
    match kind {
        Unpack::None => "any file",
        Unpack::TarGz => "a gzip-compressed tar archive",
        Unpack::Zip => "a zip archive",
    }
}

/// A cheap check that `path` has the format `kind` (for files with no checksum to verify).
pub(crate) fn plausible(kind: Unpack, path: &Path) -> Result<(), String> {
    match kind {
        Unpack::None => Ok(()),
        Unpack::Zip => {
            let f = File::open(path).map_err(|e| e.to_string())?;
            zip::ZipArchive::new(BufReader::new(f)).map(|_| ()).map_err(|e| format!("not a zip archive ({e})"))
        }
        Unpack::TarGz => {
            let f = File::open(path).map_err(|e| e.to_string())?;
            // The first tar header block must decompress.
            let mut block = Vec::with_capacity(512);
            flate2::read::GzDecoder::new(BufReader::new(f))
                .take(512)
                .read_to_end(&mut block)
                .map_err(|e| format!("not gzip data ({e})"))?;
            if block.len() < 512 {
                return Err("too short for a tar archive".into());
            }
            Ok(())
        }
    }
}

fn untar_gz(archive: &Path, into: &Path) -> Result<(), DownloadError> {
    let f = File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
    tar.set_preserve_permissions(false);
    tar.set_overwrite(true);
    let entries = tar.entries().map_err(|e| archive_err(archive, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_err(archive, e))?;
        let path = entry.path().map_err(|e| archive_err(archive, e))?.into_owned();
        // `unpack_in` refuses paths that leave the folder (it returns false for those).
        let inside = entry.unpack_in(into).map_err(|e| archive_err(archive, format!("{}: {e}", path.display())))?;
        if !inside {
            return Err(archive_err(archive, format!("entry `{}` points outside the archive", path.display())));
        }
    }
    Ok(())
}

fn unzip(archive: &Path, into: &Path) -> Result<(), DownloadError> {
    let f = File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| archive_err(archive, e))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| archive_err(archive, e))?;
        let raw = entry.name().to_string();
        let rel = entry
            .enclosed_name()
            .ok_or_else(|| archive_err(archive, format!("entry `{raw}` points outside the archive")))?;
        // Resource forks from macOS zips are not data.
        if rel.components().next().is_some_and(|c| c.as_os_str() == "__MACOSX") {
            continue;
        }
        let out = into.join(&rel);
        if entry.is_dir() {
            fs::create_dir_all(&out).map_err(io_err(&out))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut w = File::create(&out).map_err(io_err(&out))?;
        io::copy(&mut entry, &mut w).map_err(|e| archive_err(archive, format!("{raw}: {e}")))?;
    }
    Ok(())
}

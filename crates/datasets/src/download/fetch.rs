//! One HTTP(S) GET into a `.part` file, continuing it with a Range request when it has bytes.

use super::Event;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

/// Why one transfer attempt failed.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The server answered with a status that is not a (partial) success.
    Status(u16),
    /// 416: the `.part` file is at least as long as the remote file.
    RangeNotSatisfiable,
    /// The connection failed, dropped or timed out (bytes already received stay in `.part`).
    Transfer(String),
    /// Writing the `.part` file failed: a local problem, not the mirror's.
    Local(io::Error),
}

pub(crate) fn agent(connect: Duration, read: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .timeout_recv_response(Some(read))
        .timeout_per_read(Some(read))
        .user_agent(concat!("convex-adversarial-rs-download/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".into(),
            io::ErrorKind::TimedOut => "timed out".into(),
            _ => format!("connection error: {io}"),
        },
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        other => other.to_string(),
    }
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((start, total))
}

/// GETs `url` into `part`, continuing from its current length. Returns the offset it continued
/// from (0 for a fresh download). On `Ok` the body arrived complete (as far as the server said
/// how long it is) and was synced to disk; verification is the caller's.
pub(crate) fn fetch_to(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    file_name: &str,
    progress: &dyn Fn(&Event),
) -> Result<u64, FetchError> {
    let offset = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if offset > 0 {
        req = req.header("Range", format!("bytes={offset}-"));
    }
    let resp = req.call().map_err(|e| FetchError::Transfer(describe(&e)))?;
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_length: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
    let (start, total) = match status {
        200 => (0, content_length),
        206 => {
            let (start, total) = header("content-range")
                .as_deref()
                .and_then(parse_content_range)
                .ok_or_else(|| FetchError::Transfer("206 answer without a valid Content-Range".into()))?;
            if start != offset {
                // Not the part we asked for: start over on the next attempt.
                let _ = fs::remove_file(part);
                return Err(FetchError::Transfer(format!(
                    "asked to resume at byte {offset}, server sent from byte {start}"
                )));
            }
            (start, total.or(content_length.map(|l| l + start)))
        }
        416 => return Err(FetchError::RangeNotSatisfiable),
        s => return Err(FetchError::Status(s)),
    };
    let file = if start == 0 { File::create(part) } else { OpenOptions::new().append(true).open(part) }
        .map_err(FetchError::Local)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    progress(&Event::Transfer { file: file_name, url, offset: start, total });

    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    let mut fail = None;
    loop {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]) {
                    return Err(FetchError::Local(e));
                }
                received += n as u64;
                progress(&Event::Bytes { file: file_name, done: start + received, total });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                fail = Some(format!("connection dropped after {received} bytes of the body: {e}"));
                break;
            }
        }
    }
    // Keep what arrived (a valid prefix) so the next attempt can continue it.
    let file = out.into_inner().map_err(|e| FetchError::Local(e.into_error()))?;
    file.sync_all().map_err(FetchError::Local)?;
    if let Some(f) = fail {
        return Err(FetchError::Transfer(f));
    }
    if let Some(len) = content_length {
        if received < len {
            return Err(FetchError::Transfer(format!(
                "connection dropped after {received} of {len} bytes of the body"
            )));
        }
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 5-9/10"), None);
    }
}

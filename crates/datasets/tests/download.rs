//! The data set downloader, end to end against a small HTTP server on 127.0.0.1 started by
//! each test (no internet needed): mirrors, checksums, resume, import, unpacking.

use datasets::download::{
    dataset, download_dataset, find_dataset, hash_bytes, read_sums, registry, Check, DatasetSource, DownloadError,
    DownloadOptions, Event, Origin, RemoteFile, Unpack, SUMS_FILE,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A tiny threaded HTTP/1.1 server serving files from memory.

/// How the server answers for one path.
#[derive(Clone)]
enum Mode {
    /// Serve the body, honouring `Range: bytes=N-`.
    Normal,
    /// Send the headers and the first `bytes` of the body, then close the connection; `times`
    /// requests are cut like this, later ones are served normally.
    DropAfter { bytes: usize, times: usize },
    /// Answer with this status and no body.
    Status(u16),
    /// Serve the whole body with 200 even when a Range was asked for.
    IgnoreRange,
}

struct Route {
    body: Vec<u8>,
    mode: Mode,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: Vec<Hit>,
}

struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The server gives up by itself after this long, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIFETIME;
            let mut workers = Vec::new();
            while !sp.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = st.clone();
                        workers.push(std::thread::spawn(move || handle(stream, &st)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Server { addr, state, stop, thread: Some(thread) }
    }

    /// Base URL of a "mirror" (a path prefix on this server).
    fn mirror(&self, prefix: &str) -> String {
        format!("http://{}/{prefix}/", self.addr)
    }

    fn serve(&self, prefix: &str, name: &str, body: &[u8], mode: Mode) {
        let path = format!("/{prefix}/{name}");
        self.state.lock().unwrap().routes.insert(path, Route { body: body.to_vec(), mode });
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/").to_string();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_string());
    let (body, mode) = {
        let mut st = state.lock().unwrap();
        st.hits.push(Hit { path: path.clone(), range: range.clone() });
        match st.routes.get_mut(&path) {
            None => (Vec::new(), Mode::Status(404)),
            Some(r) => {
                let mode = r.mode.clone();
                if let Mode::DropAfter { bytes, times } = r.mode {
                    r.mode = if times > 1 { Mode::DropAfter { bytes, times: times - 1 } } else { Mode::Normal };
                }
                (r.body.clone(), mode)
            }
        }
    };
    let start: usize = match (&mode, &range) {
        (Mode::IgnoreRange, _) | (_, None) => 0,
        (_, Some(r)) => {
            r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|s| s.parse().ok()).unwrap_or(0)
        }
    };
    let head = |status: &str, extra: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
    };
    let _ = match mode {
        Mode::Status(s) => stream.write_all(head(&format!("{s} Nope"), "", 0).as_bytes()),
        _ if start > 0 && start >= body.len() => stream.write_all(
            head("416 Range Not Satisfiable", &format!("Content-Range: bytes */{}\r\n", body.len()), 0).as_bytes(),
        ),
        _ => {
            let slice = &body[start..];
            let h = if start > 0 {
                head(
                    "206 Partial Content",
                    &format!("Content-Range: bytes {start}-{}/{}\r\n", body.len() - 1, body.len()),
                    slice.len(),
                )
            } else {
                head("200 OK", "", slice.len())
            };
            let cut = match mode {
                Mode::DropAfter { bytes, .. } => bytes.min(slice.len()),
                _ => slice.len(),
            };
            stream.write_all(h.as_bytes()).and_then(|_| stream.write_all(&slice[..cut]))
        }
    };
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Deterministic pseudo-random bytes (xorshift), so that a corrupt or shifted copy differs.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dl-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(mirrors: Vec<String>) -> DownloadOptions {
    DownloadOptions {
        mirrors: Some(mirrors),
        attempts_per_mirror: 3,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        retry_delay: Duration::from_millis(10),
        ..DownloadOptions::default()
    }
}

fn source(files: Vec<RemoteFile>) -> DatasetSource {
    DatasetSource {
        name: "synthetic".into(),
        aliases: vec![],
        description: "test data".into(),
        files,
        // Never used: every test overrides the mirrors.
        mirrors: vec!["http://127.0.0.1:9/never/".into()],
    }
}

/// A file with its MD5 (the form the registry uses).
fn md5_file(name: &str, data: &[u8]) -> RemoteFile {
    RemoteFile::new(name).md5(hash_bytes(data).md5)
}

fn sha_file(name: &str, data: &[u8]) -> RemoteFile {
    RemoteFile::new(name).sha256(hash_bytes(data).sha256)
}

fn quiet(_: &Event) {}

/// Collects the warnings of a run.
fn collect_warnings() -> (impl Fn(&Event), Arc<Mutex<Vec<String>>>) {
    let w = Arc::new(Mutex::new(Vec::new()));
    let w2 = w.clone();
    (
        move |e: &Event| {
            if let Event::Warning(s) = e {
                w2.lock().unwrap().push(s.to_string());
            }
        },
        w,
    )
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn digests_match_known_test_vectors() {
    let d = hash_bytes(b"abc");
    assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(d.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let e = hash_bytes(b"");
    assert_eq!(e.md5, "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(e.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

#[test]
fn downloads_and_verifies_md5_and_sha256() {
    let srv = Server::start();
    let a = bytes(300_000, 1);
    let b = bytes(1_000, 2);
    srv.serve("m", "a.bin", &a, Mode::Normal);
    srv.serve("m", "b.bin", &b, Mode::Normal);
    let src = source(vec![md5_file("a.bin", &a), sha_file("b.bin", &b)]);
    let dir = tmpdir("ok");
    let seen = Arc::new(Mutex::new(0u64));
    let s2 = seen.clone();
    let progress = move |e: &Event| {
        if let Event::Bytes { done, .. } = e {
            let mut max = s2.lock().unwrap();
            *max = (*max).max(*done);
        }
    };
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &progress).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), b);
    assert_eq!(rep.files[0].check, Check::Md5);
    assert_eq!(rep.files[1].check, Check::Sha256);
    assert_eq!(rep.files[0].origin, Origin::Downloaded { url: format!("{}a.bin", srv.mirror("m")), resumed_from: 0 });
    assert_eq!(*seen.lock().unwrap(), 300_000, "progress reports the bytes");
    assert_eq!(names_in(&dir), vec![SUMS_FILE.to_string(), "a.bin".into(), "b.bin".into()], "no .part left");
    let sums = read_sums(&dir);
    assert_eq!(sums["a.bin"], hash_bytes(&a).sha256);
    assert_eq!(sums["b.bin"], hash_bytes(&b).sha256);
}

#[test]
fn first_mirror_404_then_second_mirror() {
    let srv = Server::start();
    let a = bytes(50_000, 3);
    srv.serve("good", "a.bin", &a, Mode::Normal);
    let src = source(vec![md5_file("a.bin", &a)]);
    let dir = tmpdir("404");
    let (progress, warnings) = collect_warnings();
    let o = opts(vec![srv.mirror("missing"), srv.mirror("good")]);
    let rep = download_dataset(&src, &dir, &o, &progress).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert_eq!(
        rep.files[0].origin,
        Origin::Downloaded { url: format!("{}a.bin", srv.mirror("good")), resumed_from: 0 }
    );
    let paths: Vec<String> = srv.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, vec!["/missing/a.bin", "/good/a.bin"], "a 404 is not retried on the same mirror");
    let w = warnings.lock().unwrap().join("\n");
    assert!(w.contains("/missing/a.bin") && w.contains("404"), "warning names URL and status: {w}");
}

#[test]
fn every_mirror_failing_names_each_url_and_problem() {
    let srv = Server::start();
    srv.serve("gone", "a.bin", b"", Mode::Status(410));
    srv.serve("broken", "a.bin", b"", Mode::Status(503));
    // A port nothing listens on: bind one, then free it.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/x/", l.local_addr().unwrap())
    };
    let src = source(vec![RemoteFile::new("a.bin").md5("00000000000000000000000000000000")]);
    let dir = tmpdir("allfail");
    let err =
        download_dataset(&src, &dir, &opts(vec![srv.mirror("gone"), srv.mirror("broken"), refused.clone()]), &quiet)
            .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}a.bin: HTTP status 410", srv.mirror("gone"))), "{msg}");
    assert!(msg.contains(&format!("{}a.bin: HTTP status 503", srv.mirror("broken"))), "{msg}");
    assert!(msg.contains(&format!("{refused}a.bin")), "{msg}");
    match err {
        DownloadError::AllMirrorsFailed { errors, .. } => {
            // 410: once; 503: retried (bounded); refused: retried (bounded). Match the status
            // text: the refused mirror's random port may contain "410" or "503" itself.
            assert_eq!(errors.iter().filter(|e| e.to_string().contains("HTTP status 410")).count(), 1);
            assert_eq!(errors.iter().filter(|e| e.to_string().contains("HTTP status 503")).count(), 3);
        }
        e => panic!("unexpected error {e}"),
    }
    assert!(!dir.join("a.bin").exists());
}

#[test]
fn corrupt_file_is_rejected_and_never_becomes_final() {
    let srv = Server::start();
    let good = bytes(80_000, 4);
    let mut bad = good.clone();
    bad[40_000] ^= 0xff;
    srv.serve("evil", "a.bin", &bad, Mode::Normal);
    let src = source(vec![md5_file("a.bin", &good)]);
    let dir = tmpdir("corrupt");
    let err = download_dataset(&src, &dir, &opts(vec![srv.mirror("evil")]), &quiet).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&hash_bytes(&good).md5) && msg.contains(&hash_bytes(&bad).md5), "expected and actual: {msg}");
    assert!(msg.contains(&format!("{}a.bin", srv.mirror("evil"))), "names the URL: {msg}");
    match &err {
        DownloadError::AllMirrorsFailed { errors, .. } => {
            assert!(matches!(errors[0], DownloadError::ChecksumMismatch { algo: "MD5", .. }))
        }
        e => panic!("unexpected error {e}"),
    }
    assert!(!dir.join("a.bin").exists(), "no final file");
    assert!(names_in(&dir).iter().all(|n| n.ends_with(".part") || n == SUMS_FILE), "{:?}", names_in(&dir));

    // A corrupt first mirror and a good second one: the good copy wins.
    srv.serve("fine", "a.bin", &good, Mode::Normal);
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("evil"), srv.mirror("fine")]), &quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), good);
    assert_eq!(
        rep.files[0].origin,
        Origin::Downloaded { url: format!("{}a.bin", srv.mirror("fine")), resumed_from: 0 }
    );
}

#[test]
fn dropped_connection_is_resumed_with_range() {
    let srv = Server::start();
    let a = bytes(200_000, 5);
    srv.serve("m", "a.bin", &a, Mode::DropAfter { bytes: 70_000, times: 2 });
    let src = source(vec![sha_file("a.bin", &a)]);
    let dir = tmpdir("drop");
    let (progress, warnings) = collect_warnings();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &progress).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    let ranges: Vec<Option<String>> = srv.hits().into_iter().map(|h| h.range).collect();
    assert_eq!(
        ranges,
        vec![None, Some("bytes=70000-".to_string()), Some("bytes=140000-".to_string())],
        "each attempt continues where the last one stopped"
    );
    assert_eq!(
        rep.files[0].origin,
        Origin::Downloaded { url: format!("{}a.bin", srv.mirror("m")), resumed_from: 140_000 }
    );
    let w = warnings.lock().unwrap().join("\n");
    assert!(w.contains("connection dropped") && w.contains("a.bin"), "{w}");
    assert!(!dir.join("a.bin.part").exists());
}

#[test]
fn dropped_connection_on_every_attempt_fails_without_final_file() {
    let srv = Server::start();
    let a = bytes(100_000, 6);
    // Each attempt delivers nothing: bounded retries, then failure.
    srv.serve("m", "a.bin", &a, Mode::DropAfter { bytes: 0, times: 1000 });
    let src = source(vec![md5_file("a.bin", &a)]);
    let dir = tmpdir("dropall");
    let err = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap_err();
    assert!(err.to_string().contains("connection dropped"), "{err}");
    assert_eq!(srv.hits().len(), 3, "attempts are bounded");
    assert!(!dir.join("a.bin").exists());
}

#[test]
fn leftover_part_file_is_continued_or_restarted() {
    let srv = Server::start();
    let a = bytes(120_000, 7);
    srv.serve("m", "a.bin", &a, Mode::Normal);
    let src = source(vec![md5_file("a.bin", &a)]);

    // A good prefix from an interrupted earlier run: continued.
    let dir = tmpdir("part-good");
    std::fs::write(dir.join("a.bin.part"), &a[..50_000]).unwrap();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert_eq!(
        rep.files[0].origin,
        Origin::Downloaded { url: format!("{}a.bin", srv.mirror("m")), resumed_from: 50_000 }
    );

    // A wrong prefix: the resumed file fails verification, and a fresh download follows.
    let dir = tmpdir("part-bad");
    std::fs::write(dir.join("a.bin.part"), bytes(50_000, 99)).unwrap();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert_eq!(rep.files[0].origin, Origin::Downloaded { url: format!("{}a.bin", srv.mirror("m")), resumed_from: 0 });

    // A complete `.part` (the run died between download and rename): 416, verified, kept.
    let dir = tmpdir("part-full");
    std::fs::write(dir.join("a.bin.part"), &a).unwrap();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert_eq!(rep.files[0].check, Check::Md5);

    // A server that ignores Range sends everything again: the file is rewritten from zero.
    srv.serve("norange", "a.bin", &a, Mode::IgnoreRange);
    let dir = tmpdir("part-norange");
    std::fs::write(dir.join("a.bin.part"), &a[..30_000]).unwrap();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("norange")]), &quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert!(matches!(rep.files[0].origin, Origin::Downloaded { resumed_from: 0, .. }));
}

#[test]
fn present_good_file_is_skipped_and_bad_one_replaced() {
    let srv = Server::start();
    let a = bytes(10_000, 8);
    srv.serve("m", "a.bin", &a, Mode::Normal);
    let src = source(vec![md5_file("a.bin", &a)]);
    let dir = tmpdir("present");
    std::fs::write(dir.join("a.bin"), &a).unwrap();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(rep.files[0].origin, Origin::AlreadyPresent);
    assert_eq!(rep.files[0].check, Check::Md5);
    assert!(srv.hits().is_empty(), "server not contacted");

    std::fs::write(dir.join("a.bin"), b"truncated").unwrap();
    let (progress, warnings) = collect_warnings();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &progress).unwrap();
    assert!(matches!(rep.files[0].origin, Origin::Downloaded { .. }));
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert!(warnings.lock().unwrap().iter().any(|w| w.contains("present but wrong")));
}

#[test]
fn import_from_directory_copies_and_verifies() {
    let a = bytes(40_000, 9);
    let b = bytes(500, 10);
    let src = source(vec![md5_file("a.bin", &a), sha_file("b.bin", &b)]);
    let from = tmpdir("from-src");
    std::fs::write(from.join("a.bin"), &a).unwrap();
    std::fs::write(from.join("b.bin"), &b).unwrap();
    let dir = tmpdir("from-dst");
    let o = DownloadOptions { from: Some(from.clone()), mirrors: Some(vec![]), ..opts(vec![]) };
    let rep = download_dataset(&src, &dir, &o, &quiet).unwrap();
    assert_eq!(rep.files[0].origin, Origin::Imported { from: from.join("a.bin") });
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), b);

    // A wrong file is rejected, naming it, and nothing takes the final name.
    let dir = tmpdir("from-bad");
    std::fs::write(from.join("b.bin"), b"not the data").unwrap();
    let err = download_dataset(&src, &dir, &o, &quiet).unwrap_err();
    match &err {
        DownloadError::ChecksumMismatch { file, algo, expected, actual, .. } => {
            assert_eq!(file, &from.join("b.bin"));
            assert_eq!(*algo, "SHA-256");
            assert_eq!(expected, &hash_bytes(&b).sha256);
            assert_eq!(actual, &hash_bytes(b"not the data").sha256);
        }
        e => panic!("unexpected error {e}"),
    }
    assert!(err.to_string().contains(&from.join("b.bin").display().to_string()));
    assert!(dir.join("a.bin").exists(), "the good file before it stays");
    assert!(!dir.join("b.bin").exists() && !dir.join("b.bin.part").exists());

    // A missing file is named.
    std::fs::remove_file(from.join("b.bin")).unwrap();
    let err = download_dataset(&src, &dir, &o, &quiet).unwrap_err();
    assert!(matches!(err, DownloadError::MissingImport { ref path } if path == &from.join("b.bin")), "{err}");
}

#[test]
fn recompressed_gzip_verifies_by_content() {
    let content = bytes(20_000, 11);
    let official = gzip(&content, 9);
    let repacked = gzip(&content, 1);
    assert_ne!(official, repacked);
    let file = md5_file("x-idx3-ubyte.gz", &official).gunzipped_sha256(hash_bytes(&content).sha256);
    let src = source(vec![file]);
    let from = tmpdir("gz-src");
    std::fs::write(from.join("x-idx3-ubyte.gz"), &repacked).unwrap();
    let o = DownloadOptions { from: Some(from.clone()), ..opts(vec![]) };
    let dir = tmpdir("gz-dst");
    let rep = download_dataset(&src, &dir, &o, &quiet).unwrap();
    assert_eq!(rep.files[0].check, Check::GunzippedSha256);

    // Other content, however compressed, is rejected (and so is a file that is not gzip).
    let dir = tmpdir("gz-bad");
    std::fs::write(from.join("x-idx3-ubyte.gz"), gzip(&bytes(20_000, 12), 9)).unwrap();
    let err = download_dataset(&src, &dir, &o, &quiet).unwrap_err();
    assert!(matches!(err, DownloadError::ChecksumMismatch { algo: "MD5", .. }), "{err}");
    std::fs::write(from.join("x-idx3-ubyte.gz"), b"plain").unwrap();
    assert!(download_dataset(&src, &dir, &o, &quiet).is_err());
    assert!(!dir.join("x-idx3-ubyte.gz").exists());
}

#[test]
fn unknown_checksum_warns_and_records_sha256() {
    let srv = Server::start();
    let a = bytes(5_000, 13);
    srv.serve("m", "a.zip", &a, Mode::Normal);
    let src = source(vec![RemoteFile::new("a.zip")]);
    let dir = tmpdir("nosum");
    let (progress, warnings) = collect_warnings();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &progress).unwrap();
    assert_eq!(rep.files[0].check, Check::Unverified);
    let sha = hash_bytes(&a).sha256;
    assert_eq!(rep.files[0].sha256, sha);
    assert_eq!(read_sums(&dir)["a.zip"], sha);
    let w = warnings.lock().unwrap().join("\n");
    assert!(w.contains("no checksum is known") && w.contains(&sha), "{w}");

    // Next run: the recorded SHA-256 verifies the present file.
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!((rep.files[0].origin.clone(), rep.files[0].check), (Origin::AlreadyPresent, Check::Recorded));
    // ... and catches a damaged one, which is fetched again.
    std::fs::write(dir.join("a.zip"), b"damaged").unwrap();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert!(matches!(rep.files[0].origin, Origin::Downloaded { .. }));
    assert_eq!(std::fs::read(dir.join("a.zip")).unwrap(), a);
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, o).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn tar_gz_archive_is_unpacked() {
    let srv = Server::start();
    let batch = bytes(3073 * 4, 14);
    let archive = tar_gz(&[("batches-bin/data_batch_1.bin", &batch), ("batches-bin/meta/names.txt", b"cat\ndog\n")]);
    srv.serve("m", "set.tar.gz", &archive, Mode::Normal);
    let src = source(vec![md5_file("set.tar.gz", &archive).unpack(Unpack::TarGz)]);
    let dir = tmpdir("tar");
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("batches-bin/data_batch_1.bin")).unwrap(), batch);
    assert_eq!(std::fs::read(dir.join("batches-bin/meta/names.txt")).unwrap(), b"cat\ndog\n");
    assert_eq!(rep.files[0].unpacked, vec![dir.join("batches-bin")]);
    assert!(dir.join("set.tar.gz").exists(), "the archive stays, so later runs can skip");

    // A second run neither downloads nor unpacks again.
    std::fs::write(dir.join("batches-bin/meta/names.txt"), b"kept").unwrap();
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(rep.files[0].origin, Origin::AlreadyPresent);
    assert_eq!(std::fs::read(dir.join("batches-bin/meta/names.txt")).unwrap(), b"kept");
    assert_eq!(srv.hits().len(), 1);
    // Unpacked output that went missing is restored.
    std::fs::remove_dir_all(dir.join("batches-bin")).unwrap();
    download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("batches-bin/data_batch_1.bin")).unwrap(), batch);

    // --no-unpack leaves the archive packed.
    let dir = tmpdir("tar-packed");
    let o = DownloadOptions { unpack: false, ..opts(vec![srv.mirror("m")]) };
    download_dataset(&src, &dir, &o, &quiet).unwrap();
    assert!(!dir.join("batches-bin").exists());
}

#[test]
fn zip_archive_is_unpacked() {
    let srv = Server::start();
    let x = bytes(10_000, 15);
    let archive = zip_bytes(&[
        ("UCI HAR Dataset/train/X_train.txt", &x),
        ("UCI HAR Dataset/activity_labels.txt", b"1 WALKING\n"),
        ("__MACOSX/UCI HAR Dataset/._activity_labels.txt", b"junk"),
    ]);
    srv.serve("m", "UCI%20HAR%20Dataset.zip", &archive, Mode::Normal);
    let src = source(vec![md5_file("UCI HAR Dataset.zip", &archive).unpack(Unpack::Zip)]);
    let dir = tmpdir("zip");
    let rep = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap();
    assert_eq!(srv.hits()[0].path, "/m/UCI%20HAR%20Dataset.zip", "spaces are URL-encoded");
    assert_eq!(std::fs::read(dir.join("UCI HAR Dataset/train/X_train.txt")).unwrap(), x);
    assert_eq!(std::fs::read(dir.join("UCI HAR Dataset/activity_labels.txt")).unwrap(), b"1 WALKING\n");
    assert!(!dir.join("__MACOSX").exists());
    assert_eq!(rep.files[0].unpacked, vec![dir.join("UCI HAR Dataset")]);
}

#[test]
fn archive_without_checksum_must_at_least_be_an_archive() {
    let srv = Server::start();
    let archive = zip_bytes(&[("set/a.txt", b"data")]);
    // A mirror that answers 200 with an error page, then a good one.
    srv.serve("portal", "a.zip", b"<html>please log in</html>", Mode::Normal);
    srv.serve("m", "a.zip", &archive, Mode::Normal);
    let src = source(vec![RemoteFile::new("a.zip").unpack(Unpack::Zip)]);
    let dir = tmpdir("nosum-zip");
    let (progress, warnings) = collect_warnings();
    let o = opts(vec![srv.mirror("portal"), srv.mirror("m")]);
    let rep = download_dataset(&src, &dir, &o, &progress).unwrap();
    assert_eq!(rep.files[0].origin, Origin::Downloaded { url: format!("{}a.zip", srv.mirror("m")), resumed_from: 0 });
    assert_eq!(rep.files[0].check, Check::Unverified);
    assert_eq!(std::fs::read(dir.join("set/a.txt")).unwrap(), b"data");
    let w = warnings.lock().unwrap().join("\n");
    assert!(w.contains("/portal/a.zip") && w.contains("not a zip archive"), "{w}");

    // An unverified archive that opens but fails to unpack is forgotten, so that the next
    // run fetches it again instead of trusting it.
    let mut broken = zip_stored(&[("set/b.txt", b"0123456789")]);
    let at = broken.windows(10).position(|w| w == b"0123456789").unwrap();
    broken[at] ^= 0x55;
    srv.serve("m", "b.zip", &broken, Mode::Normal);
    let src = source(vec![RemoteFile::new("b.zip").unpack(Unpack::Zip)]);
    let dir = tmpdir("nosum-zip-broken");
    let err = download_dataset(&src, &dir, &opts(vec![srv.mirror("m")]), &quiet).unwrap_err();
    assert!(matches!(err, DownloadError::Archive { .. }), "{err}");
    assert!(!dir.join("b.zip").exists());
    assert!(!read_sums(&dir).contains_key("b.zip"));
    assert!(!dir.join("set").exists());
}

fn zip_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, o).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn archive_entry_escaping_the_folder_is_refused() {
    let archive = zip_bytes(&[("ok.txt", b"fine"), ("../escaped.txt", b"evil")]);
    let from = tmpdir("zipslip-src");
    std::fs::write(from.join("a.zip"), &archive).unwrap();
    let src = source(vec![md5_file("a.zip", &archive).unpack(Unpack::Zip)]);
    let dir = tmpdir("zipslip-dst");
    let o = DownloadOptions { from: Some(from), ..opts(vec![]) };
    let err = download_dataset(&src, &dir, &o, &quiet).unwrap_err();
    assert!(matches!(err, DownloadError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(!dir.parent().unwrap().join("escaped.txt").exists());
    assert!(!dir.join("ok.txt").exists(), "nothing is moved into place from a bad archive");
}

#[test]
fn registry_has_every_dataset_with_mirrors_and_checksums() {
    let reg = registry();
    for name in ["mnist", "fashion-mnist", "cifar10", "svhn", "har"] {
        let d = reg.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(d.mirrors.len() >= 2, "{name}: a standard location and an alternative");
        assert!(d.mirrors.iter().all(|m| m.starts_with("http://") || m.starts_with("https://")));
        assert!(!d.files.is_empty());
        for f in &d.files {
            for h in [&f.md5, &f.sha256, &f.gunzipped_sha256].into_iter().flatten() {
                assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{h}");
            }
            if let Some(m) = &f.md5 {
                assert_eq!(m.len(), 32);
            }
            if name == "har" {
                // No checksum is published for the UCI zip: recorded on first download instead.
                assert!(!f.has_checksum(), "if a HAR checksum is added, test it here");
            } else {
                assert!(f.md5.is_some(), "{name}/{}: published MD5", f.name);
            }
        }
    }
    let file = |set: &str, name: &str| {
        find_dataset(set).unwrap().files.into_iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{set}/{name}"))
    };
    // The published sums (torchvision's dataset classes; CIFAR-10's page for the binary archive).
    assert_eq!(file("mnist", "train-images-idx3-ubyte.gz").md5.unwrap(), "f68b3c2dcbeaaa9fbdd348bbdeb94873");
    assert_eq!(file("mnist", "t10k-labels-idx1-ubyte.gz").md5.unwrap(), "ec29112dd5afa0611ce80d1b7f02629c");
    assert_eq!(file("fashion-mnist", "train-images-idx3-ubyte.gz").md5.unwrap(), "8d4fb7e6c68d591d4c3dfef9ec88bf0d");
    assert_eq!(file("cifar10", "cifar-10-binary.tar.gz").md5.unwrap(), "c32a1d4ab5d03f1284b67883e8d87530");
    assert_eq!(file("cifar10", "cifar-10-binary.tar.gz").unpack, Unpack::TarGz);
    assert_eq!(file("svhn", "train_32x32.mat").md5.unwrap(), "e26dedcc434d2e4c54c9b2d4a06d8373");
    assert_eq!(file("svhn", "test_32x32.mat").md5.unwrap(), "eb5a983be6a315427106f1b164d9cef3");
    assert_eq!(file("har", "UCI HAR Dataset.zip").unpack, Unpack::Zip);
    assert_eq!(
        file("har", "UCI HAR Dataset.zip").url(&find_dataset("har").unwrap().mirrors[0]),
        "https://archive.ics.uci.edu/ml/machine-learning-databases/00240/UCI%20HAR%20Dataset.zip"
    );
    assert_eq!(find_dataset("CIFAR-10").unwrap().name, "cifar10");
    let err = dataset("imagenet").unwrap_err().to_string();
    assert!(err.contains("imagenet") && err.contains("fashion-mnist"), "{err}");
}

/// Debian's `dataset-fashion-mnist` package holds the four IDX files, recompressed: their
/// MD5s differ from the published ones, their content is the same. CI installs the package.
#[test]
fn imports_debian_fashion_mnist() {
    let Some(debian) = shared_data::fashion_mnist_dir() else { return };
    let src = find_dataset("fashion-mnist").unwrap();
    let dir = tmpdir("debian-fmnist");
    let o = DownloadOptions { from: Some(debian.clone()), ..DownloadOptions::default() };
    let rep = download_dataset(&src, &dir, &o, &quiet).unwrap();
    assert_eq!(rep.files.len(), 4);
    for f in &rep.files {
        assert!(matches!(f.check, Check::Md5 | Check::GunzippedSha256), "{}: {:?}", f.name, f.check);
        assert_eq!(std::fs::read(&f.path).unwrap(), std::fs::read(debian.join(&f.name)).unwrap());
    }
    // The loader reads what was imported.
    let test = datasets::load_mnist_like(&dir, datasets::Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    let _ = std::fs::remove_dir_all(&dir);
}

//! Progress of a long loop (certify, attack, train, min-distance): a bar on a terminal, plain
//! lines in a log.
//!
//! `indicatif` draws nothing when stderr is not a terminal, so a job whose output goes to a file
//! (CI, `nohup`, `> log 2>&1`) said nothing until its final table. Here, when stderr is not a
//! terminal, a line
//!
//! ```text
//! certify: 1250/10000 (12.5 %) | clean err 21.30% | robust err 34.10% | 1m23s elapsed, ~9m41s left
//! ```
//!
//! goes to stderr on the first update, then at most once per [`PLAIN_INTERVAL`], and once at the
//! end. The time left is `elapsed · (total − done) / done`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two plain progress lines.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// The bar's layout on a terminal (`prefix` is the label).
const BAR_TEMPLATE: &str = "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} ({eta} left) {msg}";

/// A progress display: an `indicatif` bar, plain lines to a writer, or nothing.
pub struct Progress {
    kind: Kind,
}

enum Kind {
    Bar(ProgressBar),
    Plain(Mutex<Plain>),
    Hidden,
}

/// State of the plain-line display.
struct Plain {
    label: String,
    out: Box<dyn Write + Send>,
    interval: Duration,
    start: Instant,
    /// When the last line was written (`None`: none yet).
    last: Option<Instant>,
    done: u64,
    total: u64,
    msg: String,
}

impl Progress {
    /// A bar on stderr when stderr is a terminal, plain lines on stderr every
    /// [`PLAIN_INTERVAL`] otherwise.
    pub fn new(label: impl Into<String>) -> Self {
        let label = label.into();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(ProgressStyle::with_template(BAR_TEMPLATE).expect("valid template"));
            bar.set_prefix(label);
            Progress { kind: Kind::Bar(bar) }
        } else {
            Self::plain(label, PLAIN_INTERVAL, Box::new(std::io::stderr()))
        }
    }

    /// Plain lines to `out`, at most one per `interval` (besides the first and the last).
    pub fn plain(label: impl Into<String>, interval: Duration, out: Box<dyn Write + Send>) -> Self {
        let p = Plain {
            label: label.into(),
            out,
            interval,
            start: Instant::now(),
            last: None,
            done: 0,
            total: 0,
            msg: String::new(),
        };
        Progress { kind: Kind::Plain(Mutex::new(p)) }
    }

    /// Shows nothing.
    pub fn hidden() -> Self {
        Progress { kind: Kind::Hidden }
    }

    /// `done` of `total` steps are finished; `msg` is the running state (errors so far).
    pub fn update(&self, done: u64, total: u64, msg: &str) {
        match &self.kind {
            Kind::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(msg.to_string());
            }
            Kind::Plain(p) => {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                p.done = done;
                p.total = total;
                p.msg.clear();
                p.msg.push_str(msg);
                let now = Instant::now();
                if p.last.is_none_or(|t| now.duration_since(t) >= p.interval) {
                    p.write_line(now, false);
                }
            }
            Kind::Hidden => {}
        }
    }

    /// Clears the bar, or writes the last plain line (`…, done in 2m05s`).
    pub fn finish(&self) {
        match &self.kind {
            Kind::Bar(bar) => bar.finish_and_clear(),
            Kind::Plain(p) => {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                p.write_line(Instant::now(), true);
            }
            Kind::Hidden => {}
        }
    }
}

impl Plain {
    fn write_line(&mut self, now: Instant, last: bool) {
        let elapsed = now.duration_since(self.start).as_secs_f64();
        let mut line = format!("{}: {}/{}", self.label, self.done, self.total);
        if self.total > 0 {
            line.push_str(&format!(" ({:.1} %)", 100.0 * self.done as f64 / self.total as f64));
        }
        if !self.msg.is_empty() {
            line.push_str(&format!(" | {}", self.msg));
        }
        if last {
            line.push_str(&format!(" | done in {}", hms(elapsed)));
        } else {
            line.push_str(&format!(" | {} elapsed", hms(elapsed)));
            if self.done > 0 && self.total >= self.done {
                let left = elapsed * (self.total - self.done) as f64 / self.done as f64;
                line.push_str(&format!(", ~{} left", hms(left)));
            }
        }
        // A log that cannot be written is no reason to stop the job.
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        self.last = Some(now);
    }
}

/// Seconds as `1h02m03s`, `2m05s` or `9s` (rounded down).
pub fn hms(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

//! Plain progress lines (stderr not a terminal): the first update, then at most one per
//! interval, and the last; each with done/total, the percentage, the message and the time.

use experiments::progress::{hms, Progress};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A writer whose bytes the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_string).collect()
    }
}

#[test]
fn every_update_is_a_line_when_the_interval_is_zero() {
    let out = Shared::default();
    let p = Progress::plain("certify", Duration::ZERO, Box::new(out.clone()));
    p.update(50, 200, "clean err 20.00%");
    p.update(100, 200, "clean err 21.00%");
    p.finish();
    let l = out.lines();
    assert_eq!(l.len(), 3, "{l:?}");
    assert!(l[0].starts_with("certify: 50/200 (25.0 %) | clean err 20.00% | "), "{}", l[0]);
    assert!(l[0].contains(" elapsed, ~") && l[0].ends_with(" left"), "{}", l[0]);
    assert!(l[1].starts_with("certify: 100/200 (50.0 %) | clean err 21.00% | "), "{}", l[1]);
    assert!(l[2].starts_with("certify: 100/200 (50.0 %) | clean err 21.00% | done in "), "{}", l[2]);
}

#[test]
fn lines_are_rate_limited_but_the_first_and_last_always_appear() {
    let out = Shared::default();
    let p = Progress::plain("epoch 1/4", Duration::from_secs(3600), Box::new(out.clone()));
    for b in 1..=10 {
        p.update(b, 10, &format!("loss {b}"));
    }
    p.finish();
    let l = out.lines();
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(l[0].starts_with("epoch 1/4: 1/10 (10.0 %) | loss 1 | "), "{}", l[0]);
    assert!(l[1].starts_with("epoch 1/4: 10/10 (100.0 %) | loss 10 | done in "), "{}", l[1]);
}

#[test]
fn an_unknown_total_and_no_message_still_give_a_line() {
    let out = Shared::default();
    let p = Progress::plain("min-distance", Duration::ZERO, Box::new(out.clone()));
    p.update(0, 0, "");
    assert_eq!(out.lines(), vec!["min-distance: 0/0 | 0s elapsed".to_string()]);
}

#[test]
fn hidden_progress_writes_nothing_and_durations_read_as_h_m_s() {
    let p = Progress::hidden();
    p.update(1, 2, "x");
    p.finish();
    assert_eq!(hms(0.0), "0s");
    assert_eq!(hms(9.9), "9s");
    assert_eq!(hms(125.0), "2m05s");
    assert_eq!(hms(3723.0), "1h02m03s");
    assert_eq!(hms(-1.0), "0s");
}

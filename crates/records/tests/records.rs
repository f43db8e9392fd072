//! The record files: resume, torn lines, settings checks, shard parsing and the merge's refusals.

use records::{read_all, read_file, RecordFile, Shard, Sharding};
use serde_json::json;
use std::io::Write;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("records-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn header(eps: f64, units: u64) -> serde_json::Value {
    json!({ "kind": "test", "units": units, "settings": { "eps": eps }, "info": { "path": "here" } })
}

#[test]
fn a_reopened_file_knows_its_units_and_refuses_other_settings() {
    let dir = tmp("reopen");
    let s = Sharding { dir: dir.clone(), shard: Shard::new(1, 3).unwrap() };
    {
        let mut f = RecordFile::open(&s, &header(0.1, 10)).unwrap();
        assert!(f.is_empty());
        f.append(1, json!({ "n": 5 })).unwrap();
        f.append(4, json!({ "n": 6 })).unwrap();
        assert!(f.append(4, json!({ "n": 6 })).is_err(), "a unit is never recorded twice");
    }
    // Other info (paths) is fine; other settings are refused, naming the setting.
    let mut h = header(0.1, 10);
    h["info"]["path"] = json!("elsewhere");
    let f = RecordFile::open(&s, &h).unwrap();
    assert_eq!(f.len(), 2);
    assert_eq!(f.done(4).unwrap()["n"], 6);
    assert!(f.done(7).is_none());
    drop(f);
    let e = RecordFile::open(&s, &header(0.2, 10)).unwrap_err().to_string();
    assert!(e.contains("settings.eps: 0.1 there, 0.2 now"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_last_line_is_cut_off_and_redone() {
    let dir = tmp("torn");
    let s = Sharding { dir: dir.clone(), shard: Shard::ALL };
    {
        let mut f = RecordFile::open(&s, &header(0.1, 3)).unwrap();
        f.append(0, json!({ "n": 1 })).unwrap();
    }
    let path = dir.join(Shard::ALL.file_name());
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A kill in the middle of the next line; even a torn line that parses as JSON is cut.
    for torn in [&b"{\"n\": 2, \"un"[..], &b"{\"n\":2,\"unit\":1}"[..]] {
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(torn).unwrap();
        assert_eq!(read_file(&path).unwrap().torn_bytes, torn.len());
        let mut f = RecordFile::open(&s, &header(0.1, 3)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len, "the torn bytes are removed");
        assert_eq!(f.len(), 1);
        assert!(f.done(1).is_none());
        f.append(1, json!({ "n": 2 })).unwrap();
        drop(f);
        let r = read_file(&path).unwrap();
        assert_eq!(r.units.len(), 2);
        assert_eq!(r.torn_bytes, 0);
        // Back to one unit for the next case.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(good_len).unwrap();
    }
    // A header cut short: the file starts over.
    std::fs::write(&path, b"{\"header\": {\"ki").unwrap();
    let f = RecordFile::open(&s, &header(0.1, 3)).unwrap();
    assert!(f.is_empty());
    drop(f);
    assert!(read_file(&path).unwrap().header.is_some());
    // A damaged complete line is an error, not a guess.
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"garbage\n").unwrap();
    let e = RecordFile::open(&s, &header(0.1, 3)).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("not JSON"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_process_on_the_same_shard_is_refused() {
    let dir = tmp("lock");
    let s = Sharding { dir: dir.clone(), shard: Shard::ALL };
    let _f = RecordFile::open(&s, &header(0.1, 3)).unwrap();
    let e = RecordFile::open(&s, &header(0.1, 3)).unwrap_err().to_string();
    assert!(e.contains("in use by another process"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_parse_from_the_flag_and_the_scheduler_environment() {
    let none = |_: &str| None;
    assert_eq!(Shard::parse_with("2/5", none).unwrap(), Shard { index: 2, count: 5 });
    for bad in ["5/5", "1/0", "x/3", "3", "1/y", "env/4"] {
        assert!(Shard::parse_with(bad, none).is_err(), "{bad}");
    }
    let slurm = |k: &str| (k == "SLURM_ARRAY_TASK_ID").then(|| "3".to_string());
    assert_eq!(Shard::parse_with("env/4", slurm).unwrap(), Shard { index: 3, count: 4 });
    let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "0".to_string());
    assert_eq!(Shard::parse_with("env/4", k8s).unwrap(), Shard { index: 0, count: 4 });
    let e = Shard::parse_with("env/4", |k: &str| Some(if k == "JOB_COMPLETION_INDEX" { "1" } else { "2" }.into()));
    assert!(e.unwrap_err().to_string().contains("disagree"));
    let e = Shard::parse_with("env/2", slurm).unwrap_err();
    assert!(format!("{e:#}").contains("not below"), "{e:#}");
    // Round robin: every unit has exactly one owner.
    for u in 0..20 {
        assert_eq!((0..3).filter(|&i| Shard { index: i, count: 3 }.owns(u)).count(), 1);
    }
    let s = Shard { index: 7, count: 12 };
    assert_eq!(Shard::from_file_name(&s.file_name()), Some(s));
}

#[test]
fn the_merge_refuses_missing_shards_missing_units_and_other_settings() {
    let dir = tmp("merge");
    let open = |i: usize, eps: f64| {
        RecordFile::open(&Sharding { dir: dir.clone(), shard: Shard::new(i, 3).unwrap() }, &header(eps, 7)).unwrap()
    };
    let (mut a, mut b) = (open(0, 0.1), open(1, 0.1));
    for u in [0, 3, 6] {
        a.append(u, json!({ "n": u })).unwrap();
    }
    b.append(1, json!({ "n": 1 })).unwrap();
    let e = read_all(&dir).unwrap_err().to_string();
    assert!(e.contains("shard 2/3 missing"), "{e}");
    drop(a);
    let mut c = open(2, 0.1);
    c.append(2, json!({ "n": 2 })).unwrap();
    c.append(5, json!({ "n": 5 })).unwrap();
    let e = read_all(&dir).unwrap_err().to_string();
    assert!(e.contains("shard 1/3 lacks unit 4"), "{e}");
    b.append(4, json!({ "n": 4 })).unwrap();
    let m = read_all(&dir).unwrap();
    assert_eq!(m.shards, 3);
    assert_eq!(m.units.keys().copied().collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
    // A file of the same run cut another way, and one with other settings.
    let other = Sharding { dir: dir.clone(), shard: Shard::new(0, 2).unwrap() };
    drop(RecordFile::open(&other, &header(0.1, 7)).unwrap());
    assert!(read_all(&dir).unwrap_err().to_string().contains("cut 3 ways and 2 ways"));
    std::fs::remove_file(dir.join(other.shard.file_name())).unwrap();
    drop(c);
    std::fs::remove_file(dir.join(Shard::new(2, 3).unwrap().file_name())).unwrap();
    let mut c = open(2, 0.3);
    c.append(2, json!({ "n": 2 })).unwrap();
    c.append(5, json!({ "n": 5 })).unwrap();
    let e = read_all(&dir).unwrap_err().to_string();
    assert!(e.contains("other settings") && e.contains("settings.eps"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

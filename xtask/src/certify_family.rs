//! `cargo xtask certify --bound ibp|crown|crown-ibp|alpha-crown`: progress and table.

use anyhow::Result;
use experiments::certify::CertifyConfig;
use experiments::certify_family::{certify_family, FamilyBound};
use experiments::progress::Progress;
use experiments::report::write_json_atomic;

pub fn run(cfg: CertifyConfig, fam: FamilyBound) -> Result<()> {
    let bar = Progress::new("certify");
    let report = certify_family(&cfg, &fam, |done, total, clean, robust| {
        let n = done.max(1) as f64;
        let msg = format!("clean err {:.2}% | robust err {:.2}%", 100.0 * clean as f64 / n, 100.0 * robust as f64 / n);
        bar.update(done as u64, total as u64, &msg);
    })?;
    bar.finish();
    // The table first: a failure to write the JSON must not throw the results away.
    println!("{}", report.table());
    if let Some(p) = &cfg.json {
        write_json_atomic(p, &report)?;
        println!("results written to {}", p.display());
    }
    Ok(())
}

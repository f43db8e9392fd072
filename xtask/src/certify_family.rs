//! `cargo xtask certify --bound ibp|crown|crown-ibp|alpha-crown`: progress and table.

use anyhow::Result;
use experiments::certify::CertifyConfig;
use experiments::certify_family::{certify_family, FamilyBound};
use indicatif::{ProgressBar, ProgressStyle};

pub fn run(cfg: CertifyConfig, fam: FamilyBound) -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ({eta} left) {msg}")
            .expect("valid template"),
    );
    let report = certify_family(&cfg, &fam, |done, total, clean, robust| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        let n = done.max(1) as f64;
        bar.set_message(format!(
            "clean err {:.2}% | robust err {:.2}%",
            100.0 * clean as f64 / n,
            100.0 * robust as f64 / n
        ));
    })?;
    bar.finish_and_clear();
    println!("{}", report.table());
    if let Some(p) = &cfg.json {
        println!("results written to {}", p.display());
    }
    Ok(())
}

//! `cargo xtask download NAME`: fetch, verify and unpack a data set into `data/NAME`.

use anyhow::{bail, Result};
use clap::Args;
use experiments::download::{dataset, default_dir, download_dataset, registry, DownloadOptions, Event, Origin};
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::RefCell;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Data set: mnist, fashion-mnist, cifar10, svhn or har (`--list` shows them).
    name: Option<String>,
    /// Folder to put the files in. Default: data/NAME.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Import the files from this folder (e.g. /usr/share/datasets/fashion-mnist) instead of
    /// downloading them; they are copied and verified the same way.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Base URL to download from instead of the data set's mirrors (repeat for several, tried
    /// in order).
    #[arg(long = "mirror")]
    mirrors: Vec<String>,
    /// Keep archives packed (CIFAR-10's tar.gz, HAR's zip).
    #[arg(long)]
    no_unpack: bool,
    /// Failed attempts per mirror before the next one is tried (≥ 1).
    #[arg(long, default_value_t = 3, value_parser = crate::parse::at_least_one_u32)]
    attempts: u32,
    /// List the known data sets, their files, checksums and mirrors.
    #[arg(long)]
    list: bool,
}

fn list() {
    for d in registry() {
        println!("{} — {}", d.name, d.description);
        if !d.aliases.is_empty() {
            println!("  aliases: {}", d.aliases.join(", "));
        }
        for f in &d.files {
            let sum = match (&f.md5, &f.sha256) {
                (_, Some(s)) => format!("sha256 {s}"),
                (Some(m), None) => format!("md5 {m}"),
                (None, None) => "no published checksum".to_string(),
            };
            println!("  {}  ({sum})", f.name);
        }
        for m in &d.mirrors {
            println!("  mirror: {m}");
        }
    }
}

pub fn run(a: DownloadArgs) -> Result<()> {
    if a.list {
        list();
        return Ok(());
    }
    let Some(name) = a.name else {
        bail!("name a data set (one of: {}), or use --list", names());
    };
    let src = dataset(&name)?;
    let dir = a.data_dir.unwrap_or_else(|| default_dir(&src));
    if let Some(f) = &a.from {
        if !f.is_dir() {
            bail!("--from {}: not a folder (give the folder that holds the data set's files)", f.display());
        }
    }
    for m in &a.mirrors {
        if !(m.starts_with("http://") || m.starts_with("https://")) {
            bail!("--mirror {m}: not an http:// or https:// URL");
        }
    }
    nets::io::check_writable_dir(&dir).map_err(|e| anyhow::anyhow!("--data-dir: {e}"))?;
    let opts = DownloadOptions {
        mirrors: (!a.mirrors.is_empty()).then_some(a.mirrors),
        from: a.from,
        unpack: !a.no_unpack,
        attempts_per_mirror: a.attempts,
        ..DownloadOptions::default()
    };
    let bar: RefCell<Option<ProgressBar>> = RefCell::new(None);
    let style = ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let spinner = ProgressStyle::with_template("{msg:30!} {spinner} {bytes} {bytes_per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let finish = |bar: &RefCell<Option<ProgressBar>>| {
        if let Some(b) = bar.borrow_mut().take() {
            b.finish_and_clear();
        }
    };
    let progress = |e: &Event| match *e {
        Event::Transfer { file, url, offset, total } => {
            finish(&bar);
            let b = match total {
                Some(t) => ProgressBar::new(t).with_style(style.clone()),
                None => ProgressBar::no_length().with_style(spinner.clone()),
            };
            b.set_message(file.to_string());
            b.set_position(offset);
            b.println(if offset > 0 {
                format!("{file}: continuing at byte {offset} from {url}")
            } else {
                format!("{file}: from {url}")
            });
            *bar.borrow_mut() = Some(b);
        }
        Event::Bytes { done, .. } => {
            if let Some(b) = bar.borrow().as_ref() {
                b.set_position(done);
            }
        }
        Event::Verifying { file } => {
            if let Some(b) = bar.borrow().as_ref() {
                b.set_message(format!("{file} (verifying)"));
            }
        }
        Event::Done { file, check } => {
            finish(&bar);
            println!("{file}: {check}");
        }
        Event::Warning(w) => match bar.borrow().as_ref() {
            Some(b) => b.println(format!("warning: {w}")),
            None => eprintln!("warning: {w}"),
        },
        Event::Unpacking { file } => {
            finish(&bar);
            println!("{file}: unpacking");
        }
    };
    let res = download_dataset(&src, &dir, &opts, &progress);
    finish(&bar);
    let report = res?;
    let fetched = report.files.iter().filter(|f| f.origin != Origin::AlreadyPresent).count();
    println!(
        "{}: {} file(s) in {} ({} fetched, {} already present)",
        report.dataset,
        report.files.len(),
        report.dir.display(),
        fetched,
        report.files.len() - fetched
    );
    for f in &report.files {
        for p in &f.unpacked {
            println!("  unpacked: {}", p.display());
        }
    }
    Ok(())
}

fn names() -> String {
    registry().iter().map(|d| d.name.clone()).collect::<Vec<_>>().join(", ")
}

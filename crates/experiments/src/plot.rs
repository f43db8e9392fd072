//! PNG plots (plotters, pure Rust). Text uses a TrueType font found on the system (DejaVu or
//! Liberation); without one the plots are drawn without text rather than failing.

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font for plot text once; false when none is found.
pub fn has_font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

/// A line plot of named series `(x, y)`; y as given (e.g. percent).
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    line_plot_axes(path, title, x_label, y_label, series, false)
}

/// [`line_plot`] with logarithmic x and y axes (every value must be positive), for scaling
/// curves: a power law is a straight line.
pub fn log_log_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    if series.iter().flat_map(|s| &s.1).any(|p| !(p.0 > 0.0 && p.1 > 0.0)) {
        return Err(anyhow!("a log-log plot needs positive values"));
    }
    line_plot_axes(path, title, x_label, y_label, series, true)
}

fn line_plot_axes(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log: bool,
) -> Result<()> {
    let text = has_font();
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |a, v| (a.0.min(v), a.1.max(v)));
    let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |a, v| (a.0.min(v), a.1.max(v)));
    if !x0.is_finite() {
        return Err(anyhow!("nothing to plot"));
    }
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, ("sans-serif", 24)).x_label_area_size(40).y_label_area_size(60);
    }
    if log {
        let chart =
            b.build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), (y0 * 0.7..y1 * 1.4).log_scale()).map_err(err)?;
        return draw_series(root.clone(), chart, x_label, y_label, series, text);
    }
    let pad = ((y1 - y0) * 0.1).max(1e-3);
    let chart = b.build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad)).map_err(err)?;
    draw_series(root.clone(), chart, x_label, y_label, series, text)
}

fn draw_series<'a, X, Y>(
    root: DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    text: bool,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    if text {
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(err)?;
    } else {
        chart.configure_mesh().disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0).draw().map_err(err)?;
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2))).map_err(err)?;
        if text {
            s.label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(err)?;
    }
    if text {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A histogram of `values` with `bins` equal bins over their range.
pub fn histogram(path: &Path, title: &str, x_label: &str, values: &[f64], bins: usize) -> Result<()> {
    let text = has_font();
    if values.is_empty() {
        return Err(anyhow!("nothing to plot"));
    }
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max).max(lo + 1e-9);
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in values {
        counts[(((v - lo) / w) as usize).min(bins - 1)] += 1;
    }
    let top = *counts.iter().max().unwrap_or(&1);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, ("sans-serif", 24)).x_label_area_size(40).y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d(lo..hi, 0u32..top + 1).map_err(err)?;
    if text {
        chart.configure_mesh().x_desc(x_label).y_desc("count").draw().map_err(err)?;
    }
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = lo + i as f64 * w;
            Rectangle::new([(x0, 0), (x0 + w, c)], BLUE.mix(0.6).filled())
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

//! The 2-d toy example of paper 1 (Figure 2): random separated points with random labels, a
//! standard and a robust classifier, and a picture of both decision regions with the eps-boxes.

use crate::plot::has_font;
use crate::train::{Optimizer, OptimizerConfig};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use dual_core::{robust_loss, DualOptions};
use dual_layers::InfBall;
use nets::{zoo::mlp, Network};
use plotters::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Settings (the paper's: 12 points at least 0.32 apart in l1, eps 0.08, 2-100-100-100-100-2,
/// Adam 1e-3, 1000 full-batch steps).
#[derive(Debug, Clone, Serialize)]
pub struct Toy2dConfig {
    /// Number of points.
    pub points: usize,
    /// Minimum l1 distance between points.
    pub min_distance: f64,
    /// Radius of the l_inf boxes.
    pub eps: f64,
    /// Training steps (full batch).
    pub steps: usize,
    /// Learning rate of Adam.
    pub lr: f64,
    /// Seed of the points, labels and initialisation.
    pub seed: u64,
    /// Output PNG.
    pub png: PathBuf,
}

impl Default for Toy2dConfig {
    fn default() -> Self {
        Toy2dConfig {
            points: 12,
            min_distance: 0.32,
            eps: 0.08,
            steps: 1000,
            lr: 1e-3,
            seed: 0,
            png: PathBuf::from("results/toy2d.png"),
        }
    }
}

/// What the run found.
#[derive(Debug, Clone, Serialize)]
pub struct Toy2dReport {
    /// Training points certified by the standard classifier.
    pub standard_certified: usize,
    /// Training points certified by the robust classifier.
    pub robust_certified: usize,
    /// Training points.
    pub points: usize,
    /// Training error of the standard / robust classifier.
    pub standard_error: f64,
    /// Training error of the robust classifier.
    pub robust_error: f64,
    /// The PNG written.
    pub png: PathBuf,
}

/// Points in [0,1]² at least `min_distance` apart (l1), with random labels in {0, 1}.
pub fn separated_points(n: usize, min_distance: f64, rng: &mut StdRng) -> (Vec<[f64; 2]>, Vec<u32>) {
    let mut pts: Vec<[f64; 2]> = Vec::new();
    let mut tries = 0;
    while pts.len() < n && tries < 100_000 {
        tries += 1;
        let p = [rng.random::<f64>(), rng.random::<f64>()];
        if pts.iter().all(|q| (p[0] - q[0]).abs() + (p[1] - q[1]).abs() > min_distance) {
            pts.push(p);
        }
    }
    let labels = (0..pts.len()).map(|_| rng.random_range(0..2u32)).collect();
    (pts, labels)
}

fn certified(net: &Network, x: &Tensor, y: &[u32], eps: f64) -> Result<Vec<bool>> {
    let dual = net.dual(x, Box::new(InfBall::new(x, eps)?), &DualOptions::default())?;
    Ok(robust_loss(&dual, y)?.certified)
}

fn errors(net: &Network, x: &Tensor, y: &[u32]) -> Result<f64> {
    let p = net.forward(x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(p.iter().zip(y).filter(|(a, b)| a != b).count() as f64 / y.len() as f64)
}

/// Trains the standard and the robust classifier, certifies the points, draws the picture.
pub fn run(cfg: &Toy2dConfig) -> Result<Toy2dReport> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (pts, y) = separated_points(cfg.points, cfg.min_distance, &mut rng);
    let flat: Vec<f64> = pts.iter().flat_map(|p| p.iter().copied()).collect();
    let x = Tensor::from_vec(flat, (pts.len(), 2), &Device::Cpu)?;
    let spec = mlp("toy2d", &[2, 100, 100, 100, 100, 2]);
    let standard = Network::init(&spec, cfg.seed, DType::F64, &Device::Cpu)?;
    let robust = Network::init(&spec, cfg.seed, DType::F64, &Device::Cpu)?;
    let mut o1 = Optimizer::new(OptimizerConfig::adam(cfg.lr), standard.trainable());
    let mut o2 = Optimizer::new(OptimizerConfig::adam(cfg.lr), robust.trainable());
    for _ in 0..cfg.steps {
        let l = dual_core::cross_entropy(&standard.forward(&x)?, &y)?;
        o1.step(&l.backward()?)?;
        let dual = robust.dual(&x, Box::new(InfBall::new(&x, cfg.eps)?), &DualOptions::default())?;
        let rl = robust_loss(&dual, &y)?;
        o2.step(&rl.loss.backward()?)?;
    }
    let sc = certified(&standard, &x, &y, cfg.eps)?;
    let rc = certified(&robust, &x, &y, cfg.eps)?;
    draw(&cfg.png, &pts, &y, cfg.eps, &[("standard training", &standard), ("robust training", &robust)])?;
    Ok(Toy2dReport {
        standard_certified: sc.iter().filter(|c| **c).count(),
        robust_certified: rc.iter().filter(|c| **c).count(),
        points: pts.len(),
        standard_error: errors(&standard, &x, &y)?,
        robust_error: errors(&robust, &x, &y)?,
        png: cfg.png.clone(),
    })
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

/// Two panels: decision regions of each classifier on a grid, the points and their eps-boxes.
fn draw(path: &Path, pts: &[[f64; 2]], y: &[u32], eps: f64, nets: &[(&str, &Network)]) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let text = has_font();
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, nets.len()));
    let g = 160usize;
    let grid: Vec<f64> =
        (0..g * g).flat_map(|k| [((k % g) as f64 + 0.5) / g as f64, ((k / g) as f64 + 0.5) / g as f64]).collect();
    let gx = Tensor::from_vec(grid, (g * g, 2), &Device::Cpu)?;
    let region = [RGBColor(250, 200, 200), RGBColor(200, 210, 250)];
    let point = [RGBColor(200, 30, 30), RGBColor(30, 60, 200)];
    for (panel, (name, net)) in panels.iter().zip(nets) {
        let pred = net.forward(&gx)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let mut b = ChartBuilder::on(panel);
        b.margin(10);
        if text {
            b.caption(*name, ("sans-serif", 22));
        }
        let mut chart = b.build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(err)?;
        let c = 1.0 / g as f64;
        chart
            .draw_series(pred.iter().enumerate().map(|(k, &p)| {
                let (x0, y0) = ((k % g) as f64 * c, (k / g) as f64 * c);
                Rectangle::new([(x0, y0), (x0 + c, y0 + c)], region[p as usize % 2].filled())
            }))
            .map_err(err)?;
        for (p, &l) in pts.iter().zip(y) {
            let col = point[l as usize % 2];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(p[0] - eps, p[1] - eps), (p[0] + eps, p[1] + eps)],
                    col.stroke_width(2),
                )))
                .map_err(err)?;
            chart.draw_series(std::iter::once(Circle::new((p[0], p[1]), 4, col.filled()))).map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

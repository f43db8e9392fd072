//! Command-line settings shared by `verify` and `vnncomp`: the bound method and branch and bound.

use clap::Args;
use std::time::Duration;
use verifier::bab::BabOptions;
use verifier::{BoundMethod, BySize, DenseExactDual, FamilyBound, Portfolio};

#[derive(Args, Debug)]
pub struct BoundArgs {
    /// Bound method: `auto` (on inputs of at most 16 features, where the box is split: CROWN
    /// for a quarter of the time, then the exact dual; α-CROWN on larger inputs), `exact` (the Wong–Kolter dual), `crown`, `alpha-crown`,
    /// `crown-ibp` or `ibp`.
    #[arg(long, default_value = "auto")]
    method: String,
    /// Domains split per branch-and-bound round (twice as many boxes are bounded in one pass).
    #[arg(long, default_value_t = 128)]
    bab_batch: usize,
    /// Choose the input feature to split by relative width only (no sensitivity scores).
    #[arg(long)]
    no_smart_split: bool,
    /// Seconds between branch-and-bound progress lines on stderr (0: none).
    #[arg(long, default_value_t = 10.0)]
    progress: f64,
    /// ReLU splitting: Adam steps per activation that tighten the intermediate layers' bounds at
    /// the root with their own α (0: CROWN ∩ IBP layer bounds, as α-CROWN keeps them).
    #[arg(long, default_value_t = 20)]
    layer_alpha: usize,
    /// ReLU splitting: Adam steps on α and β per bounded domain (β-CROWN's optimisation; more
    /// steps, tighter bounds and smaller trees, each domain dearer).
    #[arg(long, default_value_t = verifier::bab::BetaOptions::default().iterations, value_parser = crate::parse::at_least_one)]
    beta_iterations: usize,
    /// ReLU splitting: more Adam steps for a child whose bound is no better than its parent's
    /// (0: none).
    #[arg(long, default_value_t = verifier::bab::BetaOptions::default().stuck_iterations)]
    stuck_iterations: usize,
    /// ReLU splitting: activations (from the second) whose unstable units' bounds are refined at
    /// the root by a small tree of their own over the activations below (0: none).
    #[arg(long, default_value_t = verifier::bab::BetaOptions::default().refine_layers)]
    refine_layers: usize,
    /// ReLU splitting: domains per unit and side in those trees.
    #[arg(long, default_value_t = verifier::bab::BetaOptions::default().refine_domains, value_parser = crate::parse::at_least_one)]
    refine_domains: usize,
    /// ReLU splitting: the clauses over one box share one tree (default: one tree per clause, in turn).
    #[arg(long)]
    one_tree: bool,
    /// ReLU splitting: units tried per split (the best by the gradient score, each by one
    /// un-optimised bound of its two children; 1: the score alone).
    #[arg(long, default_value_t = verifier::bab::BetaOptions::default().candidates, value_parser = crate::parse::at_least_one)]
    branch_candidates: usize,
}

impl BoundArgs {
    /// The `--method` string as given.
    pub fn method_name(&self) -> &str {
        &self.method
    }

    /// The bound method.
    pub fn method(&self) -> anyhow::Result<Box<dyn BoundMethod>> {
        if self.method == "exact" {
            return Ok(Box::new(DenseExactDual));
        }
        if self.method == "auto" {
            let crown: Box<dyn BoundMethod> = Box::new(FamilyBound::new(dual_core::bounds::Method::Crown));
            let small = Box::new(Portfolio { stages: vec![(crown, 0.25), (Box::new(DenseExactDual), 1.0)] });
            let large = Box::new(FamilyBound::new(dual_core::bounds::Method::AlphaCrown));
            return Ok(Box::new(BySize { small, large, threshold: 16 }));
        }
        let m: dual_core::bounds::Method = self.method.parse().map_err(|e| anyhow::anyhow!("--method: {e}"))?;
        Ok(Box::new(FamilyBound::new(m)))
    }

    /// Branch-and-bound settings.
    pub fn bab(&self) -> BabOptions {
        let defaults = BabOptions::default();
        BabOptions {
            batch: self.bab_batch.max(1),
            relu_one_tree: self.one_tree,
            beta: verifier::bab::BetaOptions {
                layer_alpha: self.layer_alpha,
                refine_layers: self.refine_layers,
                refine_domains: self.refine_domains,
                iterations: self.beta_iterations,
                stuck_iterations: self.stuck_iterations,
                candidates: self.branch_candidates,
                ..defaults.beta.clone()
            },
            smart: !self.no_smart_split,
            progress: (self.progress > 0.0 && self.progress.is_finite())
                .then(|| Duration::from_secs_f64(self.progress)),
            ..defaults
        }
    }
}

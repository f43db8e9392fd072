//! The answer to one instance and its result file in the competition's format.

use std::fmt::Write;

/// What the verifier concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// No input in the box reaches the unsafe set (proved by a sound bound).
    Unsat,
    /// A counterexample: `x` inside the box whose output `y` (our f64 forward pass) lies in the
    /// unsafe set.
    Sat {
        /// The input, flattened.
        x: Vec<f64>,
        /// The output our forward pass computes for `x`.
        y: Vec<f64>,
    },
    /// Neither proved nor falsified.
    Unknown,
    /// The time limit ran out first.
    Timeout,
    /// The instance could not be run (unreadable network or property, unsupported op, …).
    Error(String),
}

impl Answer {
    /// `unsat`, `sat`, `unknown`, `timeout` or `error`.
    pub fn keyword(&self) -> &'static str {
        match self {
            Answer::Unsat => "unsat",
            Answer::Sat { .. } => "sat",
            Answer::Unknown => "unknown",
            Answer::Timeout => "timeout",
            Answer::Error(_) => "error",
        }
    }

    /// The result file: the keyword on the first line; for `sat` the assignment
    /// `((X_0 v)\n (X_1 v)\n … (Y_0 v) …)` with values printed so they read back exactly.
    pub fn result_file(&self) -> String {
        let mut s = format!("{}\n", self.keyword());
        if let Answer::Sat { x, y } = self {
            let parts: Vec<String> = x
                .iter()
                .enumerate()
                .map(|(i, v)| format!("(X_{i} {v:e})"))
                .chain(y.iter().enumerate().map(|(j, v)| format!("(Y_{j} {v:e})")))
                .collect();
            let _ = writeln!(s, "({})", parts.join("\n "));
        }
        s
    }
}

//! Typed errors of the library's entry points; the binary turns them into messages.
//!
//! Done so far: the certification settings ([`crate::certify::CertifyConfig::validate`]) and
//! the norm names ([`crate::certify::Norm`]'s `FromStr`). The runs themselves
//! (`certify`, `train`, ...) still return `anyhow::Result` (see docs/ARCHITECTURE.md).

/// Settings that cannot run, found before anything is loaded: which flag, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value out of its range, or flags that do not go together.
    #[error("{flag} {problem}")]
    Invalid {
        /// The flag, as the binary spells it (`--eps`).
        flag: &'static str,
        /// What is wrong with it, as the end of a sentence that starts with the flag.
        problem: String,
    },
    /// A norm name that is none of the known ones.
    #[error("unknown norm `{0}` (expected linf, linf-median, l2 or l2-normal)")]
    UnknownNorm(String),
    /// The model file cannot be read.
    #[error(transparent)]
    Model(nets::NetError),
    /// An output file that cannot be written (`flag` names it).
    #[error("{flag}: {cause}")]
    Output {
        /// The flag of the file (`--json`).
        flag: &'static str,
        /// Why it cannot be written (part of the message, so it shows however it is printed).
        cause: nets::NetError,
    },
}

impl ConfigError {
    /// [`ConfigError::Invalid`] for `flag`.
    pub fn invalid(flag: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid { flag, problem: problem.into() }
    }
}

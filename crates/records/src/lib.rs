//! Sharded, resumable runs (`--shard I/N`, `--records DIR`, `cargo xtask merge DIR`).
//!
//! A run is cut into numbered *units* (a block of examples, a benchmark instance). Shard `I` of
//! `N` owns the units `u` with `u mod N = I` ([`Shard`]), so the partition is deterministic,
//! small-grained and balanced, and needs no coordinator. Each shard appends one JSON line per
//! finished unit to its own file in the records folder ([`RecordFile`]), after a header line with
//! the settings that define the results; rerunning the same command skips the units already
//! recorded, and a line torn by a kill is cut off and redone. [`read_all`] reads every shard's
//! file back for the merge, refusing files from other settings and naming missing shards and
//! units.

#![forbid(unsafe_code)]

mod file;
mod hash;
mod merge;
mod shard;

pub use file::{read_file, RecordFile, Records};
pub use hash::{sha256_file, sha256_hex};
pub use merge::{read_all, settings_diff, Merged};
pub use shard::{Shard, Sharding, ENV_INDEX_VARS};

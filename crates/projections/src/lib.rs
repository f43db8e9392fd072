//! Scalable bounds (random projections). Filled by a later issue; see docs/ARCHITECTURE.md.

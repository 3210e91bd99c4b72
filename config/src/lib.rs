//! Berth machine config (work in progress).

//! Berth networking (work in progress).

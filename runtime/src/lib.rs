//! Berth's integrated OCI runtime (work in progress).

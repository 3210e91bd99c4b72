//! Progress events (bytes, layers) for progress bars in `osctl` and `berth-image`.

use crate::digest::Digest;
use std::sync::Arc;

/// One progress event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressEvent {
    /// The manifest is known: how much there is to fetch.
    Resolved {
        /// Manifest digest.
        manifest: Digest,
        /// Number of layers.
        layers: usize,
        /// Sum of the layer and config sizes.
        total_bytes: u64,
    },
    /// A blob transfer starts.
    BlobStart {
        /// Blob digest.
        digest: Digest,
        /// Expected size.
        size: u64,
    },
    /// More bytes of a blob arrived (or were sent, when pushing).
    Bytes {
        /// Blob digest.
        digest: Digest,
        /// Bytes in this step.
        n: u64,
    },
    /// A blob is complete and verified. `cached` when nothing was transferred.
    BlobDone {
        /// Blob digest.
        digest: Digest,
        /// Already present locally (or remotely, when pushing).
        cached: bool,
    },
}

/// A progress callback; cheap to clone, called from several tasks.
pub type Progress = Arc<dyn Fn(ProgressEvent) + Send + Sync>;

/// A callback that ignores everything.
pub fn none() -> Progress {
    Arc::new(|_| {})
}

//! Running the external image tools with errors that say what failed and how to fix it.

use std::path::Path;
use std::process::Command;

/// A tool that failed or is missing.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} is not installed (run `make deps`)")]
    Missing {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        status: String,
        stderr: String,
    },
}

/// Run a command to completion; stdout is returned, stderr goes into the error.
pub fn run(cmd: &mut Command) -> Result<String, ToolError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| ToolError::Missing {
        tool: tool.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `mtools` command on an image file.
pub fn mtools(tool: &str, image: &Path) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", FAT_EPOCH)
        .arg("-i")
        .arg(image);
    c
}

/// The time stamped on every FAT directory entry the builder writes (2024-01-01 UTC), so
/// two builds of one tree give the same ESP byte for byte (mtools and mkfs.fat honour
/// `SOURCE_DATE_EPOCH`).
pub const FAT_EPOCH: &str = "1704067200";

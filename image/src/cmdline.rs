//! `berth-image cmdline`: show or extend the kernel command line of the boot entries in a
//! built disk image, before it is written to a disk or booted: for example
//! `berth.config=http://...` so the node fetches its config at first boot. The ESP is
//! found with `sfdisk --json` and edited with mtools; nothing is mounted.
//!
//! Only the entries on the image are changed: an OS update writes its own entry with the
//! command line of the new image (by then the config is persisted on the node).

use crate::tools::{self, ToolError};
use std::path::{Path, PathBuf};

/// What went wrong editing an image.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{0}: {1}")]
    Image(PathBuf, String),
    #[error("{0:?} is not a kernel argument: one word, such as key=value")]
    BadArg(String),
}

/// Byte offset of the partition labelled `berth-esp` (`sfdisk --json` on the image file).
fn esp_offset(disk: &Path) -> Result<u64, CmdlineError> {
    let bad = |m: String| CmdlineError::Image(disk.to_path_buf(), m);
    let out = tools::run(std::process::Command::new("sfdisk").arg("--json").arg(disk))?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| bad(format!("sfdisk --json printed something unexpected: {e}")))?;
    let table = &v["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    table["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "berth-esp")
        .and_then(|p| p["start"].as_u64())
        .map(|start| start * sector)
        .ok_or_else(|| bad("no partition labelled berth-esp: not a Berth disk image".into()))
}

/// `options` line of a boot entry with `args` added: an argument whose key (`key=` or the
/// whole word) is already there replaces it, so running this twice changes nothing.
pub fn with_args(entry: &str, args: &[String]) -> String {
    let mut out = String::new();
    for line in entry.lines() {
        match line.strip_prefix("options") {
            Some(rest) if rest.starts_with([' ', '\t']) => {
                let key = |w: &str| w.split('=').next().unwrap_or(w).to_string();
                let mut words: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
                for a in args {
                    match words.iter().position(|w| key(w) == key(a)) {
                        Some(i) => words[i] = a.clone(),
                        None => words.push(a.clone()),
                    }
                }
                out.push_str("options ");
                out.push_str(&words.join(" "));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The `options` line of a boot entry, without the keyword.
pub fn options(entry: &str) -> &str {
    entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or("")
        .trim()
}

/// Add `args` to every boot entry of the image at `disk` (none: only show them). Returns
/// each entry's file name and its command line afterwards.
pub fn edit(disk: &Path, args: &[String]) -> Result<Vec<(String, String)>, CmdlineError> {
    for a in args {
        if a.is_empty() || a.contains(char::is_whitespace) || a.contains('"') {
            return Err(CmdlineError::BadArg(a.clone()));
        }
    }
    let esp = PathBuf::from(format!("{}@@{}", disk.display(), esp_offset(disk)?));
    let listing = tools::run(tools::mtools("mdir", &esp).args(["-b", "::/loader/entries"]))?;
    let mut names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter(|n| n.ends_with(".conf"))
        .map(str::to_string)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(CmdlineError::Image(
            disk.to_path_buf(),
            "the ESP has no boot entries in /loader/entries".into(),
        ));
    }
    let tmp = tempfile::tempdir()
        .map_err(|e| CmdlineError::Image(disk.to_path_buf(), format!("temp dir: {e}")))?;
    let mut result = Vec::new();
    for name in names {
        let path = format!("::/loader/entries/{name}");
        let text = tools::run(tools::mtools("mtype", &esp).arg(&path))?;
        let text = if args.is_empty() {
            text
        } else {
            let new = with_args(&text, args);
            let local = tmp.path().join(&name);
            std::fs::write(&local, &new).map_err(|e| {
                CmdlineError::Image(disk.to_path_buf(), format!("{}: {e}", local.display()))
            })?;
            tools::run(
                tools::mtools("mcopy", &esp)
                    .arg("-o")
                    .arg(&local)
                    .arg(&path),
            )?;
            new
        };
        result.push((name, options(&text).to_string()));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = "title Berth 0.1.0 (slot a)\nversion 0.1.0\nlinux /berth/a/vmlinuz\noptions console=ttyS0 berth.slot=a quiet\n";

    #[test]
    fn args_are_added_once_and_replace_their_key() {
        let url = "berth.config=http://10.0.2.100:5000/berth.toml".to_string();
        let once = with_args(ENTRY, std::slice::from_ref(&url));
        assert_eq!(
            options(&once),
            "console=ttyS0 berth.slot=a quiet berth.config=http://10.0.2.100:5000/berth.toml"
        );
        assert!(once.starts_with("title Berth 0.1.0 (slot a)\nversion 0.1.0\n"));
        assert_eq!(with_args(&once, std::slice::from_ref(&url)), once);
        let other = with_args(&once, &["berth.config=http://h/x".into(), "quiet".into()]);
        assert_eq!(
            options(&other),
            "console=ttyS0 berth.slot=a quiet berth.config=http://h/x"
        );
    }

    #[test]
    fn a_file_that_is_not_a_disk_image_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.img");
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        let e = edit(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("x.img"), "{e}");
        let e = edit(&f, &["two words".into()]).unwrap_err().to_string();
        assert!(e.contains("not a kernel argument"), "{e}");
    }
}

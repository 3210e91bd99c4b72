//! Running OCI hooks: the state JSON on stdin, the hook's own args and env,
//! an optional timeout (the hook is killed when it expires).

use crate::plan::HookPlan;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of a hook run.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot start hook {path}")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {path} exited with {status}")]
    Failed { path: String, status: String },
    #[error("hook {path} timed out after {secs} s")]
    Timeout { path: String, secs: u64 },
}

/// Runs one hook to completion.
pub fn run(h: &HookPlan, state_json: &str) -> Result<(), HookError> {
    let path = h.path.display().to_string();
    let mut cmd = Command::new(&h.path);
    if let Some((first, rest)) = h.args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for kv in &h.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin must not make us fail.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let deadline = h.timeout.map(|t| Instant::now() + Duration::from_secs(t));
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(HookError::Failed {
                    path,
                    status: status.to_string(),
                })
            }
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { path, source }),
        }
        if let Some(d) = deadline {
            if Instant::now() >= d {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout {
                    path,
                    secs: h.timeout.unwrap_or(0),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_gets_state_on_stdin_and_failure_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let ok = HookPlan {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), format!("cat > {}", out.display())],
            env: vec![],
            timeout: Some(5),
        };
        run(&ok, "{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}");
        let bad = HookPlan {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "exit 3".into()],
            ..Default::default()
        };
        assert!(matches!(run(&bad, "{}"), Err(HookError::Failed { .. })));
        let slow = HookPlan {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "sleep 5".into()],
            env: vec![],
            timeout: Some(1),
        };
        assert!(matches!(run(&slow, "{}"), Err(HookError::Timeout { .. })));
    }
}

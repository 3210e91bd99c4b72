//! Progress for pulls and OS updates: the machine sends `PullProgress` signals while a
//! `Pull` or `Run` call is in flight, `UpdateProgress` during `UpdateApply`; this draws
//! them on stderr (bars only when it is a terminal).

use berth_api::ManagerProxy;
use futures_util::StreamExt;
use std::io::IsTerminal;

/// A running progress display; [`Bar::finish`] clears it.
pub struct Bar {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    /// Stop drawing.
    pub fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// A byte-count bar: message, bar, bytes done / total, rate, time left.
fn byte_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Start showing progress for pulls of `reference` (no-op unless `text` output goes to
/// people and stderr is a terminal).
pub async fn watch(m: &ManagerProxy<'static>, reference: &str, text: bool) -> Bar {
    if !text || !std::io::stderr().is_terminal() {
        return Bar {
            task: None,
            bar: None,
        };
    }
    let Ok(mut stream) = m.receive_pull_progress().await else {
        return Bar {
            task: None,
            bar: None,
        };
    };
    let bar = byte_bar();
    bar.set_message(format!("pulling {reference}"));
    let b = bar.clone();
    let want = reference.to_string();
    let task = tokio::spawn(async move {
        while let Some(sig) = stream.next().await {
            let Ok(a) = sig.args() else { continue };
            if a.reference != want {
                continue;
            }
            b.set_length(a.total);
            b.set_position(a.done);
            b.set_message(format!(
                "pulling {want} (layers {}/{})",
                a.layers_done, a.layers
            ));
        }
    });
    Bar {
        task: Some(task),
        bar: Some(bar),
    }
}

/// Show the progress of an update apply: one line per step on stderr, and a byte bar for
/// the download and verify phases when stderr is a terminal.
pub async fn watch_update(m: &ManagerProxy<'static>, text: bool) -> Bar {
    let none = Bar {
        task: None,
        bar: None,
    };
    if !text {
        return none;
    }
    let Ok(mut stream) = m.receive_update_progress().await else {
        return none;
    };
    let bar = std::io::stderr().is_terminal().then(byte_bar);
    let b = bar.clone();
    let task = tokio::spawn(async move {
        while let Some(sig) = stream.next().await {
            let Ok(a) = sig.args() else { continue };
            if a.total == 0 {
                let line = format!("{}: {}", a.phase, a.detail);
                match &b {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
                continue;
            }
            if let Some(b) = &b {
                b.set_message(a.phase.to_string());
                b.set_length(a.total);
                b.set_position(a.done);
            }
        }
    });
    Bar {
        task: Some(task),
        bar,
    }
}

//! What the CLI shows: progress of long steps, confirmations, tables.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use cloudtik_core::command::{OutputLine, OutputStream};
use cloudtik_core::{Error, ErrorKind, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

/// Shows progress messages on stderr: a spinner on a terminal, plain lines otherwise.
pub(crate) struct Progress {
    tx: mpsc::UnboundedSender<String>,
    output_tx: mpsc::UnboundedSender<OutputLine>,
    done: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts showing progress; `verbose` also shows the output of setup commands.
    pub(crate) fn start(verbose: bool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let (output_tx, mut output_rx) = mpsc::unbounded_channel::<OutputLine>();
        let (done, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let bar = tty.then(|| {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            let started = std::time::Instant::now();
            let mut finishing = false;
            loop {
                if finishing {
                    // Show what was sent before `finish`, then stop: senders held
                    // elsewhere (by the cluster) may outlive this.
                    while let Ok(m) = rx.try_recv() {
                        match &bar {
                            Some(b) => b.println(format!("==> {m}")),
                            None => eprintln!("==> [{:>5.1}s] {m}", started.elapsed().as_secs_f64()),
                        }
                    }
                    break;
                }
                tokio::select! {
                    _ = &mut done_rx => finishing = true,
                    msg = rx.recv() => match msg {
                        Some(m) => match &bar {
                            Some(b) => { b.println(format!("==> {m}")); b.set_message(m); }
                            None => eprintln!("==> [{:>5.1}s] {m}", started.elapsed().as_secs_f64()),
                        },
                        None => break,
                    },
                    line = output_rx.recv() => if let Some(l) = line.filter(|_| verbose) {
                        let prefix = if l.stream == OutputStream::Stderr { "    ! " } else { "    | " };
                        match &bar {
                            Some(b) => b.println(format!("{prefix}{}", l.line)),
                            None => eprintln!("{prefix}{}", l.line),
                        }
                    },
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        Progress {
            tx,
            output_tx,
            done,
            task,
        }
    }

    /// The sender of progress messages.
    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<String> {
        self.tx.clone()
    }

    /// The sender of command output.
    pub(crate) fn output(&self) -> mpsc::UnboundedSender<OutputLine> {
        self.output_tx.clone()
    }

    /// Says `msg`.
    pub(crate) fn say(&self, msg: impl Into<String>) {
        let _ = self.tx.send(msg.into());
    }

    /// Stops showing progress (waits until everything sent is shown).
    pub(crate) async fn finish(self) {
        let Progress {
            tx,
            output_tx,
            done,
            task,
        } = self;
        drop(tx);
        drop(output_tx);
        let _ = done.send(());
        let _ = task.await;
    }
}

/// Asks `question` unless `yes`; refuses when there is no terminal to ask on.
pub(crate) fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("{question} Not confirmed: there is no terminal to ask on; pass --yes to confirm"),
        )
        .with_context("aborted", "true"));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidConfig, "aborted: not confirmed").with_context("aborted", "true"))
    }
}

/// A table with a header row, for terminals and logs.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(header.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

/// Bytes as a short size (`1.0 GiB`).
pub(crate) fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(ErrorKind::Unexpected, "cannot print JSON").with_source(e))?;
    println!("{text}");
    Ok(())
}

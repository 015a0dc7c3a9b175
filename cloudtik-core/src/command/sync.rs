//! rsync invocations shared by the runners.

use std::path::Path;

use tokio::process::Command;

use super::{SyncOptions, io_error, tail_chars};
use crate::error::{Error, ErrorKind, Result};

/// `path` as an rsync source or destination of a directory's contents: with one trailing `/`.
pub(crate) fn dir_arg(path: &str) -> String {
    format!("{}/", path.trim_end_matches('/'))
}

/// Runs `rsync -a [options] [extra] SRC DST`; a failure is a `CommandFailed` error with
/// rsync's stderr. `rsh` is the `-e` remote shell, if any.
pub(crate) async fn rsync(rsh: Option<&str>, options: &SyncOptions, src: &str, dst: &str) -> Result<()> {
    let mut cmd = Command::new("rsync");
    cmd.arg("-a");
    if let Some(rsh) = rsh {
        cmd.arg("-e").arg(rsh);
    }
    cmd.args(options.rsync_args()).arg(src).arg(dst);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    tracing::debug!(target: "cloudtik::command", %src, %dst, "rsync");
    let out = cmd.output().await.map_err(|e| io_error("cannot run rsync", e))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out
        .status
        .code()
        .map_or_else(|| "a signal".to_string(), |c| c.to_string());
    Err(Error::new(
        ErrorKind::CommandFailed,
        format!(
            "rsync {src} -> {dst} failed with {code}: {}",
            tail_chars(stderr.trim(), 500)
        ),
    )
    .with_operation("rsync")
    .with_context("exit_code", code))
}

/// True when `path` is a local directory.
pub(crate) fn is_local_dir(path: &Path) -> bool {
    path.is_dir()
}

/// The argument for a local path: directories with a trailing `/` (their contents).
pub(crate) fn local_arg(path: &Path) -> String {
    let s = path.display().to_string();
    if is_local_dir(path) { dir_arg(&s) } else { s }
}

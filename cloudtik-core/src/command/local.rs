//! [`LocalRunner`]: commands on the machine the SDK runs on.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;

use super::sync::{dir_arg, local_arg, rsync};
use super::{
    CommandOutput, CommandRunner, CommandSpec, SyncOptions, collect_output, command_timed_out, io_error,
};
use crate::error::{Error, ErrorKind, Result};

/// Runs commands on this machine with `sh -c`, each in its own process group so a
/// timeout kills the command and everything it started. Transfers are local `rsync`
/// copies. Port forwarding is not supported (there is nothing to forward to).
#[derive(Debug, Clone, Default)]
pub struct LocalRunner {
    _private: (),
}

impl LocalRunner {
    /// A local runner.
    pub fn new() -> Self {
        LocalRunner::default()
    }
}

/// Kills a process group with `kill -KILL -PGID` (no unsafe code needed).
pub(crate) async fn kill_process_group(pgid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

#[async_trait]
impl CommandRunner for LocalRunner {
    fn describe(&self) -> String {
        "local".to_string()
    }

    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput> {
        tracing::debug!(target: "cloudtik::command", runner = "local", command = %spec.masked_command(), "run");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&spec.command)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| io_error("cannot start `sh` for a local command", e))?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let work = async {
            let (out, err) = collect_output(stdout, stderr, spec).await;
            let status = child.wait().await;
            (out, err, status)
        };
        let result = match spec.timeout {
            Some(t) => tokio::time::timeout(t, work).await.ok(),
            None => Some(work.await),
        };
        match result {
            Some((stdout, stderr, status)) => {
                let status = status.map_err(|e| io_error("waiting for a local command", e))?;
                Ok(CommandOutput {
                    exit_code: status.code(),
                    stdout,
                    stderr,
                })
            }
            None => {
                if let Some(pid) = pid {
                    kill_process_group(pid).await;
                }
                Err(command_timed_out(
                    "local",
                    spec,
                    spec.timeout.unwrap_or(Duration::ZERO),
                ))
            }
        }
    }

    async fn upload(&self, local: &Path, remote: &str, options: &SyncOptions) -> Result<()> {
        copy_local(&local_arg(local), local.is_dir(), remote, options).await
    }

    async fn download(&self, remote: &str, local: &Path, options: &SyncOptions) -> Result<()> {
        let is_dir = Path::new(remote).is_dir();
        let local = local.display().to_string();
        copy_local(
            &if is_dir {
                dir_arg(remote)
            } else {
                remote.to_string()
            },
            is_dir,
            &local,
            options,
        )
        .await
    }

    async fn forward_port(&self, _local_port: u16, _remote_host: &str, _remote_port: u16) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "the local runner cannot forward ports: the node is this machine",
        ))
    }

    async fn close_port_forward(
        &self,
        _local_port: u16,
        _remote_host: &str,
        _remote_port: u16,
    ) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "the local runner cannot forward ports: the node is this machine",
        ))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Copies `src` to `dst` on this machine with rsync, creating the destination's parent
/// (or the destination itself for directories).
async fn copy_local(src: &str, src_is_dir: bool, dst: &str, options: &SyncOptions) -> Result<()> {
    let dst_path = Path::new(dst);
    let mkdir = if src_is_dir {
        Some(dst_path)
    } else {
        dst_path.parent()
    };
    if let Some(dir) = mkdir.filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
    }
    let dst = if src_is_dir { dir_arg(dst) } else { dst.to_string() };
    rsync(None, options, src, &dst).await
}

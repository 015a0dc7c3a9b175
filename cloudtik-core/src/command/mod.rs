//! Command execution on nodes: the [`CommandRunner`] trait and its implementations.
//!
//! * [`LocalRunner`] runs commands on the machine the SDK runs on (`tokio::process`).
//! * [`SshRunner`] runs them on a node over SSH: one ControlMaster per node, reused by
//!   every command, by rsync and by port forwards; a cap on concurrent channels (sshd's
//!   `MaxSessions`); host keys pinned on first use into the cluster's own known-hosts file.
//! * [`DockerRunner`] wraps another runner for container execution mode: it starts the
//!   node's container and runs commands in it with `docker exec`.
//!
//! # Contract
//!
//! [`CommandRunner::run`] answers `Ok` for a command that ran, whatever its exit status;
//! [`CommandRunnerExt::run_checked`] turns a non-zero exit into an error of kind
//! [`ErrorKind::CommandFailed`] carrying the command, the exit code and the tail of its
//! output as context (`command`, `exit_code`, `output_tail`). A command past its timeout
//! is an error of kind [`ErrorKind::Timeout`], and the command is killed. Connection
//! problems are [`ErrorKind::Transient`]; a changed host key is
//! [`ErrorKind::PermissionDenied`].
//!
//! Values of secret-looking environment variables (names containing `PASSWORD`,
//! `SECRET`, `KEY`, `TOKEN` or `CREDENTIAL`) never appear in log lines or error messages:
//! see [`mask_secrets`].

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};

mod docker;
mod local;
mod mask;
#[cfg(feature = "ssh")]
mod ssh;
mod sync;

pub use docker::{ContainerSpec, ContainerStart, DockerRunner};
pub use local::LocalRunner;
pub use mask::{MASK, SECRET_NAME_PARTS, is_secret_name, mask_secrets};
#[cfg(feature = "ssh")]
pub use ssh::{JumpHost, SshOptions, SshRunner, TransferMode, known_host, pin_host_keys};

/// Default timeout of a command (CloudTik's 120 s).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How many bytes of each of stdout and stderr a [`CommandOutput`] keeps (the last ones).
pub const MAX_CAPTURED_BYTES: usize = 1 << 20;

/// How many characters of output an error's `output_tail` keeps.
pub const OUTPUT_TAIL_CHARS: usize = 2000;

/// Where a command runs when the runner is a [`DockerRunner`] (CloudTik's `run_env`).
/// Other runners ignore it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunEnv {
    /// In the container, except `docker ...` commands and empty commands, which run on the host.
    #[default]
    Auto,
    /// On the host.
    Host,
    /// In the container.
    Docker,
}

/// Which stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a command's output, as streamed to [`CommandSpec::stream_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Which stream.
    pub stream: OutputStream,
    /// The line, without its newline, with secrets masked.
    pub line: String,
}

/// A command to run: a shell command line plus its environment and limits.
#[derive(Clone)]
pub struct CommandSpec {
    /// The command line, run by `sh -c` (in a container: `docker exec ... sh -c`).
    pub command: String,
    /// Environment variables set for the command.
    pub env: BTreeMap<String, String>,
    /// Kill the command and fail with [`ErrorKind::Timeout`] after this long; `None` waits forever.
    pub timeout: Option<Duration>,
    /// Where to run it in container mode.
    pub run_env: RunEnv,
    /// Also send each line of output here while the command runs (secrets masked).
    pub stream_to: Option<mpsc::UnboundedSender<OutputLine>>,
}

impl Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, String> = self
            .env
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_name(k) {
                    MASK.to_string()
                } else {
                    v.clone()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("CommandSpec")
            .field("command", &self.masked_command())
            .field("env", &env)
            .field("timeout", &self.timeout)
            .field("run_env", &self.run_env)
            .field("streamed", &self.stream_to.is_some())
            .finish()
    }
}

impl CommandSpec {
    /// A command with no environment, the default timeout and `run_env` auto.
    pub fn new(command: impl Into<String>) -> Self {
        CommandSpec {
            command: command.into(),
            env: BTreeMap::new(),
            timeout: Some(DEFAULT_COMMAND_TIMEOUT),
            run_env: RunEnv::Auto,
            stream_to: None,
        }
    }

    /// Sets one environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets environment variables.
    #[must_use]
    pub fn envs<K: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets the timeout (`None`: wait forever).
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets where the command runs in container mode.
    #[must_use]
    pub fn run_env(mut self, run_env: RunEnv) -> Self {
        self.run_env = run_env;
        self
    }

    /// Streams output lines to `tx` while the command runs.
    #[must_use]
    pub fn stream_to(mut self, tx: mpsc::UnboundedSender<OutputLine>) -> Self {
        self.stream_to = Some(tx);
        self
    }

    /// The command line with secret values masked, for logs and errors.
    pub fn masked_command(&self) -> String {
        mask_secrets(&self.command, &self.env)
    }

    /// `text` with this command's secret values masked.
    pub fn mask(&self, text: &str) -> String {
        mask_secrets(text, &self.env)
    }

    /// The POSIX shell script that sets the environment and runs the command:
    /// `export K='v'; ... ; <command>`.
    pub fn script(&self) -> String {
        let mut script = String::new();
        for (k, v) in &self.env {
            script.push_str("export ");
            script.push_str(k);
            script.push('=');
            script.push_str(&shell_quote(v));
            script.push_str("; ");
        }
        script.push_str(&self.command);
        script
    }
}

/// What a command that ran produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when the command was killed by a signal.
    pub exit_code: Option<i32>,
    /// Standard output (the last [`MAX_CAPTURED_BYTES`] bytes, secrets masked).
    pub stdout: String,
    /// Standard error (the last [`MAX_CAPTURED_BYTES`] bytes, secrets masked).
    pub stderr: String,
}

impl CommandOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// The last [`OUTPUT_TAIL_CHARS`] characters of stderr, or of stdout when stderr is empty.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        tail_chars(text.trim_end(), OUTPUT_TAIL_CHARS).to_string()
    }
}

/// Options of file transfers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncOptions {
    /// rsync `--exclude` patterns (`rsync_exclude`).
    pub exclude: Vec<String>,
    /// Names of per-directory filter files, e.g. `.gitignore` (`rsync_filter`): passed as
    /// `--filter 'dir-merge,- NAME'`.
    pub filter: Vec<String>,
    /// Delete files at the destination that the source does not have.
    pub delete: bool,
}

impl SyncOptions {
    /// Sets the exclude patterns.
    #[must_use]
    pub fn with_exclude<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.exclude = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the filter file names.
    #[must_use]
    pub fn with_filter<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.filter = names.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `delete`.
    #[must_use]
    pub fn with_delete(mut self, delete: bool) -> Self {
        self.delete = delete;
        self
    }

    /// The rsync arguments for these options.
    pub fn rsync_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for p in &self.exclude {
            args.push(format!("--exclude={p}"));
        }
        for f in &self.filter {
            args.push(format!("--filter=dir-merge,- {f}"));
        }
        if self.delete {
            args.push("--delete".to_string());
        }
        args
    }
}

/// Runs commands and moves files on one node (or on the local machine).
///
/// # Transfers
///
/// `upload(local, remote)` copies a file to the path `remote`, or a directory's
/// *contents* into the directory `remote` (created if missing), like
/// `rsync -a local/ remote/`. `download` is the mirror image. Parent directories are
/// created.
///
/// Implementations must be cheap to share (`Arc<dyn CommandRunner>`) and safe to call
/// concurrently.
#[async_trait]
pub trait CommandRunner: Debug + Send + Sync + 'static {
    /// A short description of where commands run, for messages (`ssh root@10.0.0.2:22`).
    fn describe(&self) -> String;

    /// Runs a command. `Ok` whenever it ran, whatever its exit status; `Err` when it could
    /// not be started, timed out (kind `Timeout`, the command is killed), or the
    /// connection failed.
    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput>;

    /// Copies a local file or directory to the node.
    async fn upload(&self, local: &Path, remote: &str, options: &SyncOptions) -> Result<()>;

    /// Copies a file or directory of the node to the local machine.
    async fn download(&self, remote: &str, local: &Path, options: &SyncOptions) -> Result<()>;

    /// Forwards `127.0.0.1:local_port` on this machine to `remote_host:remote_port` as
    /// seen from the node (`attach -p`), until [`close_port_forward`](Self::close_port_forward)
    /// or until the runner is closed.
    async fn forward_port(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()>;

    /// Stops a forward set up by [`forward_port`](Self::forward_port).
    async fn close_port_forward(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()>;

    /// Releases the runner's resources (closes the SSH connection, ...). Commands run
    /// after this may reconnect.
    async fn close(&self) -> Result<()>;
}

#[async_trait]
impl<T: CommandRunner + ?Sized> CommandRunner for Arc<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput> {
        (**self).run(spec).await
    }
    async fn upload(&self, local: &Path, remote: &str, options: &SyncOptions) -> Result<()> {
        (**self).upload(local, remote, options).await
    }
    async fn download(&self, remote: &str, local: &Path, options: &SyncOptions) -> Result<()> {
        (**self).download(remote, local, options).await
    }
    async fn forward_port(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()> {
        (**self).forward_port(local_port, remote_host, remote_port).await
    }
    async fn close_port_forward(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()> {
        (**self)
            .close_port_forward(local_port, remote_host, remote_port)
            .await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

/// How often to try a command and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total (at least 1).
    pub tries: u32,
    /// Wait between tries.
    pub interval: Duration,
}

impl RetryPolicy {
    /// CloudTik's default interval between tries: 5 s.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// Initialization commands: 30 tries.
    pub const INITIALIZATION: RetryPolicy = RetryPolicy::new(30, Self::DEFAULT_INTERVAL);
    /// Setup commands: 5 tries.
    pub const SETUP: RetryPolicy = RetryPolicy::new(5, Self::DEFAULT_INTERVAL);
    /// Start commands: 3 tries.
    pub const START: RetryPolicy = RetryPolicy::new(3, Self::DEFAULT_INTERVAL);
    /// One try.
    pub const ONCE: RetryPolicy = RetryPolicy::new(1, Duration::ZERO);

    /// `tries` tries (at least one), `interval` apart.
    pub const fn new(tries: u32, interval: Duration) -> Self {
        RetryPolicy {
            tries: if tries == 0 { 1 } else { tries },
            interval,
        }
    }
}

/// Conveniences over [`CommandRunner`], implemented for every runner.
///
/// Do not implement this trait yourself.
#[async_trait]
pub trait CommandRunnerExt: CommandRunner {
    /// Runs a command; a non-zero exit is an error of kind [`ErrorKind::CommandFailed`]
    /// with context `command` (masked), `exit_code` and `output_tail` (masked).
    async fn run_checked(&self, spec: &CommandSpec) -> Result<CommandOutput> {
        let out = self.run(spec).await?;
        if out.success() {
            return Ok(out);
        }
        Err(command_failed(&self.describe(), spec, &out))
    }

    /// Runs `command` with the default timeout and returns its stdout; a non-zero exit is an error.
    async fn run_output(&self, command: &str) -> Result<String> {
        Ok(self.run_checked(&CommandSpec::new(command)).await?.stdout)
    }

    /// [`run_checked`](Self::run_checked) up to `policy.tries` times, `policy.interval`
    /// apart. Failed commands, time-outs and transient (connection) errors are retried;
    /// other errors (a changed host key, a bad config) are returned at once. The error
    /// of the last try is returned, marked persistent when it was temporary.
    async fn run_with_retry(&self, spec: &CommandSpec, policy: RetryPolicy) -> Result<CommandOutput> {
        let backoff = ConstantBuilder::default()
            .with_delay(policy.interval)
            .with_max_times(policy.tries.saturating_sub(1) as usize);
        let describe = self.describe();
        (|| self.run_checked(spec))
            .retry(backoff)
            .when(is_retryable_command_error)
            .notify(|err: &Error, wait: Duration| {
                tracing::info!(target: "cloudtik::command", runner = %describe, error = %crate::Report(&err), ?wait, "command failed; retrying");
            })
            .await
            .map_err(Error::set_persistent)
    }
}

impl<T: CommandRunner + ?Sized> CommandRunnerExt for T {}

/// True for errors [`CommandRunnerExt::run_with_retry`] tries again after.
pub fn is_retryable_command_error(err: &Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::CommandFailed | ErrorKind::Timeout | ErrorKind::Transient
    )
}

/// The error of a command that exited with a non-zero status (or was killed).
pub fn command_failed(runner: &str, spec: &CommandSpec, out: &CommandOutput) -> Error {
    let code = out
        .exit_code
        .map_or_else(|| "killed by a signal".to_string(), |c| c.to_string());
    let tail = spec.mask(&out.tail());
    let last_line = tail.lines().last().unwrap_or("").to_string();
    let mut message = format!("`{}` exited with {code}", spec.masked_command());
    if !last_line.is_empty() {
        message.push_str(": ");
        message.push_str(&last_line);
    }
    Error::new(ErrorKind::CommandFailed, message)
        .with_context("runner", runner)
        .with_context("command", spec.masked_command())
        .with_context("exit_code", code)
        .with_context("output_tail", tail)
}

/// The error of a command past its timeout.
pub(crate) fn command_timed_out(runner: &str, spec: &CommandSpec, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "`{}` did not finish within {timeout:?} and was killed",
            spec.masked_command()
        ),
    )
    .with_context("runner", runner)
    .with_context("command", spec.masked_command())
}

/// `s` quoted for a POSIX shell: `'...'` with `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The parent directory of a `/`-separated path (`.` when none).
pub(crate) fn remote_parent(remote: &str) -> String {
    match remote.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/".to_string(),
        Some((parent, _)) => parent.to_string(),
        None => ".".to_string(),
    }
}

/// The last `n` characters of `s`.
pub(crate) fn tail_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let skip = count - n;
    let idx = s.char_indices().nth(skip).map_or(s.len(), |(i, _)| i);
    &s[idx..]
}

/// Keeps the last [`MAX_CAPTURED_BYTES`] of a stream.
fn push_capped(buf: &mut String, text: &str) {
    buf.push_str(text);
    if buf.len() > MAX_CAPTURED_BYTES {
        let mut cut = buf.len() - MAX_CAPTURED_BYTES;
        while !buf.is_char_boundary(cut) {
            cut += 1;
        }
        buf.drain(..cut);
    }
}

/// Reads stdout and stderr to their ends, line by line, masking secrets, streaming each
/// line to `spec.stream_to` and keeping the last bytes of each.
pub(crate) async fn collect_output<O, E>(
    stdout: Option<O>,
    stderr: Option<E>,
    spec: &CommandSpec,
) -> (String, String)
where
    O: AsyncRead + Unpin + Send,
    E: AsyncRead + Unpin + Send,
{
    async fn read_stream<R: AsyncRead + Unpin>(
        r: Option<R>,
        stream: OutputStream,
        spec: &CommandSpec,
    ) -> String {
        let mut buf = String::new();
        let Some(r) = r else { return buf };
        let mut reader = BufReader::new(r);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = spec.mask(&String::from_utf8_lossy(&raw));
                    if let Some(tx) = &spec.stream_to {
                        let _ = tx.send(OutputLine {
                            stream,
                            line: text.trim_end_matches(['\n', '\r']).to_string(),
                        });
                    }
                    push_capped(&mut buf, &text);
                }
            }
        }
        buf
    }
    tokio::join!(
        read_stream(stdout, OutputStream::Stdout, spec),
        read_stream(stderr, OutputStream::Stderr, spec)
    )
}

/// An `io::Error` of a spawned helper process as an SDK error.
pub(crate) fn io_error(what: impl fmt::Display, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Unexpected,
    };
    Error::new(kind, format!("{what}: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_round_trips_through_sh() {
        for s in ["plain", "with space", "it's", "$HOME `x` \"q\"", ""] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn failures_name_command_code_and_tail_with_secrets_masked() {
        let spec = CommandSpec::new("login --password hunter2").env("DB_PASSWORD", "hunter2");
        let out = CommandOutput {
            exit_code: Some(3),
            stdout: String::new(),
            stderr: "first\nbad password hunter2\n".into(),
        };
        let e = command_failed("local", &spec, &out);
        assert_eq!(e.kind(), ErrorKind::CommandFailed);
        assert_eq!(e.context_value("exit_code"), Some("3"));
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("bad password ******"), "{text}");
        assert!(format!("{spec:?}").contains(MASK));
        assert!(!format!("{spec:?}").contains("hunter2"));
    }

    #[test]
    fn tails_are_cut_at_char_boundaries() {
        assert_eq!(tail_chars("héllo", 3), "llo");
        assert_eq!(tail_chars("hé", 5), "hé");
        let mut buf = String::new();
        for _ in 0..(MAX_CAPTURED_BYTES / 4) {
            push_capped(&mut buf, "ééé\n");
        }
        assert!(buf.len() <= MAX_CAPTURED_BYTES);
    }

    #[test]
    fn rsync_args_of_options() {
        let o = SyncOptions::default()
            .with_exclude(["*.pyc", ".git"])
            .with_filter([".gitignore"])
            .with_delete(true);
        assert_eq!(
            o.rsync_args(),
            vec![
                "--exclude=*.pyc",
                "--exclude=.git",
                "--filter=dir-merge,- .gitignore",
                "--delete"
            ]
        );
    }
}

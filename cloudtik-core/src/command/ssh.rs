//! [`SshRunner`]: commands on a node over SSH, through one ControlMaster per node.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use openssh::{ControlPersist, ForwardType, KnownHosts, Session, SessionBuilder, Socket};
use openssh_sftp_client::{Sftp, SftpOptions};
use tokio::sync::{Mutex, OnceCell, Semaphore};

use super::sync::{dir_arg, local_arg, rsync};
use super::{
    CommandOutput, CommandRunner, CommandSpec, SyncOptions, collect_output, command_timed_out, io_error,
    remote_parent, shell_quote,
};
use crate::config::AuthConfig;
use crate::error::{Error, ErrorKind, Result};

/// A host to jump through (`ProxyJump`) to reach nodes that have internal addresses only,
/// usually the head. It is reached with the same key and known-hosts file as the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    /// Address of the jump host as this machine reaches it.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
    /// The user to log in as on it.
    pub user: String,
}

/// How [`SshRunner`] moves files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransferMode {
    /// rsync over the node's connection when the node has `rsync`, else SFTP.
    #[default]
    Auto,
    /// Always rsync.
    Rsync,
    /// Always SFTP (no excludes of filter files; exclude patterns are applied).
    Sftp,
}

/// How [`SshRunner`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshOptions {
    /// The user to log in as.
    pub user: String,
    /// The SSH port.
    pub port: u16,
    /// The private key file (the only identity offered).
    pub private_key: PathBuf,
    /// The cluster's own known-hosts file. A changed key is always refused.
    pub known_hosts_file: PathBuf,
    /// Only keys already in [`known_hosts_file`](Self::known_hosts_file) are accepted
    /// (`StrictHostKeyChecking=yes`): set it once the node's key is pinned there before
    /// the first connection (see [`pin_host_keys`]). Unset (the default), a node not in
    /// the file yet is trusted on first use and its key added (`accept-new`).
    pub strict_host_keys: bool,
    /// TCP connect timeout (`ConnectTimeout`).
    pub connect_timeout: Duration,
    /// Keepalive interval (`ServerAliveInterval`).
    pub keepalive_interval: Duration,
    /// Keepalives missed before the connection is dropped (`ServerAliveCountMax`).
    pub keepalive_count_max: u32,
    /// Concurrent channels (commands, transfers) on the node's connection. sshd's
    /// `MaxSessions` defaults to 10; the default here, 8, stays below it.
    pub max_channels: usize,
    /// A host to jump through, for nodes with internal addresses only.
    pub jump: Option<JumpHost>,
    /// A `ProxyCommand`, instead of a jump host.
    pub proxy_command: Option<String>,
    /// Where the control socket and generated ssh config live (short paths: Unix
    /// sockets are limited to about 100 bytes).
    pub control_dir: PathBuf,
    /// How files move.
    pub transfer: TransferMode,
    /// The name the node's host key is pinned under instead of its address
    /// (`HostKeyAlias`): the node's id, so a new node that reuses an old node's address
    /// is a new host, while a node whose key changed is still refused.
    pub host_key_alias: Option<String>,
}

impl SshOptions {
    /// Options with CloudTik's defaults: port 22, connect timeout 10 s, keepalive every
    /// 5 s (10 missed), 8 channels, control sockets in the temp directory.
    pub fn new(
        user: impl Into<String>,
        private_key: impl Into<PathBuf>,
        known_hosts_file: impl Into<PathBuf>,
    ) -> Self {
        SshOptions {
            user: user.into(),
            port: 22,
            private_key: private_key.into(),
            known_hosts_file: known_hosts_file.into(),
            strict_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count_max: 10,
            max_channels: 8,
            jump: None,
            proxy_command: None,
            control_dir: std::env::temp_dir(),
            transfer: TransferMode::Auto,
            host_key_alias: None,
        }
    }

    /// Options from a cluster's `auth` section; the known-hosts file is the cluster's own.
    pub fn from_auth(auth: &AuthConfig, known_hosts_file: impl Into<PathBuf>) -> Result<Self> {
        let user = auth
            .ssh_user
            .clone()
            .ok_or_else(|| Error::config("auth.ssh_user", "the SSH user is required to reach nodes"))?;
        let key = auth.ssh_private_key.clone().ok_or_else(|| {
            Error::config(
                "auth.ssh_private_key",
                "a private key file is required to reach nodes",
            )
        })?;
        let mut o = SshOptions::new(user, crate::config::hash::expand_home(&key), known_hosts_file);
        if let Some(port) = auth.ssh_port {
            o.port = port;
        }
        o.proxy_command = auth.ssh_proxy_command.clone();
        Ok(o)
    }

    /// Pins the node's host key under `alias` (see [`SshOptions::host_key_alias`]).
    #[must_use]
    pub fn with_host_key_alias(mut self, alias: impl Into<String>) -> Self {
        self.host_key_alias = Some(alias.into());
        self
    }

    /// Accepts only host keys already pinned in the known-hosts file (see
    /// [`SshOptions::strict_host_keys`]).
    #[must_use]
    pub fn with_strict_host_keys(mut self, strict: bool) -> Self {
        self.strict_host_keys = strict;
        self
    }

    /// Sets the port.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the keepalive interval and the keepalives missed before giving up.
    #[must_use]
    pub fn with_keepalive(mut self, interval: Duration, count_max: u32) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_count_max = count_max;
        self
    }

    /// Sets the cap on concurrent channels (at least 1).
    #[must_use]
    pub fn with_max_channels(mut self, n: usize) -> Self {
        self.max_channels = n.max(1);
        self
    }

    /// Jumps through `jump` to reach the node.
    #[must_use]
    pub fn with_jump(mut self, jump: JumpHost) -> Self {
        self.jump = Some(jump);
        self
    }

    /// Sets the control directory.
    #[must_use]
    pub fn with_control_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.control_dir = dir.into();
        self
    }

    /// Sets the transfer mode.
    #[must_use]
    pub fn with_transfer(mut self, mode: TransferMode) -> Self {
        self.transfer = mode;
        self
    }

    /// The ssh client config the runner writes and passes with `-F`. It applies to the
    /// node and to the jump host alike (ssh passes `-F` on to the jump connection), so
    /// both use the same key, the cluster's known-hosts file and the same timeouts.
    pub fn ssh_config(&self) -> String {
        let mut c = String::from("Host *\n");
        let mut line = |k: &str, v: &str| {
            c.push_str("  ");
            c.push_str(k);
            c.push(' ');
            c.push_str(v);
            c.push('\n');
        };
        line(
            "IdentityFile",
            &quote_config(&self.private_key.display().to_string()),
        );
        line("IdentitiesOnly", "yes");
        line(
            "UserKnownHostsFile",
            &quote_config(&self.known_hosts_file.display().to_string()),
        );
        line("GlobalKnownHostsFile", "/dev/null");
        line(
            "StrictHostKeyChecking",
            if self.strict_host_keys {
                "yes"
            } else {
                "accept-new"
            },
        );
        line("BatchMode", "yes");
        line("PasswordAuthentication", "no");
        line(
            "ConnectTimeout",
            &self.connect_timeout.as_secs().max(1).to_string(),
        );
        line(
            "ServerAliveInterval",
            &self.keepalive_interval.as_secs().max(1).to_string(),
        );
        line("ServerAliveCountMax", &self.keepalive_count_max.to_string());
        line("ExitOnForwardFailure", "yes");
        c
    }
}

/// Whether `file` (a known-hosts file) has a key for `host` (a name or alias as the
/// first field of a line; hashed names are not matched).
pub fn known_host(file: &Path, host: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|text| {
        text.lines().any(|l| {
            let l = l.trim();
            !l.starts_with('#')
                && l.split_whitespace()
                    .next()
                    .is_some_and(|hosts| hosts.split(',').any(|h| h == host))
        })
    })
}

/// Pins `keys` (public key lines, `<type> <base64> [comment]`, as in a `.pub` file) for
/// `host` (the node's [`HostKeyAlias`](SshOptions::host_key_alias)) in the known-hosts
/// `file`, unless the file has a key for `host` already: a pinned key is never replaced
/// here (a changed key must be refused, and removed by hand). Returns whether keys were
/// added. Keys that are not `<type> <base64>` are an error, nothing is written then.
pub fn pin_host_keys(file: &Path, host: &str, keys: &[String]) -> Result<bool> {
    if known_host(file, host) {
        return Ok(false);
    }
    let mut text = String::new();
    for k in keys {
        let mut parts = k.split_whitespace();
        let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("the host key of {host} is not `<type> <base64>`: {k:?}"),
            ));
        };
        let ok = (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
            && b64.len() % 4 == 0
            && b64.len() >= 16
            && b64
                .trim_end_matches('=')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
        if !ok {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("the host key of {host} is not a public key line: {k:?}"),
            ));
        }
        text.push_str(&format!("{host} {kind} {b64}\n"));
    }
    if text.is_empty() {
        return Ok(false);
    }
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error(format!("cannot create {}", parent.display()), e))?;
    }
    // One append of whole lines: concurrent pins of other nodes interleave by line.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| io_error(format!("cannot write {}", file.display()), e))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .map_err(|e| io_error(format!("cannot write {}", file.display()), e))?;
    Ok(true)
}

fn quote_config(s: &str) -> String {
    if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

/// A live connection: the ControlMaster session and the remote shell rsync uses with it.
struct Connection {
    session: Arc<Session>,
    rsh: String,
}

/// Runs commands on one node over SSH.
///
/// * **One connection.** The first command starts an `ssh` ControlMaster (through the
///   `openssh` crate, native mux); every later command, rsync transfer and port forward
///   opens a channel on it. rsync uses `-e "ssh -o ControlPath=<socket> -o ControlMaster=no"`.
///   If the master dies, the next command reconnects.
/// * **Channel cap.** At most [`SshOptions::max_channels`] channels at once (commands
///   wait for a permit), below sshd's `MaxSessions` (10 by default), which would refuse
///   the rest.
/// * **Host keys.** Keys are checked against [`SshOptions::known_hosts_file`]: with
///   [`SshOptions::strict_host_keys`], only keys pinned there beforehand (by
///   [`pin_host_keys`], from what the provider tells) are accepted; without it, a new
///   node's key is trusted on first use and added. A node whose key changed is refused with an error of kind
///   [`ErrorKind::PermissionDenied`] naming the file and the line to remove.
/// * **Time-outs.** A command past its timeout fails with [`ErrorKind::Timeout`]; its
///   channel is closed and, where the node has `timeout(1)`, the command's process group
///   is killed on the node a moment later.
pub struct SshRunner {
    // Field order matters: the connection drops (shutting the master down through its
    // socket) before the directory holding that socket is removed.
    connection: Mutex<Option<Arc<Connection>>>,
    host: String,
    options: SshOptions,
    permits: Arc<Semaphore>,
    has_rsync: OnceCell<bool>,
    config_dir: tempfile::TempDir,
}

impl fmt::Debug for SshRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshRunner")
            .field("host", &self.host)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SshRunner {
    /// The `host:path` argument of rsync for a remote path (a folder gets a trailing `/`).
    fn rsync_remote(&self, remote: &str, is_dir: bool) -> String {
        let path = if is_dir {
            dir_arg(remote)
        } else {
            remote.to_string()
        };
        format!("{}:{}", self.host, path)
    }

    /// A runner for `host` (an address or name). Connects lazily, on the first command.
    pub fn new(host: impl Into<String>, options: SshOptions) -> Result<Self> {
        std::fs::create_dir_all(&options.control_dir)
            .map_err(|e| io_error(format!("cannot create {}", options.control_dir.display()), e))?;
        if let Some(parent) = options.known_hosts_file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_error(format!("cannot create {}", parent.display()), e))?;
        }
        let config_dir = tempfile::Builder::new()
            .prefix("ctk-ssh")
            .tempdir_in(&options.control_dir)
            .map_err(|e| io_error("cannot create the ssh config directory", e))?;
        let host: String = host.into();
        let mut config = options.ssh_config();
        if let Some(proxy) = &options.proxy_command {
            config = format!("Host *\n  ProxyCommand {proxy}\n{config}");
        }
        if let Some(alias) = &options.host_key_alias {
            // Only for the node itself, not for a jump host on the way.
            config = format!(
                "Host {}\n  HostKeyAlias {}\n{config}",
                quote_config(&host),
                quote_config(alias)
            );
        }
        std::fs::write(config_dir.path().join("config"), config)
            .map_err(|e| io_error("cannot write the ssh config", e))?;
        Ok(SshRunner {
            host,
            permits: Arc::new(Semaphore::new(options.max_channels.max(1))),
            options,
            config_dir,
            connection: Mutex::new(None),
            has_rsync: OnceCell::new(),
        })
    }

    /// The node's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The options.
    pub fn options(&self) -> &SshOptions {
        &self.options
    }

    /// The generated ssh config file (`ssh -F`).
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.path().join("config")
    }

    /// Connects now if not connected yet; returns the control socket of the master.
    /// Errors: `Transient` (refused, unreachable), `Timeout`, `Unauthenticated`, or
    /// `PermissionDenied` when the host key changed.
    pub async fn connect(&self) -> Result<PathBuf> {
        let conn = self.connection().await?;
        Ok(conn.session.control_socket().to_path_buf())
    }

    /// The `ssh` command line that reaches the node through the master (for rsync and
    /// for users who want a shell: `attach`).
    pub async fn ssh_command(&self) -> Result<String> {
        Ok(self.connection().await?.rsh.clone())
    }

    async fn connection(&self) -> Result<Arc<Connection>> {
        let mut guard = self.connection.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let o = &self.options;
        let mut b = SessionBuilder::default();
        b.user(o.user.clone())
            .port(o.port)
            .keyfile(&o.private_key)
            .known_hosts_check(if o.strict_host_keys {
                KnownHosts::Strict
            } else {
                KnownHosts::Add
            })
            .user_known_hosts_file(&o.known_hosts_file)
            .connect_timeout(o.connect_timeout)
            .server_alive_interval(o.keepalive_interval)
            .control_directory(self.config_dir.path())
            // A master nobody uses exits after 10 minutes (a leaked one too); the next
            // command reconnects.
            .control_persist(ControlPersist::IdleFor(MASTER_IDLE_EXIT))
            .config_file(self.config_file());
        if let Some(j) = &o.jump {
            b.jump_hosts([format!("{}@{}:{}", j.user, j.host, j.port)]);
        }
        tracing::debug!(target: "cloudtik::command", host = %self.host, "ssh connect");
        // The master's own ConnectTimeout bounds the TCP connect; this bounds the rest
        // (a jump hop, a server that accepts but never answers).
        let limit = o.connect_timeout * 3 + Duration::from_secs(5);
        let session = match tokio::time::timeout(limit, b.connect_mux(&self.host)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.connect_error(e)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no SSH connection to {} within {limit:?}", self.describe()),
                ));
            }
        };
        let rsh = format!(
            "ssh -F {} -o ControlPath={} -o ControlMaster=no -p {} -l {}",
            shell_quote(&self.config_file().display().to_string()),
            shell_quote(&session.control_socket().display().to_string()),
            o.port,
            shell_quote(&o.user)
        );
        let conn = Arc::new(Connection {
            session: Arc::new(session),
            rsh,
        });
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection if its master is gone, so the next call reconnects.
    async fn drop_if_dead(&self) {
        let mut guard = self.connection.lock().await;
        if let Some(c) = guard.as_ref()
            && c.session.check().await.is_err()
        {
            *guard = None;
        }
    }

    /// Runs a command once on the current connection (connecting first if needed).
    async fn run_once(&self, spec: &CommandSpec) -> Result<CommandOutput> {
        let conn = self.connection().await?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorKind::Unexpected, "the channel semaphore was closed"))?;
        tracing::debug!(target: "cloudtik::command", runner = %self.describe(), command = %spec.masked_command(), "run");
        let script = shell_quote(&spec.script());
        let remote = match spec.timeout {
            // The local timeout fires first; the remote one kills what is left behind.
            Some(t) => format!(
                "if command -v timeout >/dev/null 2>&1; then exec timeout -s KILL {} sh -c {script}; else exec sh -c {script}; fi",
                t.as_secs() + 2
            ),
            None => format!("exec sh -c {script}"),
        };
        let mut cmd = conn.session.raw_command(remote);
        cmd.stdin(openssh::Stdio::null())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        // sshd counts a session until its close handshake is done, a little after the
        // command ended here: a new channel can be refused for `MaxSessions` although
        // fewer than `max_channels` run. Such refusals are retried after a short wait.
        let mut refusals = 0u32;
        let mut child = loop {
            match cmd.spawn().await {
                Ok(c) => break c,
                Err(e) if is_session_refusal(&e) && refusals < MAX_SESSION_REFUSALS => {
                    refusals += 1;
                    tracing::debug!(target: "cloudtik::command", runner = %self.describe(), refusals, "session refused; retrying");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(refusals.min(10)))).await;
                }
                Err(e) => {
                    drop(conn);
                    self.drop_if_dead().await;
                    return Err(self
                        .channel_error("cannot start a command", e)
                        .with_context("ssh_stage", "start"));
                }
            }
        };
        let stdout = child.stdout().take();
        let stderr = child.stderr().take();
        let work = async {
            let (out, err) = collect_output(stdout, stderr, spec).await;
            (out, err, child.wait().await)
        };
        let result = match spec.timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r,
                Err(_) => return Err(command_timed_out(&self.describe(), spec, t)),
            },
            None => work.await,
        };
        let (stdout, stderr, status) = result;
        let exit_code = match status {
            Ok(status) => status.code(),
            Err(openssh::Error::RemoteProcessTerminated) => {
                // Killed by a signal, or the connection dropped: tell them apart.
                drop(conn);
                self.drop_if_dead().await;
                if self.connection.lock().await.is_none() {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        format!(
                            "SSH to {}: the connection dropped while `{}` ran",
                            self.describe(),
                            spec.masked_command()
                        ),
                    ));
                }
                None
            }
            // openssh reports exit status 127 as an error ("remote command not found"):
            // it is the command's status (the shell found no such program, or dash's
            // `command -v` found nothing), a failed command like any other.
            Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Some(127),
            Err(e) => {
                drop(conn);
                self.drop_if_dead().await;
                return Err(self.channel_error("waiting for a command", e));
            }
        };
        Ok(CommandOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    fn connect_error(&self, e: openssh::Error) -> Error {
        let (io_kind, text) = match &e {
            openssh::Error::Connect(io) | openssh::Error::Master(io) => (Some(io.kind()), io.to_string()),
            other => (None, other.to_string()),
        };
        let text = text.trim().to_string();
        let kh = self.options.known_hosts_file.display();
        if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || text.contains("Host key verification failed")
        {
            let entry = if let Some(alias) = &self.options.host_key_alias {
                alias.clone()
            } else if self.options.port == 22 {
                self.host.clone()
            } else {
                format!("[{}]:{}", self.host, self.options.port)
            };
            return Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "the host key of {} (or of its jump host) changed since it was pinned in {kh}; \
                     refusing to connect. If the node was replaced on purpose, remove its old key with \
                     `ssh-keygen -R '{entry}' -f {kh}` (or edit that file) and try again",
                    self.describe()
                ),
            )
            .with_operation("ssh_connect")
            .with_context("known_hosts", kh);
        }
        let (kind, what) = if io_kind == Some(std::io::ErrorKind::ConnectionRefused)
            || text.contains("Connection refused")
        {
            (ErrorKind::Transient, "connection refused")
        } else if io_kind == Some(std::io::ErrorKind::TimedOut) || text.contains("timed out") {
            (ErrorKind::Timeout, "connection timed out")
        } else if io_kind == Some(std::io::ErrorKind::PermissionDenied) || text.contains("Permission denied")
        {
            (ErrorKind::Unauthenticated, "authentication failed")
        } else {
            (ErrorKind::Transient, "connection failed")
        };
        Error::new(kind, format!("SSH to {}: {what}: {text}", self.describe()))
            .with_operation("ssh_connect")
            .set_temporary_if(kind != ErrorKind::Unauthenticated)
    }

    fn channel_error(&self, what: &str, e: openssh::Error) -> Error {
        Error::new(
            ErrorKind::Transient,
            format!("SSH to {}: {what}: {}", self.describe(), error_chain(&e)),
        )
    }

    /// `path` for the remote shell: `~/x` becomes `"$HOME"/'x'`, the rest is quoted.
    fn shell_path(path: &str) -> String {
        if path == "~" {
            return "\"$HOME\"".to_string();
        }
        match path.strip_prefix("~/") {
            Some(rest) => format!("\"$HOME\"/{}", shell_quote(rest)),
            None => shell_quote(path),
        }
    }

    async fn remote_has_rsync(&self) -> Result<bool> {
        match self.options.transfer {
            TransferMode::Rsync => return Ok(true),
            TransferMode::Sftp => return Ok(false),
            TransferMode::Auto => {}
        }
        self.has_rsync
            .get_or_try_init(|| async {
                let out = self
                    .run(
                        &CommandSpec::new("command -v rsync >/dev/null 2>&1")
                            .timeout(Some(Duration::from_secs(30))),
                    )
                    .await?;
                Ok::<_, Error>(out.success())
            })
            .await
            .copied()
    }

    async fn remote_is_dir(&self, remote: &str) -> Result<bool> {
        let out = self
            .run(
                &CommandSpec::new(format!("test -d {}", Self::shell_path(remote)))
                    .timeout(Some(Duration::from_secs(30))),
            )
            .await?;
        Ok(out.success())
    }

    async fn mkdir(&self, remote_dir: &str) -> Result<()> {
        use super::CommandRunnerExt;
        self.run_checked(
            &CommandSpec::new(format!("mkdir -p {}", Self::shell_path(remote_dir)))
                .timeout(Some(Duration::from_secs(60))),
        )
        .await
        .map(|_| ())
    }

    async fn sftp(&self) -> Result<Sftp> {
        let conn = self.connection().await?;
        Sftp::from_clonable_session(conn.session.clone(), SftpOptions::default())
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transient,
                    format!("cannot open SFTP on {}: {e:#}", self.describe()),
                )
            })
    }
}

trait SetTemporaryIf {
    fn set_temporary_if(self, yes: bool) -> Self;
}

impl SetTemporaryIf for Error {
    fn set_temporary_if(self, yes: bool) -> Self {
        if yes { self.set_temporary() } else { self }
    }
}

/// A remote path as SFTP sees it: relative paths (and `~/...`) are relative to the home directory.
fn sftp_path(remote: &str) -> PathBuf {
    let p = remote.strip_prefix("~/").unwrap_or(remote);
    let p = if p == "~" { "." } else { p };
    PathBuf::from(p)
}

#[async_trait]
impl CommandRunner for SshRunner {
    fn describe(&self) -> String {
        match &self.options.jump {
            Some(j) => format!(
                "ssh {}@{}:{} via {}@{}:{}",
                self.options.user, self.host, self.options.port, j.user, j.host, j.port
            ),
            None => format!("ssh {}@{}:{}", self.options.user, self.host, self.options.port),
        }
    }

    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput> {
        match self.run_once(spec).await {
            // The master was gone before the command started (idle exit, killed):
            // reconnect once and run it.
            Err(e)
                if e.context_value("ssh_stage") == Some("start")
                    && self.connection.lock().await.is_none() =>
            {
                tracing::debug!(target: "cloudtik::command", runner = %self.describe(), error = %crate::Report(&e), "reconnecting");
                self.run_once(spec).await
            }
            other => other,
        }
    }

    async fn upload(&self, local: &Path, remote: &str, options: &SyncOptions) -> Result<()> {
        let is_dir = local.is_dir();
        if !is_dir && !local.exists() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("{} does not exist", local.display()),
            ));
        }
        self.mkdir(&if is_dir {
            remote.to_string()
        } else {
            remote_parent(remote)
        })
        .await?;
        if self.remote_has_rsync().await? {
            let conn = self.connection().await?;
            let _permit = self.permits.acquire().await.map_err(|_| closed())?;
            let dst = self.rsync_remote(remote, is_dir);
            rsync(Some(&conn.rsh), options, &local_arg(local), &dst).await
        } else {
            let sftp = self.sftp().await?;
            let _permit = self.permits.acquire().await.map_err(|_| closed())?;
            let result = sftp_upload(&sftp, local, &sftp_path(remote), options).await;
            let _ = sftp.close().await;
            result.map_err(|e| e.with_context("runner", self.describe()))
        }
    }

    async fn download(&self, remote: &str, local: &Path, options: &SyncOptions) -> Result<()> {
        let is_dir = self.remote_is_dir(remote).await?;
        let mkdir = if is_dir { Some(local) } else { local.parent() };
        if let Some(dir) = mkdir.filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
        }
        if self.remote_has_rsync().await? {
            let conn = self.connection().await?;
            let _permit = self.permits.acquire().await.map_err(|_| closed())?;
            let src = self.rsync_remote(remote, is_dir);
            let local = local.display().to_string();
            rsync(
                Some(&conn.rsh),
                options,
                &src,
                &if is_dir { dir_arg(&local) } else { local },
            )
            .await
        } else {
            let sftp = self.sftp().await?;
            let _permit = self.permits.acquire().await.map_err(|_| closed())?;
            let result = sftp_download(&sftp, &sftp_path(remote), local, is_dir, options).await;
            let _ = sftp.close().await;
            result.map_err(|e| e.with_context("runner", self.describe()))
        }
    }

    async fn forward_port(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()> {
        let conn = self.connection().await?;
        conn.session
            .request_port_forward(
                ForwardType::Local,
                Socket::new("127.0.0.1", local_port),
                Socket::new(remote_host, remote_port),
            )
            .await
            .map_err(|e| self.channel_error("cannot forward a port", e))
    }

    async fn close_port_forward(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()> {
        let conn = self.connection().await?;
        conn.session
            .close_port_forward(
                ForwardType::Local,
                Socket::new("127.0.0.1", local_port),
                Socket::new(remote_host, remote_port),
            )
            .await
            .map_err(|e| self.channel_error("cannot close a port forward", e))
    }

    async fn close(&self) -> Result<()> {
        let conn = self.connection.lock().await.take();
        if let Some(conn) = conn
            && let Ok(conn) = Arc::try_unwrap(conn)
            && let Ok(session) = Arc::try_unwrap(conn.session)
        {
            session.close().await.map_err(|e| {
                Error::new(
                    ErrorKind::Transient,
                    format!("closing SSH to {}: {e:#}", self.describe()),
                )
            })?;
        }
        // A connection still used by a running command closes when that command ends.
        Ok(())
    }
}

/// Seconds an idle ControlMaster lives.
const MASTER_IDLE_EXIT: std::num::NonZeroUsize = std::num::NonZeroUsize::new(600).unwrap();

/// How often a refused session open is retried before the refusal is an error.
const MAX_SESSION_REFUSALS: u32 = 50;

/// True when the server refused to open a session (sshd's `MaxSessions`).
fn is_session_refusal(e: &openssh::Error) -> bool {
    error_chain(e).contains("open refused")
}

/// An error and its sources, joined with `: ` (skipping a source that repeats its parent).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if text != last {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cur = s.source();
    }
    out
}

fn closed() -> Error {
    Error::new(ErrorKind::Unexpected, "the channel semaphore was closed")
}

fn sftp_err(what: impl fmt::Display, e: openssh_sftp_client::Error) -> Error {
    Error::new(ErrorKind::Transient, format!("SFTP {what}: {e:#}"))
}

/// True when `rel` (a `/`-separated path relative to the transfer's root) matches an
/// rsync-style exclude pattern: patterns without `/` match any path component; patterns
/// with `/` match the whole relative path (a leading `/` anchors at the root).
pub(crate) fn excluded(rel: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('/');
        if p.contains('/') {
            glob_match(p.trim_start_matches('/'), rel)
        } else {
            rel.split('/').any(|c| glob_match(p, c))
        }
    })
}

/// Shell-style glob match of `*` (not crossing `/`) and `?`.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' && t[ti] != '/' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star
            && t[st] != '/'
        {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

async fn sftp_mkdir_p(sftp: &Sftp, dir: &Path) -> Result<()> {
    let mut fs = sftp.fs();
    let mut cur = PathBuf::new();
    for c in dir.components() {
        cur.push(c);
        if cur.as_os_str().is_empty() || cur == Path::new("/") || cur == Path::new(".") {
            continue;
        }
        if fs.metadata(&cur).await.is_err() {
            fs.create_dir(&cur)
                .await
                .map_err(|e| sftp_err(format!("mkdir {}", cur.display()), e))?;
        }
    }
    Ok(())
}

/// One file, with its permission bits (as rsync keeps them: a private key stays 0600,
/// a program stays executable).
async fn sftp_upload_file(sftp: &Sftp, local: &Path, remote: &Path) -> Result<()> {
    let data = tokio::fs::read(local)
        .await
        .map_err(|e| io_error(format!("cannot read {}", local.display()), e))?;
    let mut fs = sftp.fs();
    fs.write(remote, &data)
        .await
        .map_err(|e| sftp_err(format!("write {}", remote.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = tokio::fs::metadata(local)
            .await
            .map_err(|e| io_error(format!("cannot read {}", local.display()), e))?
            .permissions()
            .mode();
        #[allow(clippy::cast_possible_truncation)] // permission bits fit in 12 bits
        let bits = (mode & 0o7777) as u16;
        fs.set_permissions(remote, openssh_sftp_client::metadata::Permissions::from(bits))
            .await
            .map_err(|e| sftp_err(format!("chmod {}", remote.display()), e))?;
    }
    Ok(())
}

async fn sftp_upload(sftp: &Sftp, local: &Path, remote: &Path, options: &SyncOptions) -> Result<()> {
    if !local.is_dir() {
        if let Some(parent) = remote.parent() {
            sftp_mkdir_p(sftp, parent).await?;
        }
        return sftp_upload_file(sftp, local, remote).await;
    }
    sftp_mkdir_p(sftp, remote).await?;
    let mut stack = vec![(local.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if excluded(&child_rel, &options.exclude) {
                continue;
            }
            let target = remote.join(&child_rel);
            let path = entry.path();
            if path.is_dir() {
                let mut fs = sftp.fs();
                if fs.metadata(&target).await.is_err() {
                    fs.create_dir(&target)
                        .await
                        .map_err(|e| sftp_err(format!("mkdir {}", target.display()), e))?;
                }
                stack.push((path, child_rel));
            } else {
                sftp_upload_file(sftp, &path, &target).await?;
            }
        }
    }
    Ok(())
}

async fn sftp_download(
    sftp: &Sftp,
    remote: &Path,
    local: &Path,
    is_dir: bool,
    options: &SyncOptions,
) -> Result<()> {
    if !is_dir {
        let data = sftp
            .fs()
            .read(remote)
            .await
            .map_err(|e| sftp_err(format!("read {}", remote.display()), e))?;
        return tokio::fs::write(local, &data)
            .await
            .map_err(|e| io_error(format!("cannot write {}", local.display()), e));
    }
    let mut stack = vec![(remote.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let handle = sftp
            .fs()
            .open_dir(&dir)
            .await
            .map_err(|e| sftp_err(format!("open {}", dir.display()), e))?;
        let entries: Vec<_> = handle.read_dir().collect().await;
        for entry in entries {
            let entry = entry.map_err(|e| sftp_err(format!("list {}", dir.display()), e))?;
            let name = entry.filename().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if excluded(&child_rel, &options.exclude) {
                continue;
            }
            let source = dir.join(&name);
            let target = local.join(&child_rel);
            if entry.file_type().is_some_and(|t| t.is_dir()) {
                tokio::fs::create_dir_all(&target)
                    .await
                    .map_err(|e| io_error(format!("cannot create {}", target.display()), e))?;
                stack.push((source, child_rel));
            } else {
                let data = sftp
                    .fs()
                    .read(&source)
                    .await
                    .map_err(|e| sftp_err(format!("read {}", source.display()), e))?;
                tokio::fs::write(&target, &data)
                    .await
                    .map_err(|e| io_error(format!("cannot write {}", target.display()), e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_like_rsync() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(excluded("a/b/x.pyc", &p(&["*.pyc"])));
        assert!(excluded(".git", &p(&[".git"])));
        assert!(excluded(".git/config", &p(&[".git/"])));
        assert!(!excluded("src/main.rs", &p(&["*.pyc", "target"])));
        assert!(excluded("logs/today.log", &p(&["logs/*.log"])));
        assert!(!excluded("other/logs/today.log", &p(&["/logs/*.log"])));
        assert!(!excluded("logs/sub/today.log", &p(&["logs/*.log"])));
    }

    #[test]
    fn remote_paths() {
        assert_eq!(remote_parent("/a/b/c"), "/a/b");
        assert_eq!(remote_parent("/c"), "/");
        assert_eq!(remote_parent("c"), ".");
        assert_eq!(SshRunner::shell_path("~/x y"), "\"$HOME\"/'x y'");
        assert_eq!(sftp_path("~/a/b"), PathBuf::from("a/b"));
    }

    #[test]
    fn options_from_the_auth_section() {
        let auth = AuthConfig {
            ssh_user: Some("ubuntu".into()),
            ssh_private_key: Some("/keys/id".into()),
            ssh_port: Some(2222),
            ..Default::default()
        };
        let o = SshOptions::from_auth(&auth, "/c/kh").unwrap();
        assert_eq!((o.user.as_str(), o.port), ("ubuntu", 2222));
        assert_eq!(o.private_key, PathBuf::from("/keys/id"));
        assert_eq!(o.max_channels, 8);
        let err = SshOptions::from_auth(&AuthConfig::default(), "/c/kh").unwrap_err();
        assert_eq!(err.location().unwrap().path, "auth.ssh_user");
    }

    #[test]
    fn host_keys_are_pinned_once_and_make_checking_strict() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("sub/known_hosts");
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq9yXZXb8Z7q3m5r0p1QnYkq0k9b3cX8s1n0lWQ3y0X root@n"
            .to_string();
        assert!(!known_host(&kh, "node-1"));
        assert!(pin_host_keys(&kh, "node-1", std::slice::from_ref(&key)).unwrap());
        assert!(known_host(&kh, "node-1"));
        assert!(!known_host(&kh, "node-2"));
        let text = std::fs::read_to_string(&kh).unwrap();
        assert_eq!(
            text,
            "node-1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq9yXZXb8Z7q3m5r0p1QnYkq0k9b3cX8s1n0lWQ3y0X\n"
        );
        // A pinned key is never replaced.
        let other =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".to_string();
        assert!(!pin_host_keys(&kh, "node-1", &[other]).unwrap());
        assert_eq!(std::fs::read_to_string(&kh).unwrap(), text);
        // Garbage is refused, nothing written.
        assert!(pin_host_keys(&kh, "node-3", &["not a key".into()]).is_err());
        assert!(!known_host(&kh, "node-3"));
        let o = SshOptions::new("u", "/k", &kh).with_strict_host_keys(true);
        assert!(o.ssh_config().contains("StrictHostKeyChecking yes"));
    }

    #[test]
    fn ssh_config_pins_keys_in_the_cluster_file() {
        let o = SshOptions::new("ubuntu", "/k/id", "/c/known_hosts");
        let c = o.ssh_config();
        assert!(c.contains("UserKnownHostsFile /c/known_hosts"));
        assert!(c.contains("StrictHostKeyChecking accept-new"));
        assert!(c.contains("IdentityFile /k/id"));
    }
}

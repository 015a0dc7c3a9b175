//! Real sshd servers for tests, on loopback or inside network namespaces.
//!
//! * [`SshKeyPair::generate`] makes a user key with `ssh-keygen`.
//! * [`SshdServer`] writes an `sshd_config` (`UsePAM no`, `StrictModes no`, no passwords,
//!   `MaxSessions`, the SFTP subsystem), generates a host key and starts
//!   `/usr/sbin/sshd -D -f CONFIG -E LOG`, on `127.0.0.1` and a free port or on an address
//!   inside a network namespace. Dropping it kills the server.
//! * [`NetLab`] builds two "hosts" in network namespaces with their own addresses: a
//!   jump host reachable from this machine, and an internal host reachable only from the
//!   jump host. Dropping it deletes the namespaces and links.
//!
//! Requirements: `openssh-server` (`/usr/sbin/sshd`), `openssh-client` (`ssh`,
//! `ssh-keygen`), `rsync`, and for [`NetLab`] `iproute2` and root. [`sshd_available`] and
//! [`netns_available`] say whether a test can run; when the environment variable `CI` is
//! `true` they panic with the missing piece instead of letting the test skip.

use std::fmt;
use std::io::{self, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::command::SshOptions;

/// Path of the sshd binary the harness starts.
pub const SSHD: &str = "/usr/sbin/sshd";
/// Path of the SFTP server binary the harness configures.
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (returns false, with a note on stderr) or, under `CI=true`, panics.
fn missing(what: &str) -> bool {
    if ci() {
        panic!("CI=true and {what}: install openssh-server openssh-client rsync iproute2 and run as root");
    }
    eprintln!("skipping: {what}");
    false
}

/// True when sshd tests can run here: `/usr/sbin/sshd`, `ssh`, `ssh-keygen` and `rsync`
/// exist. Under `CI=true` a missing tool panics with a clear message.
pub fn sshd_available() -> bool {
    if !Path::new(SSHD).exists() {
        return missing("/usr/sbin/sshd is missing (apt-get install openssh-server)");
    }
    for tool in ["ssh", "ssh-keygen", "rsync"] {
        if !on_path(tool) {
            return missing(&format!(
                "`{tool}` is missing (apt-get install openssh-client rsync)"
            ));
        }
    }
    true
}

/// True when network-namespace tests can run here: sshd tests can, `ip` exists and we
/// are root. Under `CI=true` a missing piece panics.
pub fn netns_available() -> bool {
    if !sshd_available() {
        return false;
    }
    if !on_path("ip") {
        return missing("`ip` is missing (apt-get install iproute2)");
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() != Some("0") {
        return missing("network namespaces need root");
    }
    true
}

/// A free TCP port on 127.0.0.1 (free when asked; another process may take it later).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn keygen(path: &Path, comment: &str) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path))
}

fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

/// A user key pair made with `ssh-keygen` in a temporary directory.
#[derive(Debug)]
pub struct SshKeyPair {
    dir: tempfile::TempDir,
}

impl SshKeyPair {
    /// A new ed25519 key pair.
    pub fn generate() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ctk-key").tempdir()?;
        keygen(&dir.path().join("id_ed25519"), "cloudtik-test")?;
        Ok(SshKeyPair { dir })
    }

    /// The private key file.
    pub fn private_key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// The public key file.
    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519.pub")
    }
}

/// How to start an [`SshdServer`].
#[derive(Debug, Clone)]
pub struct SshdBuilder {
    address: String,
    port: Option<u16>,
    netns: Option<String>,
    max_sessions: u32,
    hermetic_shell: bool,
}

impl Default for SshdBuilder {
    fn default() -> Self {
        SshdBuilder {
            address: "127.0.0.1".into(),
            port: None,
            netns: None,
            max_sessions: 10,
            hermetic_shell: true,
        }
    }
}

impl SshdBuilder {
    /// Listen on `address` (default `127.0.0.1`).
    #[must_use]
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Listen on `port` (default: a free port on loopback, 22 in a namespace).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Run inside network namespace `netns`.
    #[must_use]
    pub fn netns(mut self, netns: impl Into<String>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// Sets `MaxSessions` (default 10, sshd's default).
    #[must_use]
    pub fn max_sessions(mut self, n: u32) -> Self {
        self.max_sessions = n;
        self
    }

    /// Keep the login shell from reading the test user's `~/.bashrc` (default: on).
    ///
    /// bash sources `~/.bashrc` when sshd starts it for a command; a developer's rc file
    /// (pyenv, nvm, ...) can add 100 ms to every command and make tests depend on it.
    /// The harness sets `SetEnv SHLVL=1` in `sshd_config`, which bash reads as "not
    /// started by sshd directly"; off, sessions get the user's usual environment.
    #[must_use]
    pub fn hermetic_shell(mut self, yes: bool) -> Self {
        self.hermetic_shell = yes;
        self
    }

    /// Generates a host key, writes the config, starts sshd authorising `user_key`, and
    /// waits until it listens.
    pub fn start(self, user_key: &SshKeyPair) -> io::Result<SshdServer> {
        let port = match (self.port, &self.netns) {
            (Some(p), _) => p,
            (None, Some(_)) => 22,
            (None, None) => free_port()?,
        };
        let dir = tempfile::Builder::new().prefix("ctk-sshd").tempdir()?;
        std::fs::copy(user_key.public_key(), dir.path().join("authorized_keys"))?;
        keygen(&dir.path().join("host_ed25519"), "cloudtik-test-host")?;
        let config = format!(
            "ListenAddress {addr}\nPort {port}\nHostKey {dir}/host_ed25519\nAuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nMaxSessions {ms}\nMaxStartups 100:30:200\nAllowTcpForwarding yes\n\
             LogLevel INFO\nSubsystem sftp {sftp}\n{setenv}",
            addr = self.address,
            dir = dir.path().display(),
            ms = self.max_sessions,
            sftp = SFTP_SERVER,
            setenv = if self.hermetic_shell {
                "SetEnv SHLVL=1\n"
            } else {
                ""
            },
        );
        std::fs::File::create(dir.path().join("sshd_config"))?.write_all(config.as_bytes())?;
        std::fs::create_dir_all("/run/sshd")?;
        let mut server = SshdServer {
            dir,
            child: None,
            builder: self,
            port,
            user: whoami(),
        };
        server.spawn()?;
        Ok(server)
    }
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A running sshd; killed on drop.
pub struct SshdServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    builder: SshdBuilder,
    port: u16,
    user: String,
}

impl fmt::Debug for SshdServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshdServer")
            .field("address", &self.builder.address)
            .field("port", &self.port)
            .field("netns", &self.builder.netns)
            .finish_non_exhaustive()
    }
}

impl SshdServer {
    /// A builder.
    pub fn builder() -> SshdBuilder {
        SshdBuilder::default()
    }

    /// An sshd on 127.0.0.1 and a free port, authorising `user_key`.
    pub fn start(user_key: &SshKeyPair) -> io::Result<Self> {
        SshdBuilder::default().start(user_key)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = self.log_path();
        let _ = std::fs::remove_file(&log);
        let cfg = self.dir.path().join("sshd_config");
        let mut cmd = match &self.builder.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        cmd.arg("-D").arg("-f").arg(&cfg).arg("-E").arg(&log);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server listening on") {
                break;
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("sshd exited with {status}: {text}")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!("sshd did not start listening: {text}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (existing connections stay up until they close).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server, makes a new host key and starts it again on the same address
    /// and port: what a replaced node looks like to a client that pinned the old key.
    pub fn restart_with_new_host_key(&mut self) -> io::Result<()> {
        self.stop();
        keygen(&self.dir.path().join("host_ed25519"), "cloudtik-test-host-2")?;
        self.spawn()
    }

    /// The listen address.
    pub fn address(&self) -> &str {
        &self.builder.address
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user to log in as (the user running the tests).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// [`SshOptions`] for this server with `key`, pinning host keys in `known_hosts`.
    pub fn ssh_options(&self, key: &SshKeyPair, known_hosts: impl Into<PathBuf>) -> SshOptions {
        SshOptions::new(self.user.clone(), key.private_key(), known_hosts).with_port(self.port)
    }
}

impl Drop for SshdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two hosts in network namespaces: `jump` (reachable from this machine at
/// [`jump_address`](Self::jump_address)) and `internal` (at
/// [`internal_address`](Self::internal_address), reachable only from `jump`). Namespace
/// and link names are unique per lab; the addresses are in `10.100.0.0/16`-`10.199.0.0/16`
/// with a random third octet, two /30 links. Dropping the lab deletes them.
pub struct NetLab {
    id: String,
    base: (u8, u8),
}

impl fmt::Debug for NetLab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetLab")
            .field("jump_ns", &self.jump_ns())
            .field("internal_ns", &self.internal_ns())
            .field("jump_address", &self.jump_address())
            .field("internal_address", &self.internal_address())
            .finish()
    }
}

impl NetLab {
    /// Creates the namespaces and links.
    pub fn new() -> io::Result<Self> {
        let id = unique_id();
        let n = u32::from_str_radix(&id, 16).unwrap_or(0);
        let base = (100 + (n % 100) as u8, ((n >> 8) % 256) as u8);
        let lab = NetLab { id, base };
        lab.build().inspect_err(|_| lab.teardown())?;
        Ok(lab)
    }

    fn addr(&self, last: u8) -> String {
        format!("10.{}.{}.{last}", self.base.0, self.base.1)
    }

    /// The jump host's namespace.
    pub fn jump_ns(&self) -> String {
        format!("ctk{}j", self.id)
    }

    /// The internal host's namespace.
    pub fn internal_ns(&self) -> String {
        format!("ctk{}i", self.id)
    }

    /// This machine's address on the link to the jump host.
    pub fn host_address(&self) -> String {
        self.addr(1)
    }

    /// The jump host's address, reachable from this machine.
    pub fn jump_address(&self) -> String {
        self.addr(2)
    }

    /// The jump host's address on the internal link.
    pub fn jump_internal_address(&self) -> String {
        self.addr(5)
    }

    /// The internal host's address, reachable only from the jump host.
    pub fn internal_address(&self) -> String {
        self.addr(6)
    }

    fn veth(&self, side: char) -> String {
        format!("ctv{}{side}", self.id)
    }

    fn build(&self) -> io::Result<()> {
        let (j, i) = (self.jump_ns(), self.internal_ns());
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &j])?;
        ip(&["netns", "add", &i])?;
        let (a, b, c, d) = (self.veth('a'), self.veth('b'), self.veth('c'), self.veth('d'));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &j])?;
        ip(&["addr", "add", &format!("{}/30", self.addr(1)), "dev", &a])?;
        ip(&["link", "set", &a, "up"])?;
        ip(&[
            "-n",
            &j,
            "addr",
            "add",
            &format!("{}/30", self.addr(2)),
            "dev",
            &b,
        ])?;
        ip(&["-n", &j, "link", "set", &b, "up"])?;
        ip(&["-n", &j, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &j, "link", "add", &c, "type", "veth", "peer", "name", &d, "netns", &i,
        ])?;
        ip(&[
            "-n",
            &j,
            "addr",
            "add",
            &format!("{}/30", self.addr(5)),
            "dev",
            &c,
        ])?;
        ip(&["-n", &j, "link", "set", &c, "up"])?;
        ip(&[
            "-n",
            &i,
            "addr",
            "add",
            &format!("{}/30", self.addr(6)),
            "dev",
            &d,
        ])?;
        ip(&["-n", &i, "link", "set", &d, "up"])?;
        ip(&["-n", &i, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn teardown(&self) {
        for ns in [self.internal_ns(), self.jump_ns()] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth('a')])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

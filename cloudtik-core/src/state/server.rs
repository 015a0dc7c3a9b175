//! The redis-server configuration the head runs the state store with.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::error::{Error, ErrorKind, Result};

/// A new random Redis password for a cluster: 32 random bytes as 64 hex digits.
pub fn generate_password() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// When redis-server flushes its append-only file to disk (`appendfsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AppendFsync {
    /// `everysec` (the default): one `fsync` per second in the background. A killed
    /// redis-server loses nothing it acknowledged *unless* the disk is so slow that an
    /// `fsync` is still running when new writes arrive: Redis then keeps those writes in
    /// memory for up to 2 s (while already acknowledging them), and a `SIGKILL` in that
    /// window loses them. A crash of the machine loses up to about 2 s of writes.
    #[default]
    EverySec,
    /// `always`: every write is on disk before Redis acknowledges it (Redis groups the
    /// writes of one event-loop turn into one `fsync`). Nothing acknowledged is lost,
    /// at the price of an `fsync` per turn.
    Always,
}

impl AppendFsync {
    /// The `appendfsync` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AppendFsync::EverySec => "everysec",
            AppendFsync::Always => "always",
        }
    }
}

/// How we run redis-server for a cluster's state store.
///
/// Unlike CloudTik (fixed password, protected mode off), the rendered config:
///
/// * binds to the given addresses (the head's internal address) **and loopback** only;
/// * keeps `protected-mode yes` and sets `requirepass` to the cluster's password;
/// * turns the append-only file on, in `dir`, with `appendfsync everysec` unless told
///   otherwise ([`AppendFsync`] says exactly what survives what), so the durable tables
///   (resource requests, pending launches) survive a restart of redis-server;
/// * does not daemonize, so a supervisor (`cloudtik-node head`) owns the process.
///
/// `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisServerConfig {
    /// TCP port.
    pub port: u16,
    /// Addresses to bind besides `127.0.0.1` (usually the head's internal address).
    pub bind: Vec<String>,
    /// The password clients must give (`requirepass`).
    pub password: String,
    /// Working directory: the append-only files live here.
    pub dir: PathBuf,
    /// Log file; `None` logs to standard output.
    pub logfile: Option<PathBuf>,
    /// When the append-only file is flushed to disk.
    pub appendfsync: AppendFsync,
}

impl fmt::Debug for RedisServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServerConfig")
            .field("port", &self.port)
            .field("bind", &self.bind)
            .field("password", &"<redacted>")
            .field("dir", &self.dir)
            .field("logfile", &self.logfile)
            .field("appendfsync", &self.appendfsync)
            .finish()
    }
}

impl RedisServerConfig {
    /// A config for `port` with `password` and working directory `dir`, bound to loopback.
    pub fn new(port: u16, password: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        RedisServerConfig {
            port,
            bind: Vec::new(),
            password: password.into(),
            dir: dir.into(),
            logfile: None,
            appendfsync: AppendFsync::default(),
        }
    }

    /// Sets when the append-only file is flushed to disk.
    pub fn with_appendfsync(mut self, appendfsync: AppendFsync) -> Self {
        self.appendfsync = appendfsync;
        self
    }

    /// Also binds to `address`.
    pub fn with_bind(mut self, address: impl Into<String>) -> Self {
        self.bind.push(address.into());
        self
    }

    /// Logs to `path`.
    pub fn with_logfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.logfile = Some(path.into());
        self
    }

    /// The addresses bound: the configured ones (deduplicated) followed by `127.0.0.1`.
    pub fn bind_addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self.bind.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            if a != "127.0.0.1" && !out.iter().any(|o| o == a) {
                out.push(a.to_string());
            }
        }
        out.push("127.0.0.1".to_string());
        out
    }

    /// Renders the `redis.conf` text. Fails when the password is empty or a value
    /// contains a control character (it could inject a directive).
    pub fn render(&self) -> Result<String> {
        if self.password.is_empty() {
            return Err(Error::config("password", "the Redis password must not be empty"));
        }
        if self.port == 0 {
            return Err(Error::config("port", "the Redis port must not be 0"));
        }
        let dir = path_text(&self.dir, "dir")?;
        let mut binds = Vec::new();
        for a in self.bind_addresses() {
            if a.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') {
                return Err(Error::config("bind", format!("invalid bind address {a:?}")));
            }
            binds.push(a);
        }
        let mut s = String::new();
        let _ = writeln!(s, "# Written by cloudtik: the cluster state store.");
        let _ = writeln!(s, "port {}", self.port);
        let _ = writeln!(s, "bind {}", binds.join(" "));
        let _ = writeln!(s, "protected-mode yes");
        let _ = writeln!(s, "requirepass {}", quote(&self.password, "password")?);
        let _ = writeln!(s, "daemonize no");
        let _ = writeln!(s, "dir {}", quote(&dir, "dir")?);
        let logfile = match &self.logfile {
            Some(p) => path_text(p, "logfile")?,
            None => String::new(),
        };
        let _ = writeln!(s, "logfile {}", quote(&logfile, "logfile")?);
        let _ = writeln!(s, "appendonly yes");
        let _ = writeln!(s, "appendfsync {}", self.appendfsync.as_str());
        let _ = writeln!(s, "appendfilename \"cloudtik.aof\"");
        let _ = writeln!(s, "appenddirname \"appendonlydir\"");
        // The append-only file is the durable copy; no RDB snapshots besides it.
        let _ = writeln!(s, "save \"\"");
        // Never evict: the durable tables must not be dropped under memory pressure.
        let _ = writeln!(s, "maxmemory-policy noeviction");
        let _ = writeln!(s, "tcp-keepalive 60");
        Ok(s)
    }

    /// Writes the rendered config to `path`, readable by its owner only (it holds the
    /// password).
    pub fn write_to(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let text = self.render()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let io_err = |e: std::io::Error| {
            Error::new(ErrorKind::Unexpected, "cannot write the redis-server config")
                .with_context("path", path.display())
                .with_source(e)
        };
        let mut file = options.open(path).map_err(io_err)?;
        file.write_all(text.as_bytes()).map_err(io_err)?;
        Ok(())
    }
}

fn path_text(path: &Path, field: &str) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::config(field, "the path is not valid UTF-8"))
}

/// A double-quoted redis.conf string: `\` and `"` escaped; control characters refused.
fn quote(value: &str, field: &str) -> Result<String> {
    if value.chars().any(char::is_control) {
        return Err(Error::config(field, "must not contain control characters"));
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_secure_durable_config() {
        let c = RedisServerConfig::new(6789, "s3cr\"t", "/var/lib/ct")
            .with_bind("10.0.0.5")
            .with_bind("127.0.0.1")
            .with_bind("10.0.0.5");
        let text = c.render().unwrap();
        assert!(text.contains("\nbind 10.0.0.5 127.0.0.1\n"), "{text}");
        assert!(text.contains("\nprotected-mode yes\n"));
        assert!(text.contains("\nrequirepass \"s3cr\\\"t\"\n"));
        assert!(text.contains("\nappendonly yes\n"));
        assert!(text.contains("\nappendfsync everysec\n"));
        assert!(text.contains("\ndir \"/var/lib/ct\"\n"));
        assert!(text.contains("\nport 6789\n"));
        assert!(!format!("{c:?}").contains("s3cr"));
        let always = c.with_appendfsync(AppendFsync::Always).render().unwrap();
        assert!(always.contains("\nappendfsync always\n"));
    }

    #[test]
    fn refuses_empty_password_and_injection() {
        assert!(RedisServerConfig::new(1, "", "/d").render().is_err());
        assert!(
            RedisServerConfig::new(1, "a\nprotected-mode no", "/d")
                .render()
                .is_err()
        );
        assert!(
            RedisServerConfig::new(1, "p", "/d")
                .with_bind("1.2.3.4 0.0.0.0")
                .render()
                .is_err()
        );
        let p = generate_password();
        assert_eq!(p.len(), 64);
        assert_ne!(p, generate_password());
    }
}

//! Installing software on a node from the ecosystem's registries: Debian packages with
//! apt, Python packages with pip into the node's runtime venv.
//!
//! Both are idempotent (a second run on a set-up node installs and downloads nothing)
//! and serialize on a lock file next to their caches, so nodes that share the caches
//! (the virtual provider mounts one package cache into every node of every cluster) do
//! not download the same thing twice:
//!
//! * **apt**: packages already installed are skipped; `apt-get update` runs only when a
//!   package is missing and the package lists are older than a day; `.deb` files stay
//!   in `/var/cache/apt/archives`.
//! * **pip**: into the venv `/opt/cloudtik/venv`. Python packages are built into a
//!   *wheelhouse* (`~/.cache/cloudtik/wheels`,
//!   `pip wheel`, which downloads) and installed from it with `--no-index`; a
//!   requirement that the wheelhouse already holds is installed with no network. The
//!   venv records what it installed, so a second run does nothing.
//!
//! pip reaches the index as the node's environment says: `PIP_INDEX_URL`, `PIP_CERT`,
//! `HTTPS_PROXY`... which `cloudtik start` sets from the machine it runs on. A package
//! that cannot be fetched fails with the package's name and the index's answer (pip's
//! last lines).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudtik_core::{Error, ErrorKind, Result};
use tokio::process::Command;

/// How long an install waits for another node's install on the shared cache.
const LOCK_WAIT_SECS: u64 = 1800;

/// Lines of a failed command's output kept in its error.
const TAIL_LINES: usize = 15;

/// The output of a command, or an error naming `what` with the last lines of its output.
async fn run(script: &str, what: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, format!("{what}: cannot run sh: {e:#}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        return Ok(text);
    }
    let tail: Vec<&str> = text.lines().rev().take(TAIL_LINES).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(Error::new(
        ErrorKind::Unexpected,
        format!(
            "{what} failed (exit code {}):\n{}",
            out.status.code().map_or("?".to_string(), |c| c.to_string()),
            tail.join("\n")
        ),
    ))
}

fn quote(s: &str) -> String {
    cloudtik_core::command::shell_quote(s)
}

/// `sudo -n ` when this process is not root, else nothing.
fn sudo() -> &'static str {
    // SAFETY-free: reading the effective uid through /proc avoids a libc dependency.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(true);
    if root { "" } else { "sudo -n " }
}

/// The Debian packages of `packages` that are not installed.
pub async fn apt_missing(packages: &[String]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for p in packages {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("cannot run dpkg-query: {e:#}")))?;
        if !String::from_utf8_lossy(&status.stdout).contains("install ok installed") {
            missing.push(p.clone());
        }
    }
    Ok(missing)
}

/// Installs the Debian packages of `packages` that are missing (see the module docs).
pub async fn apt_install(packages: &[String]) -> Result<()> {
    let missing = apt_missing(packages).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|p| quote(p)).collect();
    let list = list.join(" ");
    let s = sudo();
    // Refresh the package lists when none is a day young (or there are none).
    // Downloading (and refreshing the lists) takes the lock of the archives, which nodes
    // may share; installing from the downloaded files does not, so nodes sharing the
    // cache install at once (each node's own dpkg database is its own).
    let script = format!(
        "set -e; {s}mkdir -p /var/cache/apt/archives; \
         {s}flock -w {LOCK_WAIT_SECS} /var/cache/apt/archives/.cloudtik.lock sh -c '\
         if [ -z \"$(find /var/lib/apt/lists -maxdepth 1 -name \"*Packages*\" -mmin -1440 2>/dev/null | head -n 1)\" ]; then \
         apt-get update -q; fi; \
         apt-get install -y -q --no-install-recommends --download-only -o Dpkg::Use-Pty=0 {list}'; \
         {s}apt-get install -y -q --no-install-recommends --no-download -o Debug::NoLocking=true -o Dpkg::Use-Pty=0 {list}"
    );
    run(
        &script,
        &format!("installing the Debian packages {}", missing.join(", ")),
    )
    .await?;
    Ok(())
}

/// Where runtimes keep their software on a node, whatever the SSH user: the venv, and
/// links such as `/opt/cloudtik/spark` (so paths in the nodes' environment are fixed).
pub const RUNTIME_ROOT: &str = "/opt/cloudtik";

/// The node's Python environment for runtimes: one venv (`/opt/cloudtik/venv`), made
/// with the node's `python3`, that every runtime installs its Python packages into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    dir: PathBuf,
    wheelhouse: PathBuf,
}

impl PythonEnv {
    /// The node's venv (`/opt/cloudtik/venv`), with the wheelhouse in the user's cache
    /// (`$HOME/.cache/cloudtik/wheels`).
    pub fn node() -> Self {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_string());
        PythonEnv {
            dir: Path::new(RUNTIME_ROOT).join("venv"),
            wheelhouse: Path::new(&home).join(".cache").join("cloudtik").join("wheels"),
        }
    }

    /// A venv at `dir` with its wheelhouse at `wheelhouse`.
    pub fn new(dir: impl Into<PathBuf>, wheelhouse: impl Into<PathBuf>) -> Self {
        PythonEnv {
            dir: dir.into(),
            wheelhouse: wheelhouse.into(),
        }
    }

    /// The venv's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The venv's `bin` folder (put first on the PATH of the node's commands).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// A program of the venv.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir().join(name)
    }

    fn record(&self) -> PathBuf {
        self.dir.join("cloudtik-installed.json")
    }

    /// The requirements this venv installed.
    pub fn installed(&self) -> Vec<String> {
        std::fs::read(self.record())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Makes the venv (and installs `python3-venv` when `python3 -m venv` needs it).
    pub async fn ensure(&self) -> Result<()> {
        if self.bin("python").exists() && self.bin("pip").exists() && self.bin("wheel").exists() {
            return Ok(());
        }
        apt_install(&["python3".to_string(), "python3-venv".to_string()]).await?;
        let dir = quote(&self.dir.to_string_lossy());
        let parent = quote(&self.dir.parent().unwrap_or(Path::new("/")).to_string_lossy());
        let s = sudo();
        run(
            &format!(
                "{s}mkdir -p {parent} && {s}chown \"$(id -u):$(id -g)\" {parent} && python3 -m venv {dir}"
            ),
            &format!("making the Python venv {}", self.dir.display()),
        )
        .await?;
        // `wheel` lets pip build wheels of packages published as source only (pyspark).
        self.fetch_and_install(&["wheel".to_string()]).await
    }

    /// Installs `requirements` (pip requirement strings, e.g. `pyspark==3.5.3`) into the
    /// venv, skipping those it installed before (see the module docs).
    pub async fn pip_install(&self, requirements: &[String]) -> Result<()> {
        let installed = self.installed();
        let missing: Vec<String> = requirements
            .iter()
            .filter(|r| !installed.contains(r))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.ensure().await?;
        self.fetch_and_install(&missing).await?;
        let mut all = installed;
        all.extend(missing);
        let json = serde_json::to_vec(&all).unwrap_or_default();
        std::fs::write(self.record(), json).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("cannot write {}: {e:#}", self.record().display()),
            )
        })?;
        Ok(())
    }
}

impl PythonEnv {
    /// Installs `reqs` from the wheelhouse with no network, else fetches them into it
    /// (`pip wheel`, the only step that downloads) and installs them from it; under the
    /// wheelhouse's lock.
    async fn fetch_and_install(&self, reqs: &[String]) -> Result<()> {
        std::fs::create_dir_all(&self.wheelhouse).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("cannot make the wheelhouse {}: {e:#}", self.wheelhouse.display()),
            )
        })?;
        let pip = quote(&self.bin("pip").to_string_lossy());
        let wheels = quote(&self.wheelhouse.to_string_lossy());
        let list: Vec<String> = reqs.iter().map(|r| quote(r)).collect();
        let list = list.join(" ");
        let lock = quote(&self.wheelhouse.join(".cloudtik.lock").to_string_lossy());
        // Offline first, with no lock: nodes sharing the wheelhouse install at once. Only
        // fetching into it takes the lock (then the offline install is tried again: another
        // node may have fetched the same meanwhile).
        let offline =
            format!("{pip} install -q --disable-pip-version-check --no-index --find-links {wheels} {list}");
        let script = format!(
            "{offline} 2>/dev/null || exec flock -w {LOCK_WAIT_SECS} {lock} sh -c \"\
             {offline} 2>/dev/null || \
             {{ {pip} wheel -q --disable-pip-version-check --wheel-dir {wheels} {list} && {offline}; }}\""
        );
        run(
            &script,
            &format!("installing the Python packages {} with pip", reqs.join(", ")),
        )
        .await?;
        Ok(())
    }
}

/// Waits until something listens on `host:port`, up to `timeout`.
pub async fn wait_for_port(host: &str, port: u16, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect((host, port)).await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failed_commands_name_what_and_keep_the_tail() {
        let err = run("echo first; echo second >&2; exit 3", "doing x")
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("doing x failed (exit code 3)"), "{msg}");
        assert!(msg.contains("first") && msg.contains("second"), "{msg}");
        assert_eq!(run("echo ok", "y").await.unwrap().trim(), "ok");
    }

    #[tokio::test]
    async fn installed_packages_are_not_missing() {
        // dpkg itself is installed on every Debian system; a made-up name is not.
        let missing = apt_missing(&["dpkg".into(), "no-such-package-cloudtik".into()])
            .await
            .unwrap();
        assert_eq!(missing, vec!["no-such-package-cloudtik".to_string()]);
    }

    #[test]
    fn the_node_venv_has_a_fixed_path() {
        let env = PythonEnv::node();
        assert_eq!(env.bin("python"), PathBuf::from("/opt/cloudtik/venv/bin/python"));
        assert!(env.wheelhouse.ends_with(".cache/cloudtik/wheels"));
        let other = PythonEnv::new("/nonexistent/venv", "/nonexistent/wheels");
        assert!(other.installed().is_empty());
    }
}

//! [`NodeBootstrap`]: what setup installs on a node made from a stock image before its
//! file mounts and commands: the node program (`cloudtik-node`) and the Debian packages
//! the core needs (`redis-server` on the head).
//!
//! CloudTik's built-in command groups `pip install cloudtik` on every node; here the
//! node program is one file, uploaded from the machine that sets the node up (this
//! machine's `cloudtik` for the head, the head's own program for workers).
//!
//! # Steps (every full update, before file sync)
//!
//! 1. **probe**: one command reports the node's CPU architecture (`uname -m`), whether
//!    the SSH user is root or may `sudo -n`, the OS (`/etc/os-release`), whether it has
//!    `apt-get`, the SHA-256 and `--version` of the program at
//!    [`install_path`](NodeBootstrap::install_path), and which packages' commands are
//!    missing. A node that has everything costs this one command.
//! 2. **decide** ([`decide`], pure): install the program when the node has none or
//!    another build (by content hash, so a rebuilt program of the same version is
//!    installed too); install the packages whose commands are missing.
//!    * A node of another architecture than every program given fails with
//!      [`ErrorKind::Unsupported`], naming the architecture to build for.
//!    * A user that is not root and cannot `sudo -n` fails with
//!      [`ErrorKind::PermissionDenied`] when anything must be installed.
//!    * A package is missing on a node without `apt-get` (not Debian or Ubuntu): fails
//!      with [`ErrorKind::Unsupported`].
//! 3. **install packages**: `apt-get update` and `apt-get install --no-install-recommends`
//!    (waiting up to 5 minutes for the dpkg lock a booting cloud image's unattended
//!    upgrades hold); 3 tries. A service the package starts under systemd
//!    (`redis-server` listens on 6379 without a password) is disabled: the node's own
//!    services run it as they need.
//! 4. **install the program**: uploaded to `/tmp` (SFTP when the node has no rsync), then
//!    `install -m 0755` to its path (with `sudo -n` when not root), then run with
//!    `--version` to check it runs there.
//!
//! Each failure is an error with context `step` (`probe`, `install packages`, `install
//! cloudtik-node`) and says what to do; the updater adds `node` and `phase`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::command::{
    CommandRunner, CommandRunnerExt, CommandSpec, OutputLine, RetryPolicy, RunEnv, SyncOptions, shell_quote,
};
use crate::error::{Error, ErrorKind, Result};

/// Where the node program is installed when nothing else is said.
pub const DEFAULT_INSTALL_PATH: &str = "/usr/local/bin/cloudtik-node";

/// A node program to install: a local file for one CPU architecture.
#[derive(Debug, Clone)]
pub struct NodeBinary {
    path: PathBuf,
    arch: String,
    sha256: Arc<OnceLock<String>>,
}

impl PartialEq for NodeBinary {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.arch == other.arch
    }
}

impl Eq for NodeBinary {}

impl NodeBinary {
    /// The program at `path`, built for this machine's architecture
    /// (`std::env::consts::ARCH`: `x86_64`, `aarch64`, as `uname -m` says).
    pub fn local(path: impl Into<PathBuf>) -> Self {
        Self::for_arch(path, std::env::consts::ARCH)
    }

    /// The program at `path`, built for `arch` (as `uname -m` names it).
    pub fn for_arch(path: impl Into<PathBuf>, arch: impl Into<String>) -> Self {
        NodeBinary {
            path: path.into(),
            arch: arch.into(),
            sha256: Arc::new(OnceLock::new()),
        }
    }

    /// The program running this process (the head sets workers up with its own).
    pub fn current_exe() -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot find this program's path").with_source(e)
        })?;
        Ok(Self::local(exe))
    }

    /// The local file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The architecture it runs on.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Its SHA-256 (hex), computed once per value and its clones.
    pub async fn sha256(&self) -> Result<String> {
        if let Some(h) = self.sha256.get() {
            return Ok(h.clone());
        }
        let path = self.path.clone();
        let hash = tokio::task::spawn_blocking(move || sha256_of(&path))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "hashing the node program panicked").with_source(e)
            })??;
        Ok(self.sha256.get_or_init(|| hash).clone())
    }
}

fn sha256_of(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| {
        Error::new(
            ErrorKind::NotFound,
            format!("cannot read the node program {}", path.display()),
        )
        .with_source(e)
    })?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("cannot read the node program {}", path.display()),
            )
            .with_source(e)
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A Debian package a node needs, present when its command is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodePackage {
    /// The package (`redis-server`).
    pub package: String,
    /// The command it provides (`redis-server`).
    pub command: String,
    /// A file the package provides, checked instead of the command when set (a package
    /// of data, such as `ca-certificates`).
    pub file: Option<String>,
    /// A daemon the package runs that must be up (Docker's engine).
    pub service: Option<PackageService>,
}

/// A daemon a [`NodePackage`] runs: checked at every bootstrap, started when down.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackageService {
    /// Succeeds when the daemon answers (run as the SSH user, then with `sudo -n`).
    pub check: String,
    /// Starts it (run as root).
    pub start: String,
}

impl NodePackage {
    /// The package `package`, present when a command of the same name is.
    pub fn new(package: impl Into<String>) -> Self {
        let package = package.into();
        NodePackage {
            command: package.clone(),
            package,
            file: None,
            service: None,
        }
    }

    /// Present when `file` exists on the node (not by its command).
    #[must_use]
    pub fn with_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// The CA certificates (`ca-certificates`): what TLS clients on the node (the
    /// head's cloud API calls) trust.
    pub fn ca_certificates() -> Self {
        NodePackage::new("ca-certificates").with_file("/etc/ssl/certs/ca-certificates.crt")
    }

    /// Docker's engine (`docker.io`): `docker info` must answer; started with systemd
    /// where the node runs it, else as a background `dockerd` (log in
    /// `/var/log/cloudtik-dockerd.log`).
    pub fn docker() -> Self {
        NodePackage {
            package: "docker.io".into(),
            command: "docker".into(),
            file: None,
            service: Some(PackageService {
                check: "docker info".into(),
                start: "if [ -d /run/systemd/system ]; then systemctl start docker; else \
                        setsid nohup dockerd >/var/log/cloudtik-dockerd.log 2>&1 </dev/null & fi"
                    .into(),
            }),
        }
    }

    /// Present when `command` (not the package's name) is on the node.
    #[must_use]
    pub fn with_command(mut self, command: impl Into<String>) -> Self {
        self.command = command.into();
        self
    }
}

/// What setup installs on a node from a stock image; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeBootstrap {
    /// Where the node program goes on the node.
    pub install_path: String,
    /// The programs to install, by architecture (`uname -m`).
    pub binaries: BTreeMap<String, NodeBinary>,
    /// Packages the node must have.
    pub packages: Vec<NodePackage>,
}

impl NodeBootstrap {
    /// Installs `binary` at `install_path` (an absolute path on the node).
    pub fn new(install_path: impl Into<String>, binary: NodeBinary) -> Self {
        NodeBootstrap {
            install_path: install_path.into(),
            binaries: BTreeMap::from([(binary.arch.clone(), binary)]),
            packages: Vec::new(),
        }
    }

    /// Installs only `packages` (no node program).
    pub fn packages_only(packages: impl IntoIterator<Item = NodePackage>) -> Self {
        NodeBootstrap {
            install_path: String::new(),
            binaries: BTreeMap::new(),
            packages: packages.into_iter().collect(),
        }
    }

    /// Where a node program named `node_binary` in the cluster's commands is installed:
    /// itself when absolute, else [`DEFAULT_INSTALL_PATH`]'s folder.
    pub fn install_path_for(node_binary: &str) -> String {
        if node_binary.starts_with('/') {
            node_binary.to_string()
        } else {
            format!("/usr/local/bin/{node_binary}")
        }
    }

    /// Adds a program for another architecture.
    #[must_use]
    pub fn with_binary(mut self, binary: NodeBinary) -> Self {
        self.binaries.insert(binary.arch.clone(), binary);
        self
    }

    /// Adds a package the node must have.
    #[must_use]
    pub fn with_package(mut self, package: NodePackage) -> Self {
        if !self.packages.contains(&package) {
            self.packages.push(package);
        }
        self
    }

    /// The probe command (step 1).
    pub fn probe_command(&self) -> String {
        let mut s = String::from(
            "echo \"arch=$(uname -m)\"; echo \"user=$(id -un)\"; \
             if [ \"$(id -u)\" = 0 ]; then echo priv=root; \
             elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then echo priv=sudo; \
             else echo priv=none; fi; \
             ( . /etc/os-release 2>/dev/null; echo \"os=${PRETTY_NAME:-${ID:-unknown}}\" ); \
             if command -v apt-get >/dev/null 2>&1; then echo apt=yes; else echo apt=no; fi; ",
        );
        if !self.binaries.is_empty() {
            let bin = shell_quote(&self.install_path);
            s.push_str(&format!(
                "if [ -f {bin} ]; then echo \"bin_sha256=$(sha256sum {bin} | cut -d' ' -f1)\"; \
                 echo \"bin_version=$({bin} --version 2>&1 | head -n 1)\"; fi; "
            ));
        }
        for p in &self.packages {
            match &p.file {
                Some(file) => s.push_str(&format!("if [ -e {} ]; then ", shell_quote(file))),
                None => s.push_str(&format!(
                    "if command -v {c} >/dev/null 2>&1 || [ -x /usr/sbin/{c} ] || [ -x /usr/bin/{c} ]; then ",
                    c = shell_quote(&p.command),
                )),
            }
            match &p.service {
                Some(svc) => s.push_str(&format!(
                    "( {check} ) >/dev/null 2>&1 || ( sudo -n sh -c {qcheck} ) >/dev/null 2>&1 || echo down={p}; ",
                    check = svc.check,
                    qcheck = shell_quote(&svc.check),
                    p = shell_quote(&p.package),
                )),
                None => s.push_str("true; "),
            }
            s.push_str(&format!("else echo missing={}; fi; ", shell_quote(&p.package)));
        }
        s.push_str("true");
        s
    }

    /// Runs the steps of the [module docs](self) on `node` through `runner`; returns what
    /// was done (nothing when the node has everything).
    pub async fn run(
        &self,
        node: &str,
        runner: &dyn CommandRunner,
        output: Option<&mpsc::UnboundedSender<OutputLine>>,
    ) -> Result<BootstrapDone> {
        let (facts, plan) = self.probe(node, runner).await?;
        self.apply(node, runner, &facts, &plan, output).await
    }

    /// Steps 1 and 2: what the node has and what it needs.
    pub async fn probe(&self, node: &str, runner: &dyn CommandRunner) -> Result<(NodeFacts, BootstrapPlan)> {
        let step = |e: Error| e.with_context("step", "probe");
        let probe = runner
            .run_checked(
                &CommandSpec::new(self.probe_command())
                    .timeout(Some(Duration::from_secs(120)))
                    .run_env(RunEnv::Auto),
            )
            .await
            .map_err(step)?;
        let facts = NodeFacts::parse(&probe.stdout);
        let wanted = match facts.binary_sha256.is_some() {
            // Hash only when the node has a program to compare with.
            true => match self.binaries.get(&facts.arch) {
                Some(b) => Some(b.sha256().await.map_err(step)?),
                None => None,
            },
            false => None,
        };
        let plan = decide(self, &facts, wanted.as_deref(), node)?;
        Ok((facts, plan))
    }

    /// Steps 3 and 4: installs what `plan` says.
    pub async fn apply(
        &self,
        node: &str,
        runner: &dyn CommandRunner,
        facts: &NodeFacts,
        plan: &BootstrapPlan,
        output: Option<&mpsc::UnboundedSender<OutputLine>>,
    ) -> Result<BootstrapDone> {
        let step = |e: Error, step: &str| e.with_context("step", step);
        let sudo = if plan.sudo { "sudo -n " } else { "" };
        let mut done = BootstrapDone {
            packages: plan.packages.clone(),
            binary_from: facts.binary_version.clone(),
            binary_installed: None,
        };
        if !plan.packages.is_empty() {
            let list: Vec<String> = plan.packages.iter().map(|p| shell_quote(p)).collect();
            let list = list.join(" ");
            let script = format!(
                "set -e; export DEBIAN_FRONTEND=noninteractive; \
                 {sudo}env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q; \
                 {sudo}env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
                 --no-install-recommends -o Dpkg::Use-Pty=0 {list}; \
                 if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
                 for s in {list}; do {sudo}systemctl disable --now \"$s\" >/dev/null 2>&1 || true; done; fi"
            );
            let mut spec = CommandSpec::new(script)
                .timeout(Some(Duration::from_secs(900)))
                .run_env(RunEnv::Auto);
            if let Some(tx) = output {
                spec = spec.stream_to(tx.clone());
            }
            runner
                .run_with_retry(&spec, RetryPolicy::new(3, Duration::from_secs(5)))
                .await
                .map_err(|e| {
                    failed_step(
                        e,
                        "install packages",
                        format!(
                            "cannot install {} on node {node} with apt-get; check that the node reaches its \
                             package mirror, or put the packages on its image",
                            plan.packages.join(", ")
                        ),
                    )
                })?;
        }
        for name in &plan.start {
            let Some(svc) = self
                .packages
                .iter()
                .find(|p| &p.package == name)
                .and_then(|p| p.service.as_ref())
            else {
                continue;
            };
            let script = format!(
                "{sudo}sh -c {start}; i=0; while [ $i -lt 60 ]; do \
                 if ( {check} ) >/dev/null 2>&1 || ( sudo -n sh -c {qcheck} ) >/dev/null 2>&1; then exit 0; fi; \
                 i=$((i+1)); sleep 1; done; echo \"{name} did not answer within 60 s\" >&2; exit 1",
                start = shell_quote(&svc.start),
                check = svc.check,
                qcheck = shell_quote(&svc.check),
            );
            runner
                .run_checked(
                    &CommandSpec::new(script)
                        .timeout(Some(Duration::from_secs(120)))
                        .run_env(RunEnv::Auto),
                )
                .await
                .map_err(|e| failed_step(e, "start service", format!(
                            "the {name} daemon on node {node} does not start (`{}` fails); see its log on the node",
                            svc.check
                        )))?;
        }
        if let Some(binary) = &plan.binary {
            let sha = binary
                .sha256()
                .await
                .map_err(|e| step(e, "install cloudtik-node"))?;
            let staged = format!("/tmp/cloudtik-node-{}", &sha[..12]);
            let what = "install cloudtik-node";
            runner
                .upload(binary.path(), &staged, &SyncOptions::default())
                .await
                .map_err(|e| step(e, what))?;
            let path = shell_quote(&self.install_path);
            let dir = shell_quote(&crate::command::remote_parent(&self.install_path));
            let script = format!(
                "set -e; {sudo}mkdir -p {dir}; {sudo}install -m 0755 {staged} {path}; rm -f {staged}; {path} --version"
            );
            let out = runner
                .run_checked(
                    &CommandSpec::new(script)
                        .timeout(Some(Duration::from_secs(120)))
                        .run_env(RunEnv::Auto),
                )
                .await
                .map_err(|e| {
                    failed_step(
                        e,
                        what,
                        format!(
                            "the cloudtik-node uploaded to node {node} does not run there (installed at {}); \
                             check that it is built for {} Linux with a C library the image has",
                            self.install_path, facts.arch
                        ),
                    )
                })?;
            done.binary_installed = Some(out.stdout.lines().next().unwrap_or_default().trim().to_string());
        }
        Ok(done)
    }
}

/// `e` as the failure of bootstrap step `step`, with `hint` (what failed and what to do)
/// as its message and `e` as its cause.
fn failed_step(e: Error, step: &str, hint: String) -> Error {
    Error::new(e.kind(), hint)
        .with_source(e)
        .with_context("step", step)
}

/// What [`NodeBootstrap::run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootstrapDone {
    /// Packages installed.
    pub packages: Vec<String>,
    /// The `--version` of the program the node had, if any.
    pub binary_from: Option<String>,
    /// The `--version` of the program installed, if one was.
    pub binary_installed: Option<String>,
}

impl BootstrapDone {
    /// True when something was installed.
    pub fn changed(&self) -> bool {
        !self.packages.is_empty() || self.binary_installed.is_some()
    }
}

/// What the probe found on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeFacts {
    /// `uname -m`.
    pub arch: String,
    /// The SSH user.
    pub user: String,
    /// The user is root.
    pub root: bool,
    /// The user may run `sudo -n`.
    pub sudo: bool,
    /// The OS's name.
    pub os: String,
    /// The node has `apt-get`.
    pub apt: bool,
    /// SHA-256 of the program at the install path, if there is one.
    pub binary_sha256: Option<String>,
    /// Its `--version`.
    pub binary_version: Option<String>,
    /// Packages whose commands are missing.
    pub missing: Vec<String>,
    /// Packages present whose daemon does not answer.
    pub down: Vec<String>,
}

impl NodeFacts {
    /// Reads the probe's output.
    pub fn parse(text: &str) -> Self {
        let mut f = NodeFacts::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "arch" => f.arch = v,
                "user" => f.user = v,
                "priv" => {
                    f.root = v == "root";
                    f.sudo = v == "sudo";
                }
                "os" => f.os = v,
                "apt" => f.apt = v == "yes",
                "bin_sha256" if !v.is_empty() => f.binary_sha256 = Some(v),
                "bin_version" => f.binary_version = Some(v),
                "missing" => f.missing.push(v),
                "down" => f.down.push(v),
                _ => {}
            }
        }
        f
    }
}

/// What to do on a node: see [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootstrapPlan {
    /// Packages to install.
    pub packages: Vec<String>,
    /// The program to install, if any.
    pub binary: Option<NodeBinary>,
    /// Packages whose daemon to start (down, or installed now).
    pub start: Vec<String>,
    /// Installing needs `sudo -n`.
    pub sudo: bool,
}

impl BootstrapPlan {
    /// True when nothing is to be installed or started.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.binary.is_none() && self.start.is_empty()
    }
}

/// Step 2 of the [module docs](self): what `bootstrap` must do on `node` given `facts`;
/// `wanted_sha256` is the hash of the program for the node's architecture (needed only
/// when the node has a program to compare).
pub fn decide(
    bootstrap: &NodeBootstrap,
    facts: &NodeFacts,
    wanted_sha256: Option<&str>,
    node: &str,
) -> Result<BootstrapPlan> {
    let step = |e: Error| e.with_context("step", "probe");
    let binary = match bootstrap.binaries.get(&facts.arch) {
        None if bootstrap.binaries.is_empty() => None,
        Some(b) => {
            let same = facts.binary_sha256.is_some() && facts.binary_sha256.as_deref() == wanted_sha256;
            (!same).then(|| b.clone())
        }
        None if facts.arch.is_empty() => {
            return Err(step(Error::new(
                ErrorKind::Unexpected,
                format!("node {node} did not say its CPU architecture (`uname -m` printed nothing)"),
            )));
        }
        None => {
            let have: Vec<&str> = bootstrap.binaries.keys().map(String::as_str).collect();
            return Err(step(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "node {node} is {arch} but the cloudtik-node to install is built for {}: build it for \
                     {arch}-unknown-linux-gnu and give it (the `cloudtik` CLI: environment variable \
                     CLOUDTIK_NODE_BINARY_{}=<path>), or use {} instances",
                    have.join(", "),
                    facts.arch.to_ascii_uppercase(),
                    have.join(" or "),
                    arch = facts.arch,
                ),
            )));
        }
    };
    let packages: Vec<String> = bootstrap
        .packages
        .iter()
        .filter(|p| facts.missing.contains(&p.package))
        .map(|p| p.package.clone())
        .collect();
    if !packages.is_empty() && !facts.apt {
        return Err(step(Error::new(
            ErrorKind::Unsupported,
            format!(
                "node {node} ({}) lacks {} and has no apt-get to install it: use a Debian or Ubuntu image, \
                 or one that has it",
                facts.os,
                packages.join(", ")
            ),
        )));
    }
    let start: Vec<String> = bootstrap
        .packages
        .iter()
        .filter(|p| p.service.is_some() && (packages.contains(&p.package) || facts.down.contains(&p.package)))
        .map(|p| p.package.clone())
        .collect();
    let needs_root = !packages.is_empty() || binary.is_some() || !start.is_empty();
    if needs_root && !facts.root && !facts.sudo {
        let mut what = packages.clone();
        if binary.is_some() {
            what.push(format!("cloudtik-node at {}", bootstrap.install_path));
        }
        return Err(step(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "on node {node} the SSH user {} is not root and cannot run `sudo -n`, which installing {} needs: \
                 give the user passwordless sudo (as cloud images do), log in as root (`auth.ssh_user`), or put \
                 them on the image",
                if facts.user.is_empty() { "?" } else { &facts.user },
                what.join(" and ")
            ),
        )));
    }
    Ok(BootstrapPlan {
        packages,
        binary,
        start,
        sudo: needs_root && !facts.root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> NodeBootstrap {
        NodeBootstrap::new(
            DEFAULT_INSTALL_PATH,
            NodeBinary::for_arch("/x/cloudtik-node", "x86_64"),
        )
        .with_package(NodePackage::new("redis-server"))
    }

    fn facts(text: &str) -> NodeFacts {
        NodeFacts::parse(text)
    }

    #[test]
    fn a_stock_node_gets_everything_with_sudo() {
        let f = facts(
            "arch=x86_64\nuser=ubuntu\npriv=sudo\nos=Debian GNU/Linux 12\napt=yes\nmissing=redis-server\n",
        );
        let p = decide(&bootstrap(), &f, None, "i-1").unwrap();
        assert_eq!(p.packages, vec!["redis-server"]);
        assert!(p.binary.is_some());
        assert!(p.sudo);
    }

    #[test]
    fn a_node_with_the_same_build_and_packages_gets_nothing() {
        let f = facts(
            "arch=x86_64\nuser=root\npriv=root\napt=yes\nbin_sha256=abc\nbin_version=cloudtik-node 0.1.0\n",
        );
        let p = decide(&bootstrap(), &f, Some("abc"), "i-1").unwrap();
        assert!(p.packages.is_empty() && p.binary.is_none() && !p.sudo);
        // Another build (same version, other bytes) is replaced.
        let p = decide(&bootstrap(), &f, Some("def"), "i-1").unwrap();
        assert!(p.binary.is_some() && !p.sudo);
    }

    #[test]
    fn another_architecture_names_what_to_build() {
        let f = facts("arch=aarch64\nuser=ubuntu\npriv=sudo\napt=yes\n");
        let e = decide(&bootstrap(), &f, None, "i-9").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let text = e.to_string();
        assert!(
            text.contains("i-9") && text.contains("aarch64-unknown-linux-gnu"),
            "{text}"
        );
        assert!(text.contains("CLOUDTIK_NODE_BINARY_AARCH64"), "{text}");
        assert_eq!(e.context_value("step"), Some("probe"));
        // Given one, it is used.
        let b = bootstrap().with_binary(NodeBinary::for_arch("/x/arm", "aarch64"));
        let p = decide(&b, &f, None, "i-9").unwrap();
        assert_eq!(p.binary.unwrap().path(), Path::new("/x/arm"));
    }

    #[test]
    fn no_root_and_no_sudo_fails_only_when_something_is_missing() {
        let f = facts("arch=x86_64\nuser=alice\npriv=none\napt=yes\nmissing=redis-server\n");
        let e = decide(&bootstrap(), &f, None, "i-2").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains("alice") && e.to_string().contains("sudo"),
            "{e}"
        );
        let f = facts("arch=x86_64\nuser=alice\npriv=none\napt=yes\nbin_sha256=abc\n");
        assert!(decide(&bootstrap(), &f, Some("abc"), "i-2").is_ok());
    }

    #[test]
    fn a_missing_package_without_apt_is_unsupported() {
        let f = facts(
            "arch=x86_64\nuser=root\npriv=root\nos=Alpine Linux\napt=no\nmissing=redis-server\nbin_sha256=abc\n",
        );
        let e = decide(&bootstrap(), &f, Some("abc"), "i-3").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("Alpine"), "{e}");
    }

    #[test]
    fn the_probe_runs_in_sh_and_reports_this_machine() {
        // The probe against this machine (a Linux host with sh): the arch is there and
        // a program path that does not exist gives no hash.
        let b = NodeBootstrap::new("/nonexistent/cloudtik-node", NodeBinary::local("/bin/sh"))
            .with_package(NodePackage::new("no-such-package-xyz"))
            .with_package(NodePackage::new("coreutils").with_command("ls"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(b.probe_command())
            .output()
            .unwrap();
        assert!(out.status.success());
        let f = NodeFacts::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(f.arch, std::env::consts::ARCH);
        assert_eq!(f.binary_sha256, None);
        assert_eq!(f.missing, vec!["no-such-package-xyz"]);
    }

    #[tokio::test]
    async fn the_hash_is_the_files_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, b"abc").unwrap();
        let b = NodeBinary::local(&p);
        assert_eq!(
            b.sha256().await.unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            NodeBinary::local(dir.path().join("missing"))
                .sha256()
                .await
                .is_err()
        );
    }
}

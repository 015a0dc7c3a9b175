//! The "cloud twin" test harness: a fake cloud API whose instances are real machines on
//! this host. Each instance the fake API launches is a Docker container of a stock-like
//! image (`scripts/build-twin-image.sh`: Debian with sshd and sudo, nothing of CloudTik)
//! with the instance's private IP on a Docker network that has the VPC's address range.
//! Only private IPs exist: a cluster config run against a twin needs
//! `provider.use_internal_ips: true`.
//!
//! This module is the provider-neutral part: the image ([`ensure_image`]), the Docker
//! network ([`TwinNetwork`]), the instance containers ([`TwinHost`]) and their cleanup.
//! A fake cloud API is fronted by a provider-specific proxy that calls [`TwinHost`]
//! (see `aws.rs` for EC2 on moto); GCP and Azure fakes can reuse this module the same way.
//!
//! # Address ranges
//!
//! Docker refuses two networks whose ranges overlap, so only one twin per range can exist
//! on the host. Rather than serializing the twin tests with a lock, each twin gets its own
//! range: [`TwinNetwork::create_free`] picks a `10.N.0.0/16` (N in 100..=199) that no
//! Docker network and no host route uses, and tries the next one when another process
//! took it first (Docker's overlap error). A test that wants a fixed range calls
//! [`TwinNetwork::create`], which fails with a clear message when the range is taken.
//!
//! # Cleanup
//!
//! Every network and container carries labels ([`LABEL_NETWORK`], [`LABEL_OWNER_PID`]);
//! [`TwinHost::cleanup`] (also on drop) removes the containers of its network and the
//! network. A test process killed before its drop leaves them behind: creating a twin
//! first removes the twins whose owner process is gone ([`cleanup_stale`]).
//! Containers are removed with their anonymous volumes (`docker rm -v`): a node-engine
//! instance keeps its engine's `/var/lib/docker` in one.
//!
//! # Instances with their own Docker engine
//!
//! A node type in container mode (`docker.enabled: true`) installs Docker on its host
//! and runs its commands in a container there. [`InstanceSpec::node_engine`] gives an
//! instance what its own engine needs on this host, whose Docker cannot run
//! `--privileged` containers (its bounding set lacks `CAP_SYS_RESOURCE`, so
//! `--privileged` fails with "unable to apply caps"); see [`NODE_ENGINE_RUN_OPTIONS`]:
//!
//! * `SYS_ADMIN` and `NET_ADMIN` (mounts, the engine's bridge and iptables rules) and
//!   `SYS_NICE` (the inner container gets `--cap-add=SYS_NICE` from CloudTik; a
//!   capability the engine lacks cannot be given on);
//! * seccomp and AppArmor unconfined;
//! * the host's cgroup v1 hierarchy read-write (`runc` makes the inner containers'
//!   cgroups there: read-only, it fails "mkdir /sys/fs/cgroup/cpuset/docker: read-only
//!   file system"), and in the image's `/etc/docker/daemon.json` a `cgroup-parent` of
//!   its own, `/<container name>` (env `TWIN_DOCKER_CGROUP_PARENT`, read by the image's
//!   twin-init), so inner containers do not mix with the host engine's or another
//!   instance's; [`TwinHost::cleanup`] removes those (empty) cgroup folders where this
//!   process sees them;
//! * an anonymous volume at `/var/lib/docker` (overlay2 does not work on the container's
//!   own overlay root), removed with the container.
//!
//! No registry is reachable from here, so a node cannot pull the image of its
//! container as a real cloud node would: [`save_image_archive`] writes an image with
//! `docker save` into a folder that instances mount read-only at [`TWIN_IMAGES_DIR`]
//! (the stand-in for a registry), and the cluster loads it with `docker load -i` in
//! `docker.initialization_commands`.
#![allow(dead_code)] // each test file uses a part

#[cfg(feature = "aws")]
pub(crate) mod aws;
pub(crate) mod cli;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Label of twin networks and containers: the network's name.
pub(crate) const LABEL_NETWORK: &str = "cloudtik-twin.network";
/// Label of twin containers: the instance id.
pub(crate) const LABEL_INSTANCE: &str = "cloudtik-twin.instance";
/// Label of twin networks and containers: the pid of the test process that made them.
pub(crate) const LABEL_OWNER_PID: &str = "cloudtik-twin.owner-pid";

/// Where instances find image archives ([`save_image_archive`]), read-only.
pub(crate) const TWIN_IMAGES_DIR: &str = "/var/lib/twin-images";

/// The `docker run` options of a node-engine instance (see the module docs).
pub(crate) const NODE_ENGINE_RUN_OPTIONS: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--cap-add",
    "SYS_NICE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "-v",
    "/var/lib/docker",
];

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `Ok(())`, or `false` after saying why the test is skipped; panics under `CI=true`
/// (the same rule as the moto harness's `start_moto()`).
pub(crate) fn required<T>(what: &str, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if ci() => panic!("{what} is required when CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {what} is not available: {e} (set CI=true to make this a failure)");
            None
        }
    }
}

/// Runs `docker args...`, its stdout on success.
pub(crate) fn docker(args: &[&str]) -> Result<String, String> {
    let out: Output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "docker {} failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Docker is reachable.
pub(crate) fn docker_available() -> Result<(), String> {
    docker(&["info", "--format", "{{.ServerVersion}}"]).map(drop)
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the examples crate is in the workspace")
        .to_path_buf()
}

/// The twin image's name (`cloudtik-twin:<12 hex>`), built with
/// `scripts/build-twin-image.sh` when missing (about a minute; needs root or sudo for
/// debootstrap, and the Debian mirror).
pub(crate) fn ensure_image() -> Result<String, String> {
    let script = repo_root().join("scripts/build-twin-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-tag")
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if docker(&["image", "inspect", "--format", "{{.Id}}", &image]).is_err() {
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(image)
}

/// The virtual provider's node image (`cloudtik-node:<12 hex>`: Debian with redis,
/// python3 and sshd), built with `scripts/build-node-image.sh` when missing.
pub(crate) fn ensure_node_image() -> Result<String, String> {
    let script = repo_root().join("scripts/build-node-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-tag")
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if docker(&["image", "inspect", "--format", "{{.Id}}", &image]).is_err() {
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(image)
}

/// The file name of `image`'s archive: `cloudtik-node:abc` -> `cloudtik-node_abc.tar`.
pub(crate) fn image_archive_name(image: &str) -> String {
    let safe: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.tar")
}

/// Writes `docker save` of `image` into `dir` (made when missing) unless the archive is
/// there already (images are tagged by content, so a name stands for one image); returns
/// its file name. Instances mounting `dir` at [`TWIN_IMAGES_DIR`] load it with
/// `docker load -i` (see the module docs).
pub(crate) fn save_image_archive(image: &str, dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name = image_archive_name(image);
    let path = dir.join(&name);
    if path.is_file() {
        return Ok(name);
    }
    let partial = dir.join(format!("{name}.partial-{}", std::process::id()));
    let partial_s = partial.to_string_lossy().into_owned();
    let saved = docker(&["save", "-o", &partial_s, image]);
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &path).map_err(|e| format!("renaming {partial_s}: {e}"))?;
    Ok(name)
}

/// An IPv4 range `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) base: Ipv4Addr,
    pub(crate) len: u8,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("`{s}` is not an IPv4 range a.b.c.d/len");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 30 {
            return Err(format!(
                "`{s}`: a twin network needs a range of at least 4 addresses"
            ));
        }
        let cidr = Cidr { base: ip, len };
        if cidr.network() != ip {
            return Err(format!(
                "`{s}` has host bits set (the range is {})",
                Cidr {
                    base: cidr.network(),
                    len
                }
            ));
        }
        Ok(cidr)
    }

    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    pub(crate) fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) & self.mask())
    }

    pub(crate) fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) | !self.mask())
    }

    /// The first host address: the Docker network's gateway (this host on the network).
    pub(crate) fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    pub(crate) fn overlaps(&self, other: &Cidr) -> bool {
        let len = self.len.min(other.len);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(self.base) & mask == u32::from(other.base) & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.len)
    }
}

/// The IPv4 ranges in use on this host: Docker networks' subnets and the host's routes.
fn used_ranges() -> Vec<Cidr> {
    let mut used = Vec::new();
    if let Ok(ids) = docker(&["network", "ls", "-q"]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec![
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            ];
            args.extend(ids);
            if let Ok(out) = docker(&args) {
                used.extend(out.split_whitespace().filter_map(|s| Cidr::parse(s).ok()));
            }
        }
    }
    // /proc/net/route: destination and mask in hex, little-endian; skip the default route.
    if let Ok(routes) = std::fs::read_to_string("/proc/net/route") {
        for line in routes.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(dest), Some(mask)) = (f.get(1), f.get(7)) else {
                continue;
            };
            let (Ok(dest), Ok(mask)) = (u32::from_str_radix(dest, 16), u32::from_str_radix(mask, 16)) else {
                continue;
            };
            if mask == 0 {
                continue;
            }
            used.push(Cidr {
                base: Ipv4Addr::from(dest.swap_bytes()),
                len: mask.count_ones() as u8,
            });
        }
    }
    used
}

static NEXT_NETWORK: AtomicU32 = AtomicU32::new(0);

/// A Docker bridge network standing for a VPC: named `cloudtik-twin-<pid>-<n>`, with the
/// VPC's range as its subnet and the range's first host address as its gateway (the
/// host's address on the network: a proxy bound there is reachable from the host and
/// from every container on the network).
#[derive(Debug)]
pub(crate) struct TwinNetwork {
    name: String,
    cidr: Cidr,
}

impl TwinNetwork {
    /// A network with the range `cidr` (e.g. `10.0.0.0/16`).
    pub(crate) fn create(cidr: &str) -> Result<TwinNetwork, String> {
        let cidr = Cidr::parse(cidr)?;
        cleanup_stale();
        let n = NEXT_NETWORK.fetch_add(1, Ordering::Relaxed);
        let name = format!("cloudtik-twin-{}-{n}", std::process::id());
        let subnet = cidr.to_string();
        let gateway = cidr.first_host().to_string();
        let network_label = format!("{LABEL_NETWORK}={name}");
        let owner_label = format!("{LABEL_OWNER_PID}={}", std::process::id());
        docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            &subnet,
            "--gateway",
            &gateway,
            "--label",
            &network_label,
            "--label",
            &owner_label,
            &name,
        ])
        .map_err(|e| {
            if e.contains("overlap") {
                format!(
                    "the range {cidr} is in use on this host (another twin, a Docker network or a \
                     route; only one twin network per range can exist): {e}"
                )
            } else {
                e
            }
        })?;
        Ok(TwinNetwork { name, cidr })
    }

    /// A network with a free `10.N.0.0/16` range (see the module docs).
    pub(crate) fn create_free() -> Result<TwinNetwork, String> {
        let start = std::process::id() % 100;
        let mut last = String::from("no candidate");
        for i in 0..100 {
            let n = 100 + (start + i) % 100;
            let candidate = Cidr {
                base: Ipv4Addr::new(10, n as u8, 0, 0),
                len: 16,
            };
            if used_ranges().iter().any(|u| u.overlaps(&candidate)) {
                continue;
            }
            match TwinNetwork::create(&candidate.to_string()) {
                Ok(net) => return Ok(net),
                // Taken by a concurrent twin since we looked: the next one.
                Err(e) if e.contains("in use on this host") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(format!(
            "no free 10.N.0.0/16 (N in 100..=199) for a twin network: {last}"
        ))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// The gateway: this host's address on the network.
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        self.cidr.first_host()
    }

    /// Why an instance cannot have `ip` on this network, if it cannot.
    pub(crate) fn check_instance_ip(&self, ip: Ipv4Addr) -> Result<(), String> {
        if !self.cidr.contains(ip) {
            Err(format!(
                "the private IP {ip} is outside the twin network's range {} (the fake cloud assigned \
                 an address outside the VPC range the twin was started with: launch into a subnet of \
                 that range)",
                self.cidr
            ))
        } else if ip == self.gateway() {
            Err(format!(
                "the private IP {ip} is the twin network's gateway (this host's address on {})",
                self.cidr
            ))
        } else if ip == self.cidr.network() || ip == self.cidr.broadcast() {
            Err(format!(
                "the private IP {ip} is the network or broadcast address of {}",
                self.cidr
            ))
        } else {
            Ok(())
        }
    }

    fn remove(&self) -> Result<(), String> {
        match docker(&["network", "rm", &self.name]) {
            Err(e) if e.contains("not found") || e.contains("No such network") => Ok(()),
            r => r.map(drop),
        }
    }
}

/// A bind mount into an instance container.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    pub(crate) host: PathBuf,
    pub(crate) container: String,
    pub(crate) read_only: bool,
}

impl Mount {
    pub(crate) fn new(host: impl Into<PathBuf>, container: impl Into<String>) -> Mount {
        Mount {
            host: host.into(),
            container: container.into(),
            read_only: false,
        }
    }

    pub(crate) fn read_only(host: impl Into<PathBuf>, container: impl Into<String>) -> Mount {
        Mount {
            read_only: true,
            ..Mount::new(host, container)
        }
    }
}

/// The home directory of `user` in the twin image.
pub(crate) fn home_of(user: &str) -> String {
    if user == "root" {
        "/root".to_string()
    } else {
        format!("/home/{user}")
    }
}

/// A package cache shared by the instances (and across test runs): `<dir>/apt-archives`
/// at `/var/cache/apt/archives`, `<dir>/apt-lists` at `/var/lib/apt/lists` and
/// `<dir>/wheels` at the SSH user's `~/.cache/cloudtik/wheels`. The folders are made
/// writable by everyone (the SSH user is not root). Instances share apt's lock files
/// through these mounts: two `apt-get update` at the same moment on two instances wait
/// for each other (or fail without `-o DPkg::Lock::Timeout=...`), as on one machine.
#[derive(Debug, Clone)]
pub(crate) struct PackageCache {
    pub(crate) dir: PathBuf,
}

impl PackageCache {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Result<PackageCache, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.into();
        for sub in ["apt-archives/partial", "apt-lists/partial", "wheels"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let wheels = dir.join("wheels");
        std::fs::set_permissions(&wheels, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod {}: {e}", wheels.display()))?;
        Ok(PackageCache { dir })
    }

    /// The mounts for instances whose SSH user is `ssh_user`.
    pub(crate) fn mounts(&self, ssh_user: &str) -> Vec<Mount> {
        vec![
            Mount::new(self.dir.join("apt-archives"), "/var/cache/apt/archives"),
            Mount::new(self.dir.join("apt-lists"), "/var/lib/apt/lists"),
            Mount::new(
                self.dir.join("wheels"),
                format!("{}/.cache/cloudtik/wheels", home_of(ssh_user)),
            ),
        ]
    }
}

/// What an instance container is started with.
#[derive(Debug, Clone)]
pub(crate) struct InstanceSpec {
    /// The instance id (the container's hostname).
    pub(crate) id: String,
    pub(crate) private_ip: Ipv4Addr,
    /// `TWIN_SSH_USER`: the user made by the image's cloud-init stand-in (`root` is root).
    pub(crate) ssh_user: String,
    /// `TWIN_AUTHORIZED_KEY`: an OpenSSH public key line, or none.
    pub(crate) authorized_key: Option<String>,
    /// `TWIN_ENVIRONMENT`: appended to `/etc/environment` (the instance role's stand-in).
    pub(crate) environment: Vec<(String, String)>,
    pub(crate) mounts: Vec<Mount>,
    /// The instance can run its own Docker engine (see the module docs).
    pub(crate) node_engine: bool,
}

/// A twin instance container, as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TwinInstance {
    pub(crate) id: String,
    pub(crate) container: String,
    /// Docker's state: `running`, `exited`, `created`...
    pub(crate) state: String,
    /// The static IP the container was created with.
    pub(crate) ip: Option<Ipv4Addr>,
}

impl TwinInstance {
    pub(crate) fn running(&self) -> bool {
        self.state == "running"
    }
}

/// The instance containers of one twin network; removes them and the network on drop.
#[derive(Debug)]
pub(crate) struct TwinHost {
    network: TwinNetwork,
    image: String,
}

impl TwinHost {
    pub(crate) fn new(network: TwinNetwork, image: impl Into<String>) -> TwinHost {
        TwinHost {
            network,
            image: image.into(),
        }
    }

    pub(crate) fn network(&self) -> &TwinNetwork {
        &self.network
    }

    pub(crate) fn image(&self) -> &str {
        &self.image
    }

    /// The container name of instance `id`: `cloudtik-twin-<pid>-<n>-<id>`, i.e. the
    /// network's name and the instance id.
    pub(crate) fn container_name(&self, id: &str) -> String {
        format!("{}-{id}", self.network.name)
    }

    /// Starts the container of an instance (`docker run -d`); returns when Docker has
    /// started it (sshd answers about a second later).
    pub(crate) fn run(&self, spec: &InstanceSpec) -> Result<(), String> {
        self.network.check_instance_ip(spec.private_ip)?;
        let name = self.container_name(&spec.id);
        let ip = spec.private_ip.to_string();
        let environment: Vec<String> = spec.environment.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &spec.id,
            "--network",
            &self.network.name,
            "--ip",
            &ip,
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "--label".into(),
            format!("{LABEL_NETWORK}={}", self.network.name),
            "--label".into(),
            format!("{LABEL_INSTANCE}={}", spec.id),
            "--label".into(),
            format!("{LABEL_OWNER_PID}={}", std::process::id()),
            "-e".into(),
            format!("TWIN_SSH_USER={}", spec.ssh_user),
            "-e".into(),
            format!(
                "TWIN_AUTHORIZED_KEY={}",
                spec.authorized_key.as_deref().unwrap_or("")
            ),
            "-e".into(),
            format!("TWIN_ENVIRONMENT={}", environment.join("\n")),
        ]);
        if spec.node_engine {
            args.extend(NODE_ENGINE_RUN_OPTIONS.iter().map(|s| s.to_string()));
            args.extend(["-e".into(), format!("TWIN_DOCKER_CGROUP_PARENT=/{name}")]);
        }
        for m in &spec.mounts {
            args.push("--mount".into());
            args.push(format!(
                "type=bind,source={},target={}{}",
                m.host.display(),
                m.container,
                if m.read_only { ",readonly" } else { "" }
            ));
        }
        args.push(self.image.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args)
            .map(drop)
            .map_err(|e| format!("starting the container of instance {}: {e}", spec.id))
    }

    /// Starts the containers of several instances at once.
    pub(crate) fn run_all(&self, specs: &[InstanceSpec]) -> Result<(), String> {
        let errors: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = specs.iter().map(|spec| s.spawn(move || self.run(spec))).collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())).err())
                .collect()
        });
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Stops the container of instance `id` (`docker stop`, SIGTERM then 5 s).
    pub(crate) fn stop(&self, id: &str) -> Result<(), String> {
        docker(&["stop", "-t", "5", &self.container_name(id)]).map(drop)
    }

    /// Starts the stopped container of instance `id` again: same IP, same host keys,
    /// same disk (the image's init runs again; it keeps the user and the environment).
    pub(crate) fn start(&self, id: &str) -> Result<(), String> {
        docker(&["start", &self.container_name(id)]).map(drop)
    }

    /// Removes the container of instance `id` and its anonymous volumes (`docker rm -f
    /// -v`), and its engine's cgroup folders; no error when absent.
    pub(crate) fn remove(&self, id: &str) -> Result<(), String> {
        let name = self.container_name(id);
        let removed = match docker(&["rm", "-f", "-v", &name]) {
            Err(e) if e.contains("No such container") => Ok(()),
            r => r.map(drop),
        };
        remove_cgroup_folders(&name);
        removed
    }

    /// Runs one of [`stop`](Self::stop), [`start`](Self::start), [`remove`](Self::remove)
    /// on several instances at once.
    pub(crate) fn each(
        &self,
        ids: &[String],
        op: fn(&TwinHost, &str) -> Result<(), String>,
    ) -> Result<(), String> {
        let errors: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = ids.iter().map(|id| s.spawn(move || op(self, id))).collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())).err())
                .collect()
        });
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The instance containers of this network (running or not).
    pub(crate) fn instances(&self) -> Result<Vec<TwinInstance>, String> {
        containers(
            &format!("{LABEL_NETWORK}={}", self.network.name),
            Some(&self.network.name),
        )
    }

    /// Removes every container of this network (with its anonymous volumes and its
    /// engine's cgroup folders) and the network.
    pub(crate) fn cleanup(&self) -> Result<(), String> {
        remove_labeled(&format!("{LABEL_NETWORK}={}", self.network.name))?;
        remove_cgroup_folders(&format!("{}-", self.network.name));
        self.network.remove()
    }

    /// Waits until `ip:port` accepts TCP connections (e.g. sshd on 22).
    pub(crate) fn wait_for_port(ip: Ipv4Addr, port: u16, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let addr = (ip, port).into();
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{ip}:{port} did not accept connections within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TwinHost {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("twin cleanup of {}: {e}", self.network.name);
        }
    }
}

/// The containers with `label`; the IP is read from `network` when given.
fn containers(label: &str, network: Option<&str>) -> Result<Vec<TwinInstance>, String> {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}")])?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ip = match network {
        Some(n) => format!(
            "{{{{with index .NetworkSettings.Networks \"{n}\"}}}}{{{{with .IPAMConfig}}}}{{{{.IPv4Address}}}}{{{{end}}}}{{{{end}}}}"
        ),
        None => String::new(),
    };
    let format = format!(
        "{{{{index .Config.Labels \"{LABEL_INSTANCE}\"}}}}\t{{{{.Name}}}}\t{{{{.State.Status}}}}\t{ip}"
    );
    let mut args = vec!["inspect", "--format", &format];
    args.extend(ids);
    let out = match docker(&args) {
        Ok(out) => out,
        // A container removed between the listing and the inspection.
        Err(e) if e.contains("No such") => return containers(label, network),
        Err(e) => return Err(e),
    };
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            TwinInstance {
                id: f.first().unwrap_or(&"").to_string(),
                container: f.get(1).unwrap_or(&"").trim_start_matches('/').to_string(),
                state: f.get(2).unwrap_or(&"").to_string(),
                ip: f.get(3).and_then(|s| s.trim().parse().ok()),
            }
        })
        .collect())
}

fn remove_labeled(label: &str) -> Result<(), String> {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}")])?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut args = vec!["rm", "-f", "-v"];
    args.extend(ids);
    match docker(&args) {
        Err(e) if !e.contains("No such container") => Err(e),
        _ => Ok(()),
    }
}

/// Every twin container on this host, of any network and any process.
pub(crate) fn all_twin_containers() -> Result<Vec<TwinInstance>, String> {
    containers(LABEL_NETWORK, None)
}

/// Every twin network on this host.
pub(crate) fn all_twin_networks() -> Result<Vec<String>, String> {
    let out = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label={LABEL_NETWORK}"),
        "--format",
        "{{.Name}}",
    ])?;
    Ok(out
        .lines()
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .collect())
}

/// Removes the twin networks (and their containers) whose owner process is gone: what a
/// killed test run left behind. Errors are reported and ignored.
pub(crate) fn cleanup_stale() {
    let Ok(out) = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label={LABEL_NETWORK}"),
        "--format",
        &format!("{{{{.Name}}}}\t{{{{.Label \"{LABEL_OWNER_PID}\"}}}}"),
    ]) else {
        return;
    };
    for line in out.lines() {
        let Some((name, pid)) = line.split_once('\t') else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if alive {
            continue;
        }
        eprintln!("removing the stale twin network {name} (its test process {pid} is gone)");
        let removed = remove_labeled(&format!("{LABEL_NETWORK}={name}"))
            .and_then(|()| docker(&["network", "rm", name]).map(drop));
        remove_cgroup_folders(&format!("{name}-"));
        if let Err(e) = removed {
            eprintln!("  could not: {e}");
        }
    }
}

/// Removes the (empty) cgroup folders `/sys/fs/cgroup/<controller>/<prefix>*` that
/// node-engine instances' engines made (their `cgroup-parent`), deepest first, where
/// this process sees the host's hierarchy; best effort: a folder still in use stays.
pub(crate) fn remove_cgroup_folders(prefix: &str) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in controllers.flatten() {
        let Ok(entries) = std::fs::read_dir(c.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let is_ours = e.file_name().to_str().is_some_and(|n| n.starts_with(prefix));
            if is_ours && e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
}

/// Twin-made cgroup folders left on this host (`/sys/fs/cgroup/*/cloudtik-twin-*`).
pub(crate) fn leftover_cgroup_folders(prefix: &str) -> Vec<PathBuf> {
    let mut left = Vec::new();
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            if let Ok(entries) = std::fs::read_dir(c.path()) {
                left.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)))
                        .map(|e| e.path()),
                );
            }
        }
    }
    left
}

#[cfg(test)]
mod cidr_tests {
    use super::Cidr;

    #[test]
    fn cidr_arithmetic() {
        let c = Cidr::parse("10.0.0.0/16").unwrap();
        assert_eq!(c.first_host().to_string(), "10.0.0.1");
        assert_eq!(c.broadcast().to_string(), "10.0.255.255");
        assert!(c.contains("10.0.3.4".parse().unwrap()));
        assert!(!c.contains("10.1.0.4".parse().unwrap()));
        assert!(c.overlaps(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.1.0.0/16").unwrap()));
        assert!(Cidr::parse("10.0.0.1/16").is_err());
    }
}

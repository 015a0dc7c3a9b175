//! The `virtual` provider: a whole cluster as Docker containers on one machine, each
//! container acting as a VM (CloudTik's `virtual` provider, reference §6).
//!
//! * **Workspace** = the Docker bridge network `cloudtik-<workspace>`
//!   ([`VirtualWorkspaceProvider`]), with the bridge interface `tik-<hash>`.
//! * **Node** = a container named `<workspace>-<cluster>-<8 hex>` on that network
//!   ([`VirtualNodeProvider`]), started from the node image (see [`node_image_name`]),
//!   with CPU and memory limits from `node_config.instance_type` (`{CPU: 2, memory: 4G}`),
//!   and data disks as host folders (`node_config.data_disks`).
//! * Everything goes through the Docker Engine API ([bollard]) on the local unix socket;
//!   no docker CLI is run and no CLI output is parsed.
//!
//! # Tags: labels plus an overlay
//!
//! Every tag of a launch is a container label, set in the create call, so a container is
//! never visible untagged. Labels cannot change after creation, so tags set later
//! (`set_node_tags`: status, runtime hash, last error, ...) go to a per-cluster overlay,
//! `<state_dir>/<workspace>/<cluster>/tags.json`: container id -> tags. It is written
//! atomically (temporary file, fsync, rename) under an exclusive `flock` on a sibling lock
//! file, so processes on the host and in the head container (which sees the same folder,
//! see below) never lose each other's updates. Listing merges the overlay over the labels.
//! Filters on tags that no overlay entry overrides are pushed down to Docker as label
//! filters; every filter is applied again after the merge. Overlay entries of containers
//! that are gone are dropped by the next tag update, terminate, or unfiltered list.
//!
//! Provider-internal labels start with `org.cloudtik.` and are not tags. Labels of the
//! image itself show up as tags (Docker merges them into the container's labels); the
//! node image sets only `org.cloudtik.` labels.
//!
//! # How the head starts sibling containers: the Docker socket, not an SSH bridge
//!
//! CloudTik starts an SSH server on the host for each workspace (a "bridge" on the
//! network's gateway address, with its own keys and a process file); the head's
//! controller SSHes to the host and runs `docker` there. This provider instead **mounts
//! the host's Docker socket into the head container** (only the head; workers never get
//! it) and talks to the Engine API directly, exactly as it does on the host. The head also
//! gets the cluster's state folder mounted **at the same path** as on the host, so the tag
//! overlay is shared and data-disk paths (host paths, resolved by the daemon) mean the same
//! on both sides. Code that builds a provider inside the head passes the host's
//! `state_dir` (the bootstrap config carries it) and the socket path inside the container
//! (`/var/run/docker.sock`).
//!
//! Why: one code path for the launcher and the controller, no extra sshd process, keys,
//! ports or process files to manage and clean up, nothing that must run as a daemon on
//! the host, and typed API errors instead of a remote CLI's output.
//!
//! **Security trade-off.** Access to the Docker socket is root on the host: whoever can
//! run code in the head container (anyone holding the cluster's SSH key, and any process
//! of a runtime on the head) can start a privileged container that mounts `/` of the host.
//! CloudTik's bridge is no tighter in practice: its control key runs `docker` on the host,
//! which is root-equivalent too, unless an administrator restricts it with a forced
//! command. So the virtual provider is for a machine you own (a laptop, a CI runner, a
//! test box), not for sharing a host between users who do not trust each other. Set
//! `provider.mount_docker_socket: false` to keep the socket out of the head; the head's
//! controller then cannot scale workers (start them from the host instead). A tighter
//! design for later is a socket proxy that allows only calls on containers with this
//! workspace's labels.
//!
//! # Launch tokens
//!
//! Every container carries its launch's token as the label `cloudtik-launch-token`. A
//! launch lists the containers of its token first, adopts the running ones, starts the
//! ones an interrupted try created but did not start, and creates only the missing ones.
//! Launches of one cluster hold the lock file `launch.lock` in the cluster's state folder,
//! so even two concurrent calls with the same token create no duplicates. Containers are
//! created concurrently (`provider.max_concurrency`); when some fail, the launch answers
//! `Ok` with the created nodes and the first error as the shortfall (a full network is
//! [`ErrorKind::Capacity`]), and a container that failed to start is removed with its
//! data-disk folders.
//!
//! # Errors
//!
//! * Docker not running or the socket missing: [`ErrorKind::Transient`], saying Docker is
//!   not reachable at which socket and how to start it; no permission on the socket:
//!   [`ErrorKind::PermissionDenied`], saying how to join the `docker` group.
//! * The image missing: [`ErrorKind::NotFound`] naming the image and how to build it.
//! * The workspace network missing: [`ErrorKind::NotFound`] saying to create the workspace.
//! * An instance type larger than the machine (CPUs or memory): [`ErrorKind::Capacity`],
//!   marked permanent, checked before anything is created; no free address on the
//!   network or no memory: [`ErrorKind::Capacity`] (temporary). A config with such a
//!   node type, head or worker, is refused before that, when it is loaded
//!   ([`capacity_warnings`], registered by [`crate::config_loader`]: `cloudtik start`
//!   exits 3 naming `available_node_types.<type>.node_config.instance_type.CPU` or
//!   `.memory`; `cloudtik config validate` warns of it).
//! * With `provider.enable_port_mapping`, the head's SSH port is published on the host
//!   port `provider.port_mapping_base` (default 60022); that port in use:
//!   [`ErrorKind::Conflict`], permanent, checked before anything is created.
//!
//! # Host keys
//!
//! [`VirtualNodeProvider`] tells a node's SSH host keys
//! ([`NodeProvider::host_keys`](cloudtik_core::NodeProvider::host_keys)): it reads them
//! from the container through the Engine API (`docker exec` of `cat
//! /etc/ssh/ssh_host_*_key.pub`, waiting up to a minute for the image's `ssh-keygen -A`).
//! So the cluster's known-hosts file has a node's key before the first SSH connection to
//! it, and connections accept only that key (`StrictHostKeyChecking=yes`); the head's
//! controller does the same for workers.
//!
//! # The node image and the `cloudtik-node` binary
//!
//! `scripts/build-node-image.sh` builds the image from a Debian root filesystem made with
//! debootstrap (no registry is needed) and tags it `cloudtik-node:<hash of the script>`;
//! [`node_image_name`] computes the same name. The `cloudtik-node` binary is not baked
//! in: set `provider.node_binary` to mount a host binary read-only at
//! `/cloudtik/bin/cloudtik-node`, or let the updater upload it, so a rebuild of the
//! binary needs no image rebuild.
//!
//! # Cleanup contract of `terminate_nodes`
//!
//! * **Expected flow.** Per container: read its mounts, stop it (grace
//!   `provider.stop_timeout`), remove it and wait until it is gone, remove its data-disk
//!   folders (unless `permanent_data_volumes`), drop its overlay entry.
//! * **Guarantees.** A container that is gone already is success; after `Ok`, no listed
//!   container of those ids exists and the network has no endpoint of theirs.
//! * **Assumptions.** Every await is a cancellation point; running terminate again
//!   completes a cancelled one, except that data-disk folders of a container removed by a
//!   cancelled call stay on disk.
//!
//! # Containers stopped from outside
//!
//! Node containers have restart policy `unless-stopped`, so a node whose container is
//! stopped or killed from outside (`docker stop`, `docker kill`) stays as an exited
//! container: Docker does not restart a container stopped by hand. It is not a node any
//! more (listings show created, restarting, running and paused containers only), and the
//! controller replaces it. So that it does not stay behind forever:
//!
//! * **Listing** removes a cluster's `exited` or `dead` container whose `State.FinishedAt`
//!   is older than [`VirtualSettings::exited_node_grace`] (default
//!   [`EXITED_NODE_GRACE`], 30 s), as `terminate_nodes` would (data-disk folders,
//!   overlay entry), treating it as a node terminated from outside. The grace keeps a
//!   container that is only restarting (`docker restart` stops, then starts it; a
//!   listing in between sees it exited for a moment) and a container a daemon restart
//!   is about to start again.
//! * **A full `cloudtik stop`** (through
//!   [`NodeProvider::remove_stopped_nodes`](cloudtik_core::NodeProvider::remove_stopped_nodes)) and **workspace delete** remove the exited and
//!   dead containers of the cluster or workspace at once, with no grace: the user is
//!   tearing down.

mod docker;
mod node_provider;
mod tag_store;
mod workspace;

use std::path::{Path, PathBuf};

use cloudtik_core::config::{ClusterConfig, ProviderSection};
use cloudtik_core::{Error, ErrorKind, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::provider_config::VirtualProviderConfig;

pub use node_provider::VirtualNodeProvider;
pub use workspace::VirtualWorkspaceProvider;

/// The provider type name, as in `provider.type`.
pub const PROVIDER_TYPE: &str = "virtual";

/// How long a cluster's exited or dead container is kept before a listing removes it
/// (see [Containers stopped from outside](self#containers-stopped-from-outside)): longer
/// than a `docker restart` takes (its stop waits `provider.stop_timeout`, 5 s by default),
/// short enough that a container stopped by hand goes within a minute.
pub const EXITED_NODE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The repository of the node image built by `scripts/build-node-image.sh`.
pub const NODE_IMAGE_REPO: &str = "cloudtik-node";

/// The node image build script; its bytes are the inputs the image tag hashes.
pub const NODE_IMAGE_SCRIPT: &str = include_str!("../../../scripts/build-node-image.sh");

/// The command that builds the node image, for messages.
pub const NODE_IMAGE_BUILD_COMMAND: &str = "scripts/build-node-image.sh";

/// Where the head container sees the host's Docker socket.
pub const DOCKER_SOCKET_IN_HEAD: &str = "/var/run/docker.sock";

/// The host port the head's SSH port is published on with `provider.enable_port_mapping`
/// when `provider.port_mapping_base` is not set.
pub const DEFAULT_PORT_MAPPING_BASE: u16 = 60022;

/// Where the `cloudtik-node` binary is mounted in every node when `provider.node_binary` is set.
pub const NODE_BINARY_IN_NODE: &str = "/cloudtik/bin/cloudtik-node";

/// The tag of the node image: the first 12 hex digits of the SHA-256 of the build script
/// (which holds the Debian suite and the package list). The script computes the same
/// value with `sha256sum`, so `scripts/build-node-image.sh --print-tag` prints
/// [`node_image_name`].
pub fn node_image_tag() -> String {
    let digest = Sha256::digest(NODE_IMAGE_SCRIPT.as_bytes());
    hex::encode(digest)[..12].to_string()
}

/// The node image of this build: `cloudtik-node:<`[`node_image_tag`]`>`.
pub fn node_image_name() -> String {
    format!("{NODE_IMAGE_REPO}:{}", node_image_tag())
}

/// The Docker network of a workspace: `cloudtik-<workspace>`.
pub fn network_name(workspace: &str) -> String {
    format!("cloudtik-{workspace}")
}

/// The Linux bridge interface of a workspace's network: `tik-` and 11 hex digits of a
/// hash of the workspace name (interface names have at most 15 characters).
pub fn bridge_interface_name(workspace: &str) -> String {
    let digest = Sha256::digest(workspace.as_bytes());
    format!("tik-{}", &hex::encode(digest)[..11])
}

/// Resolved settings of the virtual provider, from `provider` keys and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VirtualSettings {
    /// The Docker Engine socket (`provider.docker_socket`, else `DOCKER_HOST` when it is
    /// a `unix://` URI, else `/var/run/docker.sock`).
    pub docker_socket: PathBuf,
    /// Root of the provider's state: `<state_dir>/<workspace>/<cluster>/tags.json`
    /// (`provider.state_dir`, default `~/.cloudtik/virtual`).
    pub state_dir: PathBuf,
    /// The default node image (`provider.image`, default [`node_image_name`]); a node
    /// type's `node_config.image` overrides it.
    pub image: String,
    /// The workspace network's subnet (`provider.subnet`), Docker picks one when unset.
    pub subnet: Option<String>,
    /// Seconds a container gets to stop before it is killed (`provider.stop_timeout`, default 5).
    pub stop_timeout_seconds: u32,
    /// Keep data-disk folders when a node is terminated (`provider.permanent_data_volumes`).
    /// Numbered disks (`data_disks: N`) live in the workspace's state folder and are
    /// removed with the workspace; disks in listed host folders stay.
    pub permanent_data_volumes: bool,
    /// Mount the Docker socket and the cluster's state folder into head containers
    /// (`provider.mount_docker_socket`, default true); see the module docs.
    pub mount_docker_socket: bool,
    /// A host `cloudtik-node` binary to mount read-only into every node (`provider.node_binary`).
    pub node_binary: Option<PathBuf>,
    /// A public key written to `/root/.ssh/authorized_keys` of every node at start (env
    /// `CLOUDTIK_AUTHORIZED_KEY`, read by the node image's command).
    pub authorized_key: Option<String>,
    /// How many containers are created or removed at once (`provider.max_concurrency`, default 8).
    pub max_concurrency: usize,
    /// `provider.enable_port_mapping`: the host port the head's SSH port (22) is
    /// published on (`provider.port_mapping_base`, default 60022); `None`: nothing is
    /// published.
    pub port_mapping_base: Option<u16>,
    /// How long a cluster's exited or dead container stays before a listing removes it
    /// (default [`EXITED_NODE_GRACE`]); see the [module docs](self#containers-stopped-from-outside).
    pub exited_node_grace: std::time::Duration,
    /// The host folder of the package cache every node mounts (`provider.package_cache`,
    /// default `~/.cloudtik/package-cache`; `None`: no sharing). Its `apt-archives`,
    /// `apt-lists` and `wheels` folders are mounted at `/var/cache/apt/archives`,
    /// `/var/lib/apt/lists` and `/root/.cache/cloudtik/wheels`, so a package a node
    /// downloaded (a `.deb`, a Python wheel) is not downloaded again by another node or
    /// cluster; the installers serialize on lock files in these folders.
    pub package_cache: Option<PathBuf>,
}

/// The default package cache of the virtual provider (`~/.cloudtik/package-cache`).
pub fn default_package_cache() -> PathBuf {
    expand_home("~/.cloudtik/package-cache")
}

/// The package cache's folders and where each is mounted in a node.
pub const PACKAGE_CACHE_MOUNTS: &[(&str, &str)] = &[
    ("apt-archives", "/var/cache/apt/archives"),
    ("apt-lists", "/var/lib/apt/lists"),
    ("wheels", "/root/.cache/cloudtik/wheels"),
];

impl Default for VirtualSettings {
    fn default() -> Self {
        VirtualSettings {
            docker_socket: default_docker_socket(),
            state_dir: default_state_dir(),
            image: node_image_name(),
            subnet: None,
            stop_timeout_seconds: 5,
            permanent_data_volumes: false,
            mount_docker_socket: true,
            node_binary: None,
            authorized_key: None,
            max_concurrency: 8,
            port_mapping_base: None,
            exited_node_grace: EXITED_NODE_GRACE,
            package_cache: Some(default_package_cache()),
        }
    }
}

impl VirtualSettings {
    /// Settings from the typed `provider` section; unset keys take the defaults.
    pub fn from_config(config: &VirtualProviderConfig) -> Result<Self> {
        let mut s = VirtualSettings::default();
        if let Some(socket) = &config.docker_socket {
            s.docker_socket = parse_socket(socket).ok_or_else(|| {
                Error::config(
                    "provider.docker_socket",
                    format!("`{socket}` is not a unix socket: expected a path or unix:///path"),
                )
            })?;
        }
        if let Some(dir) = &config.state_dir {
            s.state_dir = expand_home(dir);
        }
        if let Some(image) = &config.image {
            s.image = image.clone();
        }
        s.subnet = config.subnet.clone();
        if let Some(t) = config.stop_timeout {
            s.stop_timeout_seconds = t;
        }
        s.permanent_data_volumes = config.permanent_data_volumes.unwrap_or(false);
        s.mount_docker_socket = config.mount_docker_socket.unwrap_or(true);
        s.node_binary = config.node_binary.as_deref().map(expand_home);
        if let Some(n) = config.max_concurrency {
            s.max_concurrency = n.max(1);
        }
        match config.package_cache.as_deref() {
            Some("") => s.package_cache = None,
            Some(dir) => s.package_cache = Some(expand_home(dir)),
            None => {}
        }
        if config.enable_port_mapping.unwrap_or(false) {
            s.port_mapping_base = Some(config.port_mapping_base.unwrap_or(DEFAULT_PORT_MAPPING_BASE));
        }
        Ok(s)
    }

    /// Settings from a cluster's `provider` section; the public key of `auth.ssh_public_key`
    /// (when set and readable) becomes [`authorized_key`](Self::authorized_key).
    pub fn from_cluster_config(config: &ClusterConfig) -> Result<Self> {
        let mut s = Self::from_provider_section(&config.provider)?;
        if let Some(path) = &config.auth.ssh_public_key {
            let path = expand_home(path);
            let key = std::fs::read_to_string(&path).map_err(|e| {
                Error::config(
                    "auth.ssh_public_key",
                    format!("cannot read the public key {}: {e:#}", path.display()),
                )
            })?;
            s.authorized_key = Some(key.trim().to_string());
        }
        Ok(s)
    }

    /// Settings from a `provider` section of type `virtual`.
    pub fn from_provider_section(section: &ProviderSection) -> Result<Self> {
        if section.provider_type != PROVIDER_TYPE {
            return Err(Error::config(
                "provider.type",
                format!(
                    "the virtual provider got a section of type `{}`",
                    section.provider_type
                ),
            ));
        }
        Self::from_config(&section.parse()?)
    }

    /// Sets the state folder.
    #[must_use]
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// Sets the Docker socket.
    #[must_use]
    pub fn with_docker_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.docker_socket = socket.into();
        self
    }

    /// Sets the default image.
    #[must_use]
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = image.into();
        self
    }

    /// Sets the workspace network's subnet.
    #[must_use]
    pub fn with_subnet(mut self, subnet: impl Into<String>) -> Self {
        self.subnet = Some(subnet.into());
        self
    }

    /// Sets the stop grace period in seconds (0 kills at once).
    #[must_use]
    pub fn with_stop_timeout_seconds(mut self, seconds: u32) -> Self {
        self.stop_timeout_seconds = seconds;
        self
    }

    /// Sets whether data-disk folders outlive their nodes.
    #[must_use]
    pub fn with_permanent_data_volumes(mut self, v: bool) -> Self {
        self.permanent_data_volumes = v;
        self
    }

    /// Sets whether head containers get the Docker socket.
    #[must_use]
    pub fn with_mount_docker_socket(mut self, v: bool) -> Self {
        self.mount_docker_socket = v;
        self
    }

    /// Sets the `cloudtik-node` binary to mount into nodes.
    #[must_use]
    pub fn with_node_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.node_binary = Some(path.into());
        self
    }

    /// Sets the public key authorized on every node.
    #[must_use]
    pub fn with_authorized_key(mut self, key: impl Into<String>) -> Self {
        self.authorized_key = Some(key.into());
        self
    }

    /// Sets how long an exited or dead container is kept before a listing removes it.
    #[must_use]
    pub fn with_exited_node_grace(mut self, grace: std::time::Duration) -> Self {
        self.exited_node_grace = grace;
        self
    }

    /// The state folder of a workspace.
    pub fn workspace_state_dir(&self, workspace: &str) -> PathBuf {
        self.state_dir.join(workspace)
    }

    /// The state folder of a cluster (holds `tags.json`).
    pub fn cluster_state_dir(&self, workspace: &str, cluster: &str) -> PathBuf {
        self.state_dir.join(workspace).join(cluster)
    }
}

fn default_docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

fn default_state_dir() -> PathBuf {
    dirs::home_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join(".cloudtik")
        .join("virtual")
}

fn parse_socket(s: &str) -> Option<PathBuf> {
    if let Some(path) = s.strip_prefix("unix://") {
        return Some(PathBuf::from(path));
    }
    if s.contains("://") {
        return None;
    }
    Some(expand_home(s))
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => dirs::home_dir().map_or_else(|| PathBuf::from(p), |h| h.join(rest)),
        None => PathBuf::from(p),
    }
}

/// Checks a workspace or cluster name: it becomes part of container, network and folder
/// names, so it must start with a letter or digit and hold only letters, digits, `_`,
/// `.` and `-`.
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 100;
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{what} `{name}` cannot name Docker containers and networks: use letters, digits, \
                 `_`, `.` and `-`, starting with a letter or digit (at most 100 characters)"
            ),
        ))
    }
}

/// CPU and memory limits of a node, from `node_config.instance_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InstanceType {
    /// CPUs (fractions allowed); `None` means no limit.
    pub cpus: Option<f64>,
    /// Memory in bytes; `None` means no limit.
    pub memory_bytes: Option<i64>,
}

impl InstanceType {
    /// Reads `instance_type: {CPU: 2, memory: 4G}` from a node config. A missing
    /// `instance_type` (or key) means no limit.
    pub fn from_node_config(node_config: &Value) -> Result<Self> {
        let Some(it) = node_config.get("instance_type") else {
            return Ok(InstanceType::default());
        };
        let path = "node_config.instance_type";
        let obj = it
            .as_object()
            .ok_or_else(|| Error::config(path, "expected a mapping such as {CPU: 2, memory: 4G}"))?;
        let cpus = match obj.get("CPU") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let n = v.as_f64().filter(|n| n.is_finite() && *n > 0.0).ok_or_else(|| {
                    Error::config(
                        format!("{path}.CPU"),
                        format!("expected a positive number of CPUs, found {v}"),
                    )
                })?;
                Some(n)
            }
        };
        let memory_bytes = match obj.get("memory") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.as_i64().filter(|n| *n > 0).ok_or_else(|| {
                Error::config(
                    format!("{path}.memory"),
                    format!("expected a size such as 4G, found {n}"),
                )
            })?),
            Some(Value::String(s)) => Some(parse_memory(s).ok_or_else(|| {
                Error::config(
                    format!("{path}.memory"),
                    format!("`{s}` is not a size: expected a number with K, M, G or T, such as 512M or 4G"),
                )
            })?),
            Some(v) => {
                return Err(Error::config(
                    format!("{path}.memory"),
                    format!("expected a size such as 4G, found {v}"),
                ));
            }
        };
        Ok(InstanceType { cpus, memory_bytes })
    }

    /// A short name such as `2CPU-4G`, or `None` without limits.
    pub fn name(&self) -> Option<String> {
        if self.cpus.is_none() && self.memory_bytes.is_none() {
            return None;
        }
        let cpu = self
            .cpus
            .map_or_else(|| "anyCPU".to_string(), |c| format!("{c}CPU"));
        let mem = self
            .memory_bytes
            .map_or_else(|| "anyMem".to_string(), format_memory);
        Some(format!("{cpu}-{mem}"))
    }
}

/// Parses a memory size: a number with an optional unit `K`, `M`, `G` or `T` (powers of
/// 1024, as Docker's `--memory`), optionally followed by `i` and/or `B`
/// (`512M`, `1.5G`, `4GiB`, `1024`).
pub fn parse_memory(s: &str) -> Option<i64> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b').trim_end_matches('i');
    let (number, unit) = match trimmed.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&trimmed[..i], Some(c)),
        _ => (trimmed, None),
    };
    let factor: f64 = match unit {
        None => 1.0,
        Some('k') => 1024.0,
        Some('m') => 1024.0 * 1024.0,
        Some('g') => 1024.0 * 1024.0 * 1024.0,
        Some('t') => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        Some(_) => return None,
    };
    let n: f64 = number.trim().parse().ok()?;
    let bytes = n * factor;
    (bytes.is_finite() && bytes >= 1.0 && bytes < i64::MAX as f64).then_some(bytes as i64)
}

fn format_memory(bytes: i64) -> String {
    const G: i64 = 1024 * 1024 * 1024;
    const M: i64 = 1024 * 1024;
    if bytes % G == 0 {
        format!("{}G", bytes / G)
    } else if bytes % M == 0 {
        format!("{}M", bytes / M)
    } else {
        format!("{bytes}B")
    }
}

/// Reads `node_config.data_disks`: a number of disks (folders under the cluster's state
/// folder) or a list of host base folders (one disk each). Returns the base folders.
pub(crate) fn data_disk_bases(node_config: &Value, cluster_state_dir: &Path) -> Result<Vec<PathBuf>> {
    let path = "node_config.data_disks";
    match node_config.get("data_disks") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) => {
            let count = n
                .as_u64()
                .filter(|n| *n <= 16)
                .ok_or_else(|| Error::config(path, format!("expected 0 to 16 disks, found {n}")))?;
            Ok((1..=count)
                .map(|i| cluster_state_dir.join("disks").join(format!("data_disk_{i}")))
                .collect())
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_str() {
                Some(s) if Path::new(s).is_absolute() || s.starts_with("~/") => Ok(expand_home(s)),
                _ => Err(Error::config(
                    format!("{path}[{i}]"),
                    format!("expected an absolute host folder, found {v}"),
                )),
            })
            .collect(),
        Some(v) => Err(Error::config(
            path,
            format!("expected a number of disks or a list of host folders, found {v}"),
        )),
    }
}

/// Fills each node type's `resources` from its `node_config.instance_type` (CPU, memory in
/// bytes); a limit the type does not set is this machine's. Types that already set
/// `resources` keep them. Errors name the YAML path of a bad `instance_type`.
pub fn bootstrap_resources(config: &mut ClusterConfig) -> Result<()> {
    for (name, t) in config.available_node_types.iter_mut() {
        if t.resources.is_some() {
            continue;
        }
        let it = InstanceType::from_node_config(&Value::Object(t.node_config.clone()))
            .map_err(|e| e.with_context("node_type", name))?;
        let cpus = it.cpus.unwrap_or_else(host_cpus);
        let mut r = cloudtik_core::Resources::new();
        r.set("CPU", cpus);
        if let Some(m) = it.memory_bytes.or_else(host_memory_bytes) {
            r.set("memory", m as f64);
        }
        t.resources = Some(r);
    }
    Ok(())
}

/// The CPUs and memory of the machine the virtual provider's containers run on, as
/// Docker counts them (online CPUs, `MemTotal`); `None` where this machine cannot tell
/// (not Linux, e.g. Docker Desktop's VM: then only the launch checks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct MachineSize {
    /// Online CPUs.
    pub cpus: Option<f64>,
    /// Memory in bytes.
    pub memory_bytes: Option<i64>,
}

impl MachineSize {
    /// A machine of `cpus` CPUs and `memory_bytes` of memory.
    pub fn new(cpus: Option<f64>, memory_bytes: Option<i64>) -> Self {
        MachineSize { cpus, memory_bytes }
    }

    /// This machine: online CPUs (`/sys/devices/system/cpu/online`, as Docker's `NCPU`)
    /// and `MemTotal` of `/proc/meminfo` (as Docker's `MemTotal`).
    pub fn this_machine() -> Self {
        MachineSize {
            cpus: online_cpus(),
            memory_bytes: host_memory_bytes(),
        }
    }
}

/// Node types that can never launch on `machine`: an instance type asking for more CPUs
/// or memory than the machine has, head or worker alike. Each error names
/// `available_node_types.<type>.node_config.instance_type.CPU` (or `.memory`) and the
/// machine's size; they carry the context `capacity` (the machine's size). Instance
/// types that do not parse are left to
/// the checks that report them.
pub fn capacity_errors(config: &ClusterConfig, machine: MachineSize) -> Vec<Error> {
    let mut out = Vec::new();
    let size = format!(
        "{} CPUs, {}",
        machine.cpus.map_or_else(|| "?".to_string(), |c| c.to_string()),
        machine.memory_bytes.map_or_else(
            || "? memory".to_string(),
            |m| format!("{:.1} GiB of memory", m as f64 / (1u64 << 30) as f64)
        )
    );
    for (name, t) in &config.available_node_types {
        let Ok(it) = InstanceType::from_node_config(&Value::Object(t.node_config.clone())) else {
            continue;
        };
        let path = cloudtik_core::config::YamlPath::root()
            .key("available_node_types")
            .key(name)
            .key("node_config")
            .key("instance_type");
        let role = if *name == config.head_node_type {
            "the head's type"
        } else {
            "a worker type"
        };
        if let (Some(want), Some(have)) = (it.cpus, machine.cpus)
            && want > have
        {
            out.push(
                Error::config(
                    path.key("CPU").to_string(),
                    format!(
                        "node type `{name}` ({role}) asks for {want} CPUs but this machine has {have}, so it can \
                         never launch: lower it to at most {have}"
                    ),
                )
                .with_context("capacity", &size),
            );
        }
        if let (Some(want), Some(have)) = (it.memory_bytes, machine.memory_bytes)
            && want > have
        {
            out.push(
                Error::config(
                    path.key("memory").to_string(),
                    format!(
                        "node type `{name}` ({role}) asks for {} of memory but this machine has {:.1} GiB, so it \
                         can never launch: lower it to at most {}",
                        format_memory(want),
                        have as f64 / (1u64 << 30) as f64,
                        format_memory(have / (1 << 20) * (1 << 20))
                    ),
                )
                .with_context("capacity", &size),
            );
        }
    }
    out
}

/// [`capacity_errors`] on this machine: the virtual provider's check of whole configs
/// (`ConfigLoader::with_provider_warnings`), so `load_cluster_*` (`cloudtik start`)
/// refuses them and `check_cluster_*` (`cloudtik config validate`) warns of them.
pub fn capacity_warnings(config: &ClusterConfig) -> Vec<Error> {
    capacity_errors(config, MachineSize::this_machine())
}

fn online_cpus() -> Option<f64> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut n = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<u32>().ok()? + 1 - a.trim().parse::<u32>().ok()?,
            None => 1,
        };
    }
    (n > 0).then_some(f64::from(n))
}

fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn host_memory_bytes() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_types_larger_than_the_machine_are_refused_head_or_worker() {
        let config = cloudtik_core::config::ConfigLoader::new()
            .load_cluster_str(
                "t.yaml",
                "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\nauth: {ssh_user: root}\n\
                 available_node_types:\n  h: {node_config: {instance_type: {CPU: 1, memory: 64G}}}\n\
                 \x20 big: {node_config: {instance_type: {CPU: 1000}}}\n\
                 \x20 ok: {node_config: {instance_type: {CPU: 2, memory: 1G}}}\nhead_node_type: h\n",
            )
            .unwrap();
        let machine = MachineSize::new(Some(2.0), Some(8 << 30));
        let errors = capacity_errors(&config, machine);
        let paths: Vec<String> = errors
            .iter()
            .map(|e| e.location().unwrap().path.clone())
            .collect();
        assert_eq!(
            paths,
            [
                "available_node_types.big.node_config.instance_type.CPU",
                "available_node_types.h.node_config.instance_type.memory",
            ]
        );
        assert!(
            errors[0].to_string().contains("this machine has 2"),
            "{}",
            errors[0]
        );
        assert!(errors[0].to_string().contains("a worker type"), "{}", errors[0]);
        assert!(errors[1].to_string().contains("the head's type"), "{}", errors[1]);
        assert!(errors.iter().all(|e| e.context_value("capacity").is_some()));
        // A machine that cannot tell its size refuses nothing.
        assert!(capacity_errors(&config, MachineSize::default()).is_empty());
    }

    #[test]
    fn memory_sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_memory("1G"), Some(1 << 30));
        assert_eq!(parse_memory("512M"), Some(512 << 20));
        assert_eq!(parse_memory("1.5g"), Some(3 << 29));
        assert_eq!(parse_memory("4GiB"), Some(4 << 30));
        assert_eq!(parse_memory("2048"), Some(2048));
        assert_eq!(parse_memory("1024k"), Some(1 << 20));
        assert_eq!(parse_memory("abc"), None);
        assert_eq!(parse_memory("1X"), None);
        assert_eq!(parse_memory("-1G"), None);
        assert_eq!(parse_memory(""), None);
    }

    #[test]
    fn instance_types_read_cpu_and_memory() {
        let it =
            InstanceType::from_node_config(&json!({"instance_type": {"CPU": 2, "memory": "4G"}})).unwrap();
        assert_eq!(it.cpus, Some(2.0));
        assert_eq!(it.memory_bytes, Some(4 << 30));
        assert_eq!(it.name().as_deref(), Some("2CPU-4G"));
        assert_eq!(
            InstanceType::from_node_config(&json!({})).unwrap(),
            InstanceType::default()
        );
        assert_eq!(InstanceType::default().name(), None);
        let e = InstanceType::from_node_config(&json!({"instance_type": {"CPU": -1}})).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("node_config.instance_type.CPU"), "{e:#}");
        let e = InstanceType::from_node_config(&json!({"instance_type": {"memory": "lots"}})).unwrap_err();
        assert!(e.to_string().contains("`lots` is not a size"), "{e:#}");
    }

    #[test]
    fn data_disks_are_a_count_or_folders() {
        let state = Path::new("/state/ws/c");
        assert!(data_disk_bases(&json!({}), state).unwrap().is_empty());
        assert_eq!(
            data_disk_bases(&json!({"data_disks": 2}), state).unwrap(),
            vec![
                PathBuf::from("/state/ws/c/disks/data_disk_1"),
                PathBuf::from("/state/ws/c/disks/data_disk_2")
            ]
        );
        assert_eq!(
            data_disk_bases(&json!({"data_disks": ["/data/a"]}), state).unwrap(),
            vec![PathBuf::from("/data/a")]
        );
        assert!(data_disk_bases(&json!({"data_disks": ["relative"]}), state).is_err());
        assert!(data_disk_bases(&json!({"data_disks": 100}), state).is_err());
    }

    #[test]
    fn names_are_checked_for_docker() {
        assert!(check_name("workspace", "ws-1.a_b").is_ok());
        assert!(check_name("workspace", "").is_err());
        assert!(check_name("workspace", "-x").is_err());
        assert!(check_name("cluster", "a/b").is_err());
        assert!(check_name("cluster", "..").is_err());
    }

    #[test]
    fn bridge_names_fit_linux_interface_names() {
        let name = bridge_interface_name("a-very-long-workspace-name");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("tik-"));
        assert_ne!(name, bridge_interface_name("another"));
        assert_eq!(network_name("ws"), "cloudtik-ws");
    }

    #[test]
    fn the_image_tag_is_the_one_the_script_prints() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-node-image.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("--print-tag")
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), node_image_name());
        assert_eq!(node_image_tag().len(), 12);
    }

    #[test]
    fn the_example_configs_build_providers() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/configs");
        let loader = crate::config_loader();
        let cluster = loader.load_cluster_file(dir.join("virtual.yaml")).unwrap();
        let provider = VirtualNodeProvider::from_cluster_config(&cluster).unwrap();
        assert_eq!(provider.workspace_name(), "local-ws");
        assert_eq!(cloudtik_core::NodeProvider::cluster_name(&provider), "demo");
        assert_eq!(provider.settings().image, node_image_name());
        assert!(provider.settings().mount_docker_socket);
        let node_config = Value::Object(cluster.available_node_types["worker.default"].node_config.clone());
        let it = InstanceType::from_node_config(&node_config).unwrap();
        assert_eq!((it.cpus, it.memory_bytes), (Some(1.0), Some(1 << 30)));
        let ws = loader
            .load_workspace_file(dir.join("virtual-workspace.yaml"))
            .unwrap();
        let wp = VirtualWorkspaceProvider::from_workspace_config(&ws).unwrap();
        assert_eq!(wp.network_name(), "cloudtik-local-ws");
    }

    #[test]
    fn a_bad_subnet_is_a_config_error() {
        let loader = crate::config_loader();
        let e = loader
            .load_workspace_str(
                "ws.yaml",
                "workspace_name: w\nprovider:\n  type: virtual\n  subnet: 10.0.0.0/33\n",
            )
            .unwrap_err();
        assert!(e.to_string().contains("provider.subnet"), "{e:#}");
    }

    #[test]
    fn settings_read_provider_keys() {
        let config: VirtualProviderConfig = serde_json::from_value(json!({
            "image": "my-image:1",
            "docker_socket": "unix:///run/user/1000/docker.sock",
            "state_dir": "/tmp/state",
            "subnet": "10.77.0.0/24",
            "stop_timeout": 0,
            "permanent_data_volumes": true,
            "mount_docker_socket": false,
        }))
        .unwrap();
        let s = VirtualSettings::from_config(&config).unwrap();
        assert_eq!(s.image, "my-image:1");
        assert_eq!(s.docker_socket, PathBuf::from("/run/user/1000/docker.sock"));
        assert_eq!(s.state_dir, PathBuf::from("/tmp/state"));
        assert_eq!(s.subnet.as_deref(), Some("10.77.0.0/24"));
        assert_eq!(s.stop_timeout_seconds, 0);
        assert!(s.permanent_data_volumes);
        assert!(!s.mount_docker_socket);
        assert_eq!(s.cluster_state_dir("ws", "c"), PathBuf::from("/tmp/state/ws/c"));
        let bad: VirtualProviderConfig =
            serde_json::from_value(json!({"docker_socket": "tcp://1.2.3.4:2375"})).unwrap();
        let e = VirtualSettings::from_config(&bad).unwrap_err();
        assert!(e.to_string().contains("provider.docker_socket"), "{e:#}");
        assert_eq!(VirtualSettings::default().image, node_image_name());
    }
}

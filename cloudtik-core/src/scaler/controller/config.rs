//! The controller's settings: [`ControllerConfig`] (with its [`Liveness`] setting) and the
//! [`LeaseConfig`] of a controller that shares its cluster with standbys.

use std::time::Duration;

use crate::provider::new_launch_token;
use crate::scaler::launcher::LauncherConfig;
use crate::state::CONTROLLER_LEASE;

/// How the controller tells that a worker is alive.
///
/// * [`Liveness::Heartbeats`] (the default): each node's `cloudtik-node` agent writes a
///   heartbeat to the state store every few seconds. A worker with no heartbeat for
///   [`ControllerConfig::heartbeat_timeout`] is *lost*: it gets one recovery run (its
///   start commands again), and if it is still silent a heartbeat timeout after that run
///   started, it is terminated and replaced. A worker that never sent a heartbeat counts
///   from when it was first listed, and the status and the termination reason say so
///   ("no heartbeat ever received from node X: is cloudtik-node's agent running on it?").
/// * [`Liveness::ProviderOnly`]: for embedders whose nodes run no agent. A node the
///   provider lists as running is alive; heartbeats are not required, no node is ever
///   lost for want of one, and no recovery runs are made. Heartbeats that do arrive
///   still report resources; a [`ScalingPolicy`](crate::scaler::ScalingPolicy) that
///   reports a node's load is used for it even without one (so idle nodes can still be
///   scaled down). Without heartbeats nor a policy, nodes are never idle.
///
/// Embedding the controller without agents and leaving the default on makes it replace
/// every worker about two heartbeat timeouts after it comes up; choose `ProviderOnly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Liveness {
    /// Nodes prove they are alive with agent heartbeats (timeout:
    /// [`ControllerConfig::heartbeat_timeout`]).
    #[default]
    Heartbeats,
    /// The provider's running state is trusted: no heartbeat loss, no recovery runs.
    ProviderOnly,
}

impl Liveness {
    /// True when heartbeats decide whether a node is alive.
    pub fn uses_heartbeats(self) -> bool {
        matches!(self, Liveness::Heartbeats)
    }
}

/// Controller settings. Defaults are CloudTik's; build them with
/// [`ControllerConfig::default`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ControllerConfig {
    /// Time between passes (CloudTik: 5 s).
    pub update_interval: Duration,
    /// A node without a heartbeat for this long is lost (CloudTik: 30 s); see
    /// [`Liveness`].
    pub heartbeat_timeout: Duration,
    /// How the controller decides a worker is alive (default: agent heartbeats).
    pub liveness: Liveness,
    /// How long an `uninitialized` worker with an unknown launch token may exist before
    /// it is terminated as a leak.
    pub untracked_grace: Duration,
    /// A worker still not up to date this long after it was first listed, with no setup
    /// run going, is terminated.
    pub setup_timeout: Duration,
    /// Setup runs at once at most (CloudTik: 50).
    pub max_concurrent_setups: usize,
    /// How launches are made.
    pub launcher: LauncherConfig,
    /// How long shutdown waits for launch calls in flight.
    pub shutdown_timeout: Duration,
    /// Between passes, how often the scaling policy (if any) is asked whether new work
    /// is waiting; more demands than the last pass saw start a pass at once, so a
    /// runtime's demand reaches the launcher within about this long plus a pass, not an
    /// `update_interval` later. `None`: only the regular passes.
    pub demand_poll_interval: Option<Duration>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            update_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            liveness: Liveness::Heartbeats,
            untracked_grace: Duration::from_secs(300),
            setup_timeout: Duration::from_secs(1800),
            max_concurrent_setups: 50,
            launcher: LauncherConfig::default(),
            shutdown_timeout: Duration::from_secs(30),
            demand_poll_interval: Some(Duration::from_secs(1)),
        }
    }
}

impl ControllerConfig {
    /// Sets `update_interval`.
    #[must_use]
    pub fn with_update_interval(mut self, d: Duration) -> Self {
        self.update_interval = d;
        self
    }
    /// Sets `heartbeat_timeout`.
    #[must_use]
    pub fn with_heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }
    /// Sets how liveness is decided ([`Liveness::ProviderOnly`] for clusters whose nodes
    /// run no `cloudtik-node` agent).
    #[must_use]
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }
    /// Sets `untracked_grace`.
    #[must_use]
    pub fn with_untracked_grace(mut self, d: Duration) -> Self {
        self.untracked_grace = d;
        self
    }
    /// Sets `setup_timeout`.
    #[must_use]
    pub fn with_setup_timeout(mut self, d: Duration) -> Self {
        self.setup_timeout = d;
        self
    }
    /// Sets `max_concurrent_setups`.
    #[must_use]
    pub fn with_max_concurrent_setups(mut self, n: usize) -> Self {
        self.max_concurrent_setups = n.max(1);
        self
    }
    /// Sets `demand_poll_interval` (`None`: no polling between passes).
    #[must_use]
    pub fn with_demand_poll_interval(mut self, d: Option<Duration>) -> Self {
        self.demand_poll_interval = d;
        self
    }
    /// Sets `shutdown_timeout`.
    #[must_use]
    pub fn with_shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
    /// Sets the launcher settings.
    #[must_use]
    pub fn with_launcher(mut self, l: LauncherConfig) -> Self {
        self.launcher = l;
        self
    }
}

/// How a controller makes sure it is the only one acting on its cluster: a lease in the
/// state store (see [`Lease`](crate::state::Lease)) that it renews every pass; see the
/// module docs, "One controller at a time".
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// The lease's name ([`CONTROLLER_LEASE`]).
    pub name: String,
    /// This controller's holder id, unique per process ([`LeaseConfig::unique_holder`]).
    pub holder: String,
    /// How long the lease lasts after each renewal (30 s): a controller that stops
    /// renewing (killed, frozen, cut off from the store) is replaced by a standby about
    /// this long after its last renewal.
    pub ttl: Duration,
    /// The holder stops acting when its last renewal is `ttl - margin` old (10 s), so it
    /// stops before the lease could expire for a standby.
    pub margin: Duration,
}

impl LeaseConfig {
    /// The controller lease for `holder`, with a 30 s time to live and a 10 s margin.
    pub fn new(holder: impl Into<String>) -> Self {
        LeaseConfig {
            name: CONTROLLER_LEASE.to_string(),
            holder: holder.into(),
            ttl: Duration::from_secs(30),
            margin: Duration::from_secs(10),
        }
    }

    /// A holder id unique to this process: `<host>:<pid>:<random>`.
    pub fn unique_holder(host: &str) -> String {
        let random: String = new_launch_token()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        format!("{host}:{}:{random}", std::process::id())
    }

    /// Sets `ttl` and `margin` (the margin is kept below the ttl).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration, margin: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self.margin = margin.min(self.ttl / 2);
        self
    }
}

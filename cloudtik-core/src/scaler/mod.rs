//! The autoscaler: the pure [`planner`] that decides what to launch and terminate, the
//! [`controller`] loop that observes the cluster, decides with the pure [`reconcile()`]
//! (leaks, lost heartbeats, stuck setups, the plan) and applies its decisions (launching
//! through a rate-limited launcher with backoff, setting nodes up through a [`NodeSetup`]),
//! and the [`scenario`] format of the `cloudtik debug plan` tool that runs the planner on
//! a JSON snapshot.
//!
//! Embedders run the controller with [`Controller::run`], or [`Controller::spawn`] for a
//! [`ControllerHandle`] (status watch, a pass on demand, new inputs, shutdown); clusters
//! whose nodes run no `cloudtik-node` agent need [`Liveness::ProviderOnly`]. The status the
//! controller publishes is read back with [`read_scaling_status`].
//!
//! ```no_run
//! # async fn demo(config: cloudtik_core::config::ClusterConfig) -> cloudtik_core::Result<()> {
//! use std::sync::Arc;
//! use cloudtik_core::scaler::{Controller, ControllerConfig, MarkUpToDate, ScalingInputs};
//! use cloudtik_core::state::InMemoryStore;
//! use cloudtik_core::testing::FakeProvider;
//!
//! let provider = Arc::new(FakeProvider::new(&config.cluster_name));
//! let store = Arc::new(InMemoryStore::new());
//! let setup = Arc::new(MarkUpToDate::new(Arc::clone(&provider)));
//! let controller = Controller::new(
//!     ScalingInputs::from_cluster_config(&config)?,
//!     ControllerConfig::default(),
//!     provider,
//!     store,
//!     setup,
//! );
//! controller.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod clock;
pub mod controller;
pub mod inputs;
mod launcher;
pub mod planner;
pub mod policy;
pub mod scenario;
pub mod setup;

pub use clock::{Clock, TokioClock};
pub use controller::{
    Controller, ControllerConfig, ControllerCounters, ControllerHandle, Decisions, LeaseConfig, Liveness,
    Memory, NodeReport, Observed, PassReport, SCALING_STATUS_KEY, ScalingStatus, TerminationCause,
    TerminationRecord, read_scaling_status, reconcile,
};
pub use inputs::{LaunchSpec, ScalingInputs, node_type_marker};
pub use launcher::LauncherConfig;
pub use planner::{
    ClusterSnapshot, DemandShape, NodeSnapshot, NodeTypeConfig, ScalingConfig, ScalingPlan, Termination,
    TerminationReason, plan,
};
pub use policy::{LoadScalingPolicy, NodeResourceState, ScalingPolicy, ScalingState};
pub use scenario::{Scenario, ScenarioResult};
pub use setup::{MarkUpToDate, NodeSetup, SetupMode};

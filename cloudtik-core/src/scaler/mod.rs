//! The autoscaler: the pure [`planner`] that decides what to launch and terminate, and the
//! [`scenario`] format of the `cloudtik debug plan` tool that runs it on a JSON snapshot.

pub mod planner;
pub mod scenario;

pub use planner::{
    ClusterSnapshot, DemandShape, NodeSnapshot, NodeTypeConfig, ScalingConfig, ScalingPlan, Termination,
    TerminationReason, plan,
};
pub use scenario::{Scenario, ScenarioResult};

//! CloudTik's built-in runtimes, the software a cluster runs: **Spark** (a standalone
//! master and history server on the head, a worker on every worker node) and **Ray** (a
//! head and workers that join it).
//!
//! Register them once, where the config is loaded and where nodes run:
//!
//! ```
//! use cloudtik_core::RuntimeRegistry;
//!
//! let mut registry = RuntimeRegistry::new();
//! cloudtik_runtime::register_builtin(&mut registry);
//! assert!(registry.get("spark").is_some() && registry.get("ray").is_some());
//! ```
//!
//! Each runtime declares its config (defaults and validation, errors naming
//! `runtime.<name>.<key>`), the commands that join node setup (`cloudtik-node runtime
//! install|configure|start|stop <name> [--head]`), the environment of every command, its
//! services and endpoints, the processes the agent watches, and its scaling policy. Its
//! on-node logic ([`Runtime::install`](cloudtik_core::Runtime::install),
//! [`configure`](cloudtik_core::Runtime::configure),
//! [`node_services`](cloudtik_core::Runtime::node_services)) runs inside `cloudtik-node`
//! on the node. Software comes from the ecosystem's registries: Debian packages through
//! apt and Python packages through pip into one venv per node ([`packages`]).
//!
//! CloudTik has some 36 runtimes; this crate has Spark and Ray so far.

pub mod http;
pub mod machine;
pub mod packages;
pub mod ray;
pub mod spark;
pub mod template;

use std::sync::Arc;

use cloudtik_core::RuntimeRegistry;

/// The names of the runtimes [`register_builtin`] registers.
pub const BUILTIN: &[&str] = &["ray", "spark"];

/// Registers the built-in runtimes (Spark and Ray) in `registry`, replacing runtimes
/// of the same names.
pub fn register_builtin(registry: &mut RuntimeRegistry) {
    for runtime in [
        Arc::new(spark::Spark) as Arc<dyn cloudtik_core::Runtime>,
        Arc::new(ray::Ray) as Arc<dyn cloudtik_core::Runtime>,
    ] {
        // The names are not reserved ones, so registering cannot fail.
        let _ = registry.register(runtime);
    }
}

/// A registry holding the built-in runtimes.
pub fn builtin_registry() -> RuntimeRegistry {
    let mut r = RuntimeRegistry::new();
    register_builtin(&mut r);
    r
}

//! Test support (cargo feature `testing`): an in-memory cloud with failure injection,
//! and the provider conformance suite.
//!
//! * [`FakeCloud`] holds nodes and workspaces in memory. [`FakeProvider`] is a
//!   [`NodeProvider`](crate::NodeProvider) for one cluster on such a cloud, and
//!   [`FakeWorkspaceProvider`] a [`WorkspaceProvider`](crate::WorkspaceProvider) for one
//!   workspace. Handles are cheap to clone and share their cloud, so a test can keep one
//!   handle to inject failures while a controller works with another, and a restarted
//!   controller sees the nodes its predecessor launched.
//! * [`sshd`] starts real sshd servers (loopback and network namespaces) and
//!   [`docker`] builds a tiny local image, for the command runner and updater tests.
//! * [`conformance`] holds the checks every provider must pass; it runs against
//!   [`FakeProvider`] in every `cargo test` and against each real provider's test peer.
//!
//! ```
//! # tokio_test_block_on(async {
//! use cloudtik_core::testing::FakeProvider;
//! use cloudtik_core::{ErrorKind, LaunchRequest, NodeProvider, Tags};
//!
//! let provider = FakeProvider::new("demo");
//! provider.fail_create(1, ErrorKind::Capacity);
//! let request = LaunchRequest::new("worker.cpu", serde_json::json!({}), Tags::new(), 2);
//! let err = provider.create_nodes(&request).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Capacity);
//! // The next try goes through; the same token never creates more than 2 nodes.
//! let outcome = provider.create_nodes(&request).await.unwrap();
//! assert_eq!(outcome.nodes.len(), 2);
//! assert_eq!(provider.nodes_created(), 2);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

pub mod conformance;
pub mod docker;
mod fake;
mod fake_workspace;
#[cfg(feature = "ssh")]
pub mod sshd;

pub use fake::{CallCounts, FakeCloud, FakeProvider, GateStage};
pub use fake_workspace::{DEFAULT_RESOURCES, FakeWorkspaceProvider};

//! The programs of CloudTik for Rust built on the library, as library code a program of
//! yours can run with providers and runtimes of its own: [`node::NodeProgram`] is the
//! `cloudtik-node` program (agent, head services and controller, supervisor, runtime
//! commands). The `cloudtik` CLI and the `cloudtik-node` binary are thin `main`s over
//! them.
#![warn(missing_docs)]

pub mod node;

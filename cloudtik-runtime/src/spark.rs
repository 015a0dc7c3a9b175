//! The Spark runtime.

use cloudtik_core::Runtime;

/// The Spark runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spark;

impl Runtime for Spark {
    fn name(&self) -> &str {
        "spark"
    }
}

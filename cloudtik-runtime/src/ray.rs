//! The Ray runtime.

use cloudtik_core::Runtime;

/// The Ray runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ray;

impl Runtime for Ray {
    fn name(&self) -> &str {
        "ray"
    }
}

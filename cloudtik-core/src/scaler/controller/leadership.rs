//! The lease a controller holds, shared with its launch calls (which check the fence
//! right before calling the provider); see the module docs, "One controller at a time".

use std::sync::Arc;

use super::config::LeaseConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::scaler::clock::Clock;
use crate::state::{Fence, Lease, StateStore};

/// The lease this controller holds, shared with its launch calls.
#[derive(Debug)]
pub(super) struct Leadership {
    pub(super) config: LeaseConfig,
    pub(super) held: std::sync::Mutex<Option<Lease>>,
    pub(super) clock: Arc<dyn Clock>,
}

impl Leadership {
    pub(super) fn new(config: LeaseConfig, clock: Arc<dyn Clock>) -> Self {
        Leadership {
            config,
            held: std::sync::Mutex::new(None),
            clock,
        }
    }

    pub(super) fn held(&self) -> Option<Lease> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set(&self, lease: Option<Lease>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = lease;
    }

    /// The fence to act with, when this controller holds the lease and renewed it
    /// recently enough; else the error of a refused step.
    pub(super) fn fence(&self, op: &'static str) -> Result<Fence> {
        let now = self.clock.unix_now();
        match self.held() {
            Some(l) if l.valid_locally(now, self.config.margin) => Ok(l.fence()),
            Some(l) => Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "fenced: the controller lease (token {}) was last renewed {:.0}s ago; not acting until it is renewed",
                    l.token,
                    now - l.renewed_at
                ),
            )
            .with_operation(op)),
            None => Err(Error::new(
                ErrorKind::Conflict,
                "fenced: this controller does not hold the controller lease",
            )
            .with_operation(op)),
        }
    }

    /// [`fence`](Self::fence), then the store's check that the token is still current.
    pub(super) async fn check<S: StateStore + ?Sized>(&self, store: &S, op: &'static str) -> Result<Fence> {
        let fence = self.fence(op)?;
        store
            .check_fence(&fence)
            .await
            .map_err(|e| e.with_operation(op))?;
        Ok(fence)
    }
}

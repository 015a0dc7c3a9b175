//! Leases with fencing tokens: at most one holder acts at a time.
//!
//! A lease is a named record in the state store: its holder, a **fencing token** and an
//! expiry. It works like a Kubernetes `Lease` or an etcd lease:
//!
//! * **Acquire** ([`try_acquire_lease`](super::StateStore::try_acquire_lease)) succeeds, atomically, only when the
//!   lease is absent or expired (or already held by the same holder, which then just
//!   renews it). Each new acquisition takes the next token of a per-lease counter, so
//!   tokens only grow, even across releases.
//! * **Renew** ([`renew_lease`](super::StateStore::renew_lease)) succeeds only while the holder and token
//!   are still the lease's; it moves the expiry. A holder whose renewal failed must stop
//!   acting *before* its lease could have expired for the others (see
//!   [`Lease::valid_locally`]).
//! * **Fence**: a [`Fence`] (lease name, holder, token) goes with every mutating step.
//!   [`check_fence`](super::StateStore::check_fence) refuses a fence whose token is no longer current, and
//!   [`put_pending_launch_fenced`](super::StateStore::put_pending_launch_fenced) compares the token and writes the record in
//!   one atomic step, so a stale holder's launch records are refused.
//!
//! Times are unix seconds given by the caller (`now`), so every party must read the same
//! clock closely enough: the holders run on the head, and readers (such as `cloudtik
//! status`) only use the times to report ages.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The name of the lease the cluster controller holds.
pub const CONTROLLER_LEASE: &str = "controller";

/// A lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease's name.
    pub name: String,
    /// Who holds it (e.g. `host:pid:random`).
    pub holder: String,
    /// The fencing token of this acquisition: larger than every earlier one.
    pub token: u64,
    /// When this acquisition happened, unix seconds.
    pub acquired_at: f64,
    /// When the holder last renewed it, unix seconds (the holder's heartbeat).
    pub renewed_at: f64,
    /// When it expires unless renewed, unix seconds.
    pub expires_at: f64,
}

impl Lease {
    /// True when the lease has expired at `now`: anyone may acquire it.
    pub fn is_expired(&self, now: f64) -> bool {
        now >= self.expires_at
    }

    /// The fence of this holding.
    pub fn fence(&self) -> Fence {
        Fence {
            lease: self.name.clone(),
            holder: self.holder.clone(),
            token: self.token,
        }
    }

    /// True while the holder may still act at `now`: its last renewal is less than
    /// `ttl - margin` old. A holder stops acting at that point, `margin` before the
    /// lease could expire for the others (the margin covers clock drift and the time
    /// one step takes).
    pub fn valid_locally(&self, now: f64, margin: Duration) -> bool {
        let ttl = self.expires_at - self.renewed_at;
        now - self.renewed_at < ttl - margin.as_secs_f64()
    }
}

/// What a holder carries with every mutating step: the lease and its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The lease's name.
    pub lease: String,
    /// The holder.
    pub holder: String,
    /// The fencing token of the holding.
    pub token: u64,
}

impl Fence {
    /// Whether `current` (the lease as the store has it) still carries this fence.
    pub fn is_current(&self, current: Option<&Lease>) -> bool {
        current.is_some_and(|l| l.holder == self.holder && l.token == self.token)
    }

    /// The error of a step refused because this fence is stale.
    pub fn refused(&self, op: &'static str, current: Option<&Lease>) -> Error {
        let now = match current {
            Some(l) => format!("it is held by {} with token {}", l.holder, l.token),
            None => "nobody holds it".to_string(),
        };
        Error::new(
            ErrorKind::Conflict,
            format!(
                "fenced: the lease {} was lost by {} (token {}); {now}",
                self.lease, self.holder, self.token
            ),
        )
        .with_operation(op)
    }
}

/// The answer of [`try_acquire_lease`](super::StateStore::try_acquire_lease).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseAcquire {
    /// The caller holds the lease now (a new token, or the same one when it held the
    /// lease already).
    Acquired(Lease),
    /// Someone else holds it and it has not expired.
    HeldBy(Lease),
}

/// Checks a lease name and holder (non-empty) and time to live (above 0).
pub(crate) fn check_lease_args(op: &'static str, name: &str, holder: &str, ttl: Duration) -> Result<()> {
    super::model::check_key(op, "lease name", name)?;
    super::model::check_key(op, "lease holder", holder)?;
    if ttl.is_zero() {
        return Err(
            Error::new(ErrorKind::InvalidConfig, "a lease's time to live must be above 0").with_operation(op),
        );
    }
    Ok(())
}

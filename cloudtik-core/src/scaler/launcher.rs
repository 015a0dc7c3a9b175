//! Launching nodes: batches, a bound on concurrent calls, a client-side rate limit and
//! exponential backoff of node types whose launches fail for capacity or quota.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::Error;
use crate::provider::{LaunchRequest, NodeProvider};

/// Launcher settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LauncherConfig {
    /// Provider calls in flight at most (CloudTik: 10).
    pub max_concurrent: usize,
    /// Nodes per provider call at most (CloudTik: 5); also capped by the provider's
    /// `max_launch_batch`.
    pub batch_size: usize,
    /// Provider launch calls per second at most (client-side rate limit).
    pub calls_per_second: f64,
    /// First backoff of a node type after a capacity or quota failure.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// A launch call that has not returned after this long is given up (its record
    /// stays; nodes it created later are adopted or, past the grace period, removed).
    pub call_timeout: Duration,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        LauncherConfig {
            max_concurrent: 10,
            batch_size: 5,
            calls_per_second: 10.0,
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(600),
            call_timeout: Duration::from_secs(600),
        }
    }
}

impl LauncherConfig {
    /// Sets `max_concurrent`.
    #[must_use]
    pub fn with_max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n.max(1);
        self
    }
    /// Sets `batch_size`.
    #[must_use]
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// Sets `calls_per_second`.
    #[must_use]
    pub fn with_calls_per_second(mut self, n: f64) -> Self {
        self.calls_per_second = if n.is_finite() && n > 0.0 {
            n
        } else {
            f64::INFINITY
        };
        self
    }
    /// Sets `call_timeout`.
    #[must_use]
    pub fn with_call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }
    /// Sets the backoff bounds.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }
}

/// The outcome of one launch call.
#[derive(Debug)]
pub(crate) struct LaunchDone {
    pub(crate) token: String,
    pub(crate) node_type: String,
    pub(crate) requested: usize,
    pub(crate) created: usize,
    pub(crate) error: Option<Error>,
}

/// A node type that is backed off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) until: Instant,
    pub(crate) failures: u32,
}

/// A check every launch call passes right before the provider call (the controller's
/// fence); a refusal fails the call without calling the provider.
#[derive(Clone)]
pub(crate) struct LaunchGate(
    pub(crate) Arc<dyn Fn() -> BoxFuture<'static, crate::error::Result<()>> + Send + Sync>,
);

impl fmt::Debug for LaunchGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LaunchGate")
    }
}

/// Runs launch calls as tasks.
#[derive(Debug)]
pub(crate) struct Launcher<P: ?Sized> {
    pub(crate) gate: Option<LaunchGate>,
    provider: Arc<P>,
    config: LauncherConfig,
    permits: Arc<Semaphore>,
    next_call: Arc<Mutex<Instant>>,
    tasks: JoinSet<LaunchDone>,
    /// token -> (node type, count) of calls in flight.
    pub(crate) in_flight: BTreeMap<String, (String, usize)>,
    pub(crate) backoff: BTreeMap<String, Backoff>,
}

impl<P: NodeProvider + ?Sized> Launcher<P> {
    pub(crate) fn new(provider: Arc<P>, config: LauncherConfig) -> Self {
        Launcher {
            gate: None,
            provider,
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            next_call: Arc::new(Mutex::new(Instant::now())),
            config,
            tasks: JoinSet::new(),
            in_flight: BTreeMap::new(),
            backoff: BTreeMap::new(),
        }
    }

    /// The batch size for this provider.
    pub(crate) fn batch_size(&self) -> usize {
        self.config
            .batch_size
            .min(self.provider.capabilities().max_launch_batch)
            .max(1)
    }

    /// Starts a launch call.
    pub(crate) fn spawn(&mut self, request: LaunchRequest) {
        self.in_flight
            .insert(request.token.clone(), (request.node_type.clone(), request.count));
        let provider = Arc::clone(&self.provider);
        let permits = Arc::clone(&self.permits);
        let next_call = Arc::clone(&self.next_call);
        let interval = if self.config.calls_per_second.is_finite() {
            Duration::from_secs_f64(1.0 / self.config.calls_per_second)
        } else {
            Duration::ZERO
        };
        let call_timeout = self.config.call_timeout;
        let gate = self.gate.clone();
        self.tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            // Rate limit: each call takes the next free slot.
            let slot = {
                let mut next = next_call.lock().await;
                let now = Instant::now();
                let slot = (*next).max(now);
                *next = slot + interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
            // The span follows the call across its awaits (an entered guard would not).
            let span = tracing::info_span!("launch", node_type = %request.node_type, count = request.count, token = %request.token);
            let call = async {
                if let Some(gate) = &gate {
                    (gate.0)().await.map_err(|e| e.with_operation("create_nodes"))?;
                }
                provider.create_nodes(&request).await
            }
            .instrument(span);
            let result = match tokio::time::timeout(call_timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(Error::new(
                    crate::ErrorKind::Timeout,
                    format!("the launch call did not return within {}s", call_timeout.as_secs()),
                )
                .with_operation("create_nodes")
                .with_context("node_type", &request.node_type)),
            };
            match result {
                Ok(outcome) => LaunchDone {
                    token: request.token.clone(),
                    node_type: request.node_type.clone(),
                    requested: request.count,
                    created: outcome.nodes.len(),
                    error: outcome.shortfall,
                },
                Err(e) => LaunchDone {
                    token: request.token.clone(),
                    node_type: request.node_type.clone(),
                    requested: request.count,
                    created: 0,
                    error: Some(e),
                },
            }
        });
    }

    /// Launches that finished since the last call.
    pub(crate) fn finished(&mut self) -> Vec<LaunchDone> {
        let mut done = Vec::new();
        while let Some(res) = self.tasks.try_join_next() {
            match res {
                Ok(d) => {
                    self.in_flight.remove(&d.token);
                    done.push(d);
                }
                Err(e) => tracing::error!(error = %crate::Report(&e), "a launch task panicked"),
            }
        }
        done
    }

    /// Nodes in flight per type.
    pub(crate) fn in_flight_by_type(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (t, n) in self.in_flight.values() {
            *m.entry(t.clone()).or_insert(0) += n;
        }
        m
    }

    /// True while the type is backed off.
    pub(crate) fn is_backed_off(&self, node_type: &str, now: Instant) -> bool {
        self.backoff.get(node_type).is_some_and(|b| b.until > now)
    }

    /// Records a capacity or quota failure of a type: the backoff doubles each time.
    pub(crate) fn back_off(&mut self, node_type: &str, now: Instant) -> Duration {
        let failures = self.backoff.get(node_type).map(|b| b.failures).unwrap_or(0) + 1;
        let delay = crate::backoff::Backoff::new(self.config.backoff_initial, self.config.backoff_max)
            .delay(failures.saturating_sub(1));
        self.backoff.insert(
            node_type.to_string(),
            Backoff {
                until: now + delay,
                failures,
            },
        );
        delay
    }

    /// Records a successful launch of a type: its backoff is cleared.
    pub(crate) fn succeeded(&mut self, node_type: &str) {
        self.backoff.remove(node_type);
    }

    /// Waits for the launches in flight, up to `timeout`; aborts the rest.
    pub(crate) async fn drain(&mut self, timeout: Duration) -> Vec<LaunchDone> {
        let mut done = Vec::new();
        let deadline = Instant::now() + timeout;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(d))) => {
                    self.in_flight.remove(&d.token);
                    done.push(d);
                }
                Ok(Some(Err(_))) => {}
                Ok(None) => break,
                Err(_) => {
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        done
    }
}

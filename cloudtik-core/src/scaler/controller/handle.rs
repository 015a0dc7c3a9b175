//! A running controller, for embedders: [`Controller::spawn`] runs the loop as a task
//! and returns a [`ControllerHandle`] that watches its status, asks for a pass now,
//! replaces its inputs and shuts it down.

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::Controller;
use super::status::{ControllerCounters, ScalingStatus};
use crate::error::{Error, ErrorKind, Result};
use crate::provider::NodeProvider;
use crate::scaler::inputs::ScalingInputs;
use crate::scaler::setup::NodeSetup;
use crate::state::StateStore;

/// What a handle asks of its controller's loop.
#[derive(Debug)]
pub(super) enum Command {
    /// Run a pass now.
    Pass,
    /// Replace the inputs (from the next pass on).
    SetInputs(Box<ScalingInputs>),
}

/// A controller running as a tokio task (see [`Controller::spawn`]).
///
/// Dropping the handle shuts the controller down too (gracefully, as
/// [`shutdown`](Self::shutdown) does), without waiting for it.
///
/// ```
/// # use std::time::Duration;
/// use cloudtik_core::scaler::{Controller, NodeSetup};
/// use cloudtik_core::{NodeProvider, state::StateStore};
///
/// // `Controller::new(inputs, config, provider, store, setup)` takes the provider and
/// // the store as `Arc<dyn NodeProvider>` and `Arc<dyn StateStore>` as they are.
/// async fn embed(controller: Controller<dyn NodeProvider, dyn StateStore, dyn NodeSetup>)
///     -> cloudtik_core::Result<()>
/// {
///     let handle = controller.spawn();
///     let mut status = handle.status();
///     handle.trigger_pass();
///     // Wait for the next published status.
///     status.changed().await.ok();
///     if let Some(s) = status.borrow().as_ref() {
///         for (id, node) in &s.nodes {
///             println!("{id}: {} {}", node.node_type, node.activity);
///         }
///     }
///     let counters = handle.shutdown().await?;
///     println!("{} passes", counters.passes);
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct ControllerHandle {
    status: watch::Receiver<Option<ScalingStatus>>,
    commands: mpsc::UnboundedSender<Command>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<ControllerCounters>>>,
}

impl<P, S, U> Controller<P, S, U>
where
    P: NodeProvider + ?Sized,
    S: StateStore + ?Sized,
    U: NodeSetup + ?Sized,
{
    /// Runs the controller loop ([`run`](Self::run)) as a tokio task and returns its
    /// handle. Must be called within a tokio runtime.
    pub fn spawn(self) -> ControllerHandle {
        let status = self.subscribe();
        let (commands, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run_loop(
            async move {
                // A send or a dropped handle both stop the loop.
                let _ = stopped.await;
            },
            Some(rx),
        ));
        ControllerHandle {
            status,
            commands,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl ControllerHandle {
    /// A watch of the status the controller publishes after every pass (`None` before
    /// the first pass ends).
    pub fn status(&self) -> watch::Receiver<Option<ScalingStatus>> {
        self.status.clone()
    }

    /// The status of the latest pass, if one ran.
    pub fn latest_status(&self) -> Option<ScalingStatus> {
        self.status.borrow().clone()
    }

    /// Asks for a pass now rather than at the next interval (the interval restarts
    /// from it). A controller standing by for the lease only tries to take it.
    pub fn trigger_pass(&self) {
        let _ = self.commands.send(Command::Pass);
    }

    /// Replaces the scaling inputs (after the cluster config changed); they take effect
    /// from the next pass.
    pub fn set_inputs(&self, inputs: ScalingInputs) {
        let _ = self.commands.send(Command::SetInputs(Box::new(inputs)));
    }

    /// True once the controller task ended (shut down, or panicked).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Shuts the controller down gracefully (see [`Controller::run`]) and returns its
    /// counters.
    ///
    /// # Errors
    ///
    /// An [`ErrorKind::Unexpected`] error when the controller task panicked or was
    /// cancelled.
    pub async fn shutdown(mut self) -> Result<ControllerCounters> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                "the controller was already shut down",
            ));
        };
        task.await.map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("the controller task ended abnormally: {e:#}"),
            )
            .with_operation("shutdown")
        })?
    }
}

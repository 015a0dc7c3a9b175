//! `cloudtik debug plan SCENARIO.json`: runs the autoscaler's planner on a snapshot.

use std::path::PathBuf;

use clap::Subcommand;
use cloudtik_core::scaler::Scenario;
use cloudtik_core::{Error, ErrorKind, Result};

#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
    /// Plan a scaling step for a cluster snapshot (JSON) and print
    /// `{"to_launch": {...}, "infeasible_count": k}`.
    Plan {
        /// The scenario file.
        scenario: PathBuf,
        /// Print the whole plan (terminations, updates, unfulfilled demands) too.
        #[arg(long)]
        full: bool,
    },
}

pub(crate) fn run(cmd: DebugCommand) -> Result<()> {
    match cmd {
        DebugCommand::Plan { scenario, full } => {
            let text = std::fs::read_to_string(&scenario).map_err(|e| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("cannot read the scenario `{}`: {e:#}", scenario.display()),
                )
            })?;
            let s = Scenario::from_json(&text).map_err(|e| {
                let mut e = e;
                if let Some(loc) = e.location_mut() {
                    loc.file.get_or_insert_with(|| scenario.display().to_string());
                }
                e
            })?;
            let out = if full {
                let plan = s.scaling_plan();
                serde_json::to_value(&plan)
            } else {
                serde_json::to_value(s.plan())
            }
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
            println!("{out}");
            Ok(())
        }
    }
}

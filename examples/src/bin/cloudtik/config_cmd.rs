//! `cloudtik config validate|show|schema`.

use std::path::PathBuf;

use clap::Subcommand;
use cloudtik_core::{Error, ErrorKind, Result};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load a cluster config with its templates and defaults, and check it.
    Validate {
        /// The cluster config file.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a cluster config after templates and defaults are merged.
    Show {
        /// The cluster config file.
        file: PathBuf,
        /// Print JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of cluster config files, for editors.
    Schema,
}

pub(crate) fn run(cmd: ConfigCommand) -> Result<()> {
    let loader = cloudtik_providers::config_loader();
    match cmd {
        ConfigCommand::Validate { file, json } => {
            let c = loader.load_cluster_file(&file)?;
            let workers: u32 = c.sum_min_workers();
            if json {
                let out = serde_json::json!({
                    "valid": true,
                    "cluster_name": c.cluster_name,
                    "provider": c.provider.provider_type,
                    "node_types": c.available_node_types.keys().collect::<Vec<_>>(),
                    "head_node_type": c.head_node_type,
                    "min_workers": workers,
                    "max_workers": c.max_workers(),
                });
                println!("{}", serde_json::to_string_pretty(&out).map_err(unexpected)?);
            } else {
                println!(
                    "{}: valid ({} provider, {} node types, {}..{} workers)",
                    file.display(),
                    c.provider.provider_type,
                    c.available_node_types.len(),
                    workers,
                    c.max_workers()
                );
            }
            Ok(())
        }
        ConfigCommand::Show { file, json } => {
            let c = loader.load_cluster_file(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c).map_err(unexpected)?);
            } else {
                print!("{}", serde_yaml_ng::to_string(&c).map_err(unexpected)?);
            }
            Ok(())
        }
        ConfigCommand::Schema => {
            let schema = cloudtik_core::config::cluster_config_schema();
            println!("{}", serde_json::to_string_pretty(&schema).map_err(unexpected)?);
            Ok(())
        }
    }
}

fn unexpected(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unexpected, e.to_string())
}

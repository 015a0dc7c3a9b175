//! `cloudtik config validate|show|schema`.

use std::path::PathBuf;

use clap::Subcommand;
use cloudtik_core::config::CheckedConfig;
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
            // What keeps a valid config from running here (a runtime this build lacks, a
            // node type larger than the virtual provider's machine) is a warning: the same
            // file may run elsewhere, and `start` refuses it here.
            let checked = loader.check_cluster_file(&file)?;
            let c = &checked.config;
            let workers: u32 = c.sum_min_workers();
            let types = node_types(&checked);
            let notes = default_only_notes(&types);
            if json {
                let out = serde_json::json!({
                    "valid": true,
                    "usable": checked.warnings.is_empty(),
                    "cluster_name": c.cluster_name,
                    "workspace_name": c.workspace_name,
                    "provider": c.provider.provider_type,
                    "node_types": types.iter().map(|t| serde_json::json!({
                        "name": t.name,
                        "head": t.head,
                        "min_workers": t.min_workers,
                        "max_workers": t.max_workers,
                        "sources": t.sources,
                    })).collect::<Vec<_>>(),
                    "head_node_type": c.head_node_type,
                    "min_workers": workers,
                    "max_workers": c.max_workers(),
                    "warnings": checked.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                    "notes": notes,
                });
                println!("{}", serde_json::to_string_pretty(&out).map_err(unexpected)?);
            } else {
                let rows = types
                    .iter()
                    .map(|t| {
                        vec![
                            if t.head {
                                format!("{} (head)", t.name)
                            } else {
                                t.name.clone()
                            },
                            if t.head {
                                "-".into()
                            } else {
                                format!("{}..{}", t.min_workers, t.max_workers)
                            },
                            t.sources.join(" < "),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    crate::ui::table(&["NODE TYPE", "WORKERS", "DEFINED IN (defaults first)"], rows)
                );
                println!(
                    "{}: valid ({} provider, {} node types, {}..{} workers)",
                    file.display(),
                    c.provider.provider_type,
                    c.available_node_types.len(),
                    workers,
                    c.max_workers()
                );
                for n in &notes {
                    eprintln!("note: {n}");
                }
                for w in &checked.warnings {
                    eprintln!("warning: {w}");
                }
                if !checked.warnings.is_empty() {
                    eprintln!(
                        "hint: `cloudtik start` refuses this config until the warnings above are fixed"
                    );
                }
            }
            Ok(())
        }
        ConfigCommand::Show { file, json } => {
            let checked = loader.check_cluster_file(&file)?;
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&checked.config).map_err(unexpected)?
                );
            } else {
                println!(
                    "# {} after templates and provider defaults were merged.",
                    file.display()
                );
                println!("# Node types, and where each is defined (provider defaults first):");
                for t in node_types(&checked) {
                    println!("#   {}: {}", t.name, t.sources.join(" < "));
                }
                print!(
                    "{}",
                    serde_yaml_ng::to_string(&checked.config).map_err(unexpected)?
                );
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

/// A node type of a checked config, for the tables of `validate` and `show`.
struct NodeTypeRow {
    name: String,
    head: bool,
    min_workers: u32,
    max_workers: u32,
    /// Where it is defined, provider defaults first.
    sources: Vec<String>,
    /// Defined by the provider defaults only.
    defaults_only: bool,
}

fn node_types(checked: &CheckedConfig) -> Vec<NodeTypeRow> {
    let c = &checked.config;
    let sources = checked.merged.node_type_sources();
    c.available_node_types
        .keys()
        .map(|name| {
            let src = sources.get(name).cloned().unwrap_or_default();
            let short = src.iter().map(|s| short_source(s)).collect();
            let defaults_only = !src.is_empty() && src.iter().all(|s| checked.merged.is_provider_defaults(s));
            NodeTypeRow {
                name: name.clone(),
                head: *name == c.head_node_type,
                min_workers: c.min_workers_of(name),
                max_workers: c.max_workers_of(name),
                defaults_only,
                sources: short,
            }
        })
        .collect()
}

/// A document's source as a user names it: a template's name, or a file's path.
fn short_source(source: &str) -> String {
    source
        .strip_prefix("<built-in template ")
        .and_then(|s| s.strip_suffix('>'))
        .map(|s| format!("{s} (built-in)"))
        .unwrap_or_else(|| source.to_string())
}

/// CloudTik's merge keeps the provider defaults' node types in a config that defines
/// others; say so where such a type will launch workers.
fn default_only_notes(types: &[NodeTypeRow]) -> Vec<String> {
    let user_defined_others = types.iter().any(|t| !t.defaults_only);
    if !user_defined_others {
        return Vec::new();
    }
    types
        .iter()
        .filter(|t| t.defaults_only && !t.head && t.min_workers > 0)
        .map(|t| {
            format!(
                "node type `{}` comes from the provider defaults ({}), as in CloudTik, and keeps {} worker(s) \
                 running; set `available_node_types.\"{}\".min_workers: 0` (and `max_workers: 0` to never use it)",
                t.name,
                t.sources.join(", "),
                t.min_workers,
                t.name
            )
        })
        .collect()
}

fn unexpected(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unexpected, e.to_string())
}

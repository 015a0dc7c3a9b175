//! `cloudtik workspace create|delete|update|info FILE`.

use std::path::PathBuf;

use clap::Subcommand;
use cloudtik_core::cluster::{ClusterDir, ManagedWorkspace};
use cloudtik_core::{DeleteWorkspaceOptions, Result, Workspace, WorkspaceExistence};

use crate::ui::{self, Progress};

#[derive(Debug, Subcommand)]
pub(crate) enum WorkspaceCommand {
    /// Create the workspace's shared resources (what is missing of them).
    Create {
        /// The workspace config file.
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Delete the workspace; refused while clusters run in it.
    Delete {
        /// The workspace config file.
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
        /// Also delete the managed cloud storage.
        #[arg(long)]
        delete_managed_storage: bool,
    },
    /// Re-apply firewall rules and managed storage.
    Update {
        /// The workspace config file.
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// How complete the workspace is, its resources and clusters.
    Info {
        /// The workspace config file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

async fn open(file: &std::path::Path) -> Result<ManagedWorkspace> {
    let providers = cloudtik_providers::builtin_registry();
    let config = providers
        .configure_loader(cloudtik_providers::config_loader())
        .load_workspace_file(file)?;
    let provider = providers.workspace_provider(&config).await?;
    Ok(ManagedWorkspace::new(config.workspace_name.clone(), provider))
}

/// Removes what this machine kept of the workspace's clusters (key pairs, secrets, known
/// hosts: `~/.cloudtik/clusters/<workspace>/<cluster>/`), once the workspace is gone
/// (none of its clusters can exist then), except those a command is working on (their
/// lock is held); says what it removed.
fn forget_clusters(workspace: &str) {
    let base = ClusterDir::default_base();
    let ws_dir = base.join(workspace);
    let Ok(entries) = std::fs::read_dir(&ws_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = ClusterDir::named(&base, workspace, &name);
        let Ok(lock) = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.lock_file())
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            eprintln!(
                "note: kept {}: a cloudtik command is working on cluster {name}",
                dir.path().display()
            );
            continue;
        }
        match dir.remove_secrets() {
            Ok(removed) => {
                let _ = std::fs::remove_file(dir.lock_file());
                if !removed.is_empty() || !dir.exists() {
                    println!(
                        "Removed the key pair and secrets of cluster {name} from {}.",
                        dir.path().display()
                    );
                }
            }
            Err(e) => eprintln!("note: could not remove {}: {e:#}", dir.path().display()),
        }
    }
    // Lock files of clusters whose folder is gone.
    if let Ok(entries) = std::fs::read_dir(&ws_dir) {
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "lock")
                && !p.with_extension("").exists()
                && let Ok(f) = std::fs::File::open(&p)
                && f.try_lock().is_ok()
            {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let _ = std::fs::remove_dir(&ws_dir);
}

fn existence_text(e: &WorkspaceExistence) -> String {
    match e {
        WorkspaceExistence::NotExist => "does not exist".into(),
        WorkspaceExistence::Completed => "exists".into(),
        WorkspaceExistence::Incomplete { missing } => format!("incomplete (missing: {})", missing.join(", ")),
    }
}

pub(crate) async fn run(cmd: WorkspaceCommand) -> Result<u8> {
    match cmd {
        WorkspaceCommand::Create { file, yes } => {
            let ws = open(&file).await?;
            if ws.existence().await? == WorkspaceExistence::Completed {
                println!("Workspace {} exists already.", ws.name());
                return Ok(0);
            }
            ui::confirm(&format!("Create the workspace {}?", ws.name()), yes)?;
            let progress = Progress::start(false);
            progress.say(format!("creating the workspace {}", ws.name()));
            let r = ws.create().await;
            progress.finish().await;
            r?;
            println!("Workspace {} created.", ws.name());
            Ok(0)
        }
        WorkspaceCommand::Delete {
            file,
            yes,
            delete_managed_storage,
        } => {
            let ws = open(&file).await?;
            if ws.existence().await? == WorkspaceExistence::NotExist {
                println!("Workspace {} does not exist.", ws.name());
                forget_clusters(ws.name());
                return Ok(0);
            }
            ui::confirm(&format!("Delete the workspace {}?", ws.name()), yes)?;
            let progress = Progress::start(false);
            progress.say(format!("deleting the workspace {}", ws.name()));
            let r = ws
                .delete(DeleteWorkspaceOptions::default().with_delete_managed_storage(delete_managed_storage))
                .await;
            progress.finish().await;
            r?;
            println!("Workspace {} deleted.", ws.name());
            forget_clusters(ws.name());
            Ok(0)
        }
        WorkspaceCommand::Update { file, yes } => {
            let ws = open(&file).await?;
            ui::confirm(&format!("Update the workspace {}?", ws.name()), yes)?;
            ws.update().await?;
            println!("Workspace {} updated.", ws.name());
            Ok(0)
        }
        WorkspaceCommand::Info { file, json } => {
            let ws = open(&file).await?;
            let existence = ws.existence().await?;
            let info = if existence == WorkspaceExistence::NotExist {
                serde_json::Value::Null
            } else {
                ws.info().await?
            };
            let clusters = if existence == WorkspaceExistence::NotExist {
                Vec::new()
            } else {
                ws.list_clusters().await?
            };
            if json {
                ui::print_json(&serde_json::json!({
                    "workspace_name": ws.name(),
                    "existence": existence,
                    "info": info,
                    "clusters": clusters,
                }))?;
            } else {
                println!("Workspace {}: {}", ws.name(), existence_text(&existence));
                if let Some(obj) = info.as_object() {
                    for (k, v) in obj {
                        println!(
                            "  {k}: {}",
                            v.as_str().map_or_else(|| v.to_string(), str::to_string)
                        );
                    }
                }
                if !clusters.is_empty() {
                    println!("Clusters: {}", clusters.join(", "));
                }
            }
            Ok(0)
        }
    }
}

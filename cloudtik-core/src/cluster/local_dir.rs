//! What the machine that starts a cluster keeps of it: the cluster's SSH key pair, its
//! known-hosts file, its secrets and the token of a head launch in progress.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::state::{EncryptionKey, generate_password};

/// The local folder of one cluster, `~/.cloudtik/clusters/<workspace>/<cluster>/`:
///
/// | file | what |
/// |---|---|
/// | `id_ed25519`, `id_ed25519.pub` | the cluster's SSH key pair, made on first use (unless `auth` names one) |
/// | `known_hosts` | host keys of the cluster's nodes, pinned on first contact |
/// | `secrets.json` | the state store's password and the cluster's encryption key (mode 0600) |
/// | `head-launch.json` | the token of a head launch not yet finished, so a re-run adopts its node |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDir {
    root: PathBuf,
}

/// The state store's password and the cluster's encryption key, made once per cluster
/// and kept in [`ClusterDir`] (mode 0600); never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecrets {
    /// The password of the head's redis-server.
    pub redis_password: String,
    /// The cluster's encryption key, 64 hex digits.
    pub encryption_key: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecrets { .. }")
    }
}

impl ClusterSecrets {
    /// The encryption key.
    pub fn key(&self) -> Result<EncryptionKey> {
        EncryptionKey::from_hex(&self.encryption_key)
    }
}

impl ClusterDir {
    /// The folder of `config`'s cluster under `base` (e.g. `~/.cloudtik/clusters`).
    pub fn new(base: impl AsRef<Path>, config: &ClusterConfig) -> Self {
        ClusterDir {
            root: base
                .as_ref()
                .join(&config.workspace_name)
                .join(&config.cluster_name),
        }
    }

    /// The default base, `~/.cloudtik/clusters` (`$CLOUDTIK_HOME/clusters` when set).
    pub fn default_base() -> PathBuf {
        match std::env::var_os("CLOUDTIK_HOME") {
            Some(h) => PathBuf::from(h).join("clusters"),
            None => dirs::home_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join(".cloudtik")
                .join("clusters"),
        }
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The generated private key.
    pub fn private_key(&self) -> PathBuf {
        self.root.join("id_ed25519")
    }

    /// The generated public key.
    pub fn public_key(&self) -> PathBuf {
        self.root.join("id_ed25519.pub")
    }

    /// The cluster's known-hosts file.
    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }

    fn secrets_file(&self) -> PathBuf {
        self.root.join("secrets.json")
    }

    fn head_launch_file(&self) -> PathBuf {
        self.root.join("head-launch.json")
    }

    fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(|e| io_error("create the cluster folder", &self.root, e))
    }

    /// Fills `auth.ssh_private_key` and `auth.ssh_public_key` with the cluster's own key
    /// pair (made with `ssh-keygen` on first use) when the config names no private key.
    /// Call it before anything hashes the config: the keys are part of the launch hash.
    pub fn prepare_auth(&self, config: &mut ClusterConfig) -> Result<()> {
        if config.auth.ssh_private_key.is_some() {
            if config.auth.ssh_public_key.is_none() {
                let private =
                    crate::config::hash::expand_home(config.auth.ssh_private_key.as_deref().unwrap_or(""));
                let public = PathBuf::from(format!("{}.pub", private.display()));
                if public.exists() {
                    config.auth.ssh_public_key = Some(public.display().to_string());
                }
            }
            return Ok(());
        }
        self.ensure_key_pair()?;
        config.auth.ssh_private_key = Some(self.private_key().display().to_string());
        config.auth.ssh_public_key = Some(self.public_key().display().to_string());
        Ok(())
    }

    /// Makes the cluster's key pair unless it exists.
    pub fn ensure_key_pair(&self) -> Result<()> {
        if self.private_key().exists() && self.public_key().exists() {
            return Ok(());
        }
        self.create()?;
        let _ = std::fs::remove_file(self.private_key());
        let _ = std::fs::remove_file(self.public_key());
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "cloudtik-cluster", "-f"])
            .arg(self.private_key())
            .output()
            .map_err(|e| {
                Error::new(
                    ErrorKind::NotFound,
                    "cannot run ssh-keygen to make the cluster's key pair: install openssh-client",
                )
                .with_source(e)
            })?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "ssh-keygen failed making {}: {}",
                    self.private_key().display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    /// The cluster's secrets, made and stored (mode 0600) on first use.
    pub fn secrets(&self) -> Result<ClusterSecrets> {
        let path = self.secrets_file();
        match std::fs::read(&path) {
            Ok(bytes) => {
                return serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "{} is damaged ({e}); restore it, or delete it only if the cluster is stopped",
                            path.display()
                        ),
                    )
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("read", &path, e)),
        }
        let secrets = ClusterSecrets {
            redis_password: generate_password(),
            encryption_key: EncryptionKey::generate().to_hex(),
        };
        self.create()?;
        write_private(&path, &serde_json::to_vec_pretty(&secrets).unwrap_or_default())?;
        Ok(secrets)
    }

    /// The token of an unfinished head launch, if one was recorded.
    pub fn head_launch_token(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.head_launch_file()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.get("token")?.as_str().map(str::to_string)
    }

    /// Records the token of a head launch before the provider is called.
    pub fn record_head_launch(&self, token: &str) -> Result<()> {
        self.create()?;
        write_private(
            &self.head_launch_file(),
            serde_json::json!({ "token": token }).to_string().as_bytes(),
        )
    }

    /// Forgets the head launch once its node is set up.
    pub fn clear_head_launch(&self) {
        let _ = std::fs::remove_file(self.head_launch_file());
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::PermissionDenied {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::Unexpected
    };
    Error::new(kind, format!("cannot {what} {}", path.display())).with_source(e)
}

/// Writes `bytes` to `path` readable by its owner only (temporary file, then rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_error("write", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io_error("write", &tmp, e))?;
    f.sync_all().map_err(|e| io_error("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        crate::config::ConfigLoader::new()
            .load_cluster_str(
                "t.yaml",
                "cluster_name: c\nworkspace_name: w\nprovider: {type: local}\nauth: {ssh_user: root}\n\
                 available_node_types: {h: {node_config: {}}}\nhead_node_type: h\n",
            )
            .unwrap()
    }

    #[test]
    fn secrets_are_made_once_private_and_never_printed() {
        let base = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(base.path(), &config());
        let a = dir.secrets().unwrap();
        let b = dir.secrets().unwrap();
        assert_eq!(a, b);
        assert!(a.key().is_ok());
        assert!(!format!("{a:?}").contains(&a.redis_password));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(base.path().join("w/c/secrets.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(base.path().join("w/c/secrets.json"), "{").unwrap();
        let e = dir.secrets().unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    #[test]
    fn head_launch_tokens_are_kept_until_cleared() {
        let base = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(base.path(), &config());
        assert_eq!(dir.head_launch_token(), None);
        dir.record_head_launch("abc").unwrap();
        assert_eq!(dir.head_launch_token().as_deref(), Some("abc"));
        dir.clear_head_launch();
        assert_eq!(dir.head_launch_token(), None);
    }
}

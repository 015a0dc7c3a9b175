//! What the machine that starts a cluster keeps of it: the cluster's SSH key pair, its
//! known-hosts file, its secrets and the token of a head launch in progress; and the lock
//! that keeps two commands of this machine from writing them at once.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
/// | `known_hosts` | host keys of the cluster's nodes under their ids, pinned before the first connection where the provider tells them, else on first contact |
/// | `secrets.json` | the state store's password and the cluster's encryption key (mode 0600) |
/// | `head-launch.json` | the token of a head launch not yet finished, so a re-run adopts its node |
///
/// Beside it, `<cluster>.lock` is the lock of [`ClusterDir::lock`] (it holds the pid of
/// the command that has it, nothing secret).
///
/// The folder lives as long as the cluster: [`ClusterDir::remove_secrets`] removes it
/// when the cluster is gone (`cloudtik stop` does, unless told to keep it).
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

    /// The folder of cluster `cluster` of workspace `workspace` under `base`.
    pub fn named(base: impl AsRef<Path>, workspace: &str, cluster: &str) -> Self {
        ClusterDir {
            root: base.as_ref().join(workspace).join(cluster),
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

    /// The lock file, `<workspace>/<cluster>.lock` beside the folder (outside it, so
    /// removing the folder never removes a lock another command waits on).
    pub fn lock_file(&self) -> PathBuf {
        let mut name = self
            .root
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".lock");
        self.root.with_file_name(name)
    }

    /// Takes the cluster's lock on this machine: an advisory lock (`flock`) on
    /// [`lock_file`](Self::lock_file), held until the returned guard is dropped (or the
    /// process ends, however it ends). Commands that write the folder or change the
    /// cluster's nodes (`cloudtik start`, `stop`, `kill-node`) take it first, so two of them
    /// never make the key pair, the secrets or a head at once.
    ///
    /// [`ManagedCluster`](super::ManagedCluster) does not take it itself: a program that
    /// starts or stops clusters takes it first (before [`prepare_auth`](Self::prepare_auth)),
    /// as the `cloudtik` CLI does, and holds it for the whole operation.
    ///
    /// When another process holds it, `waiting` is called once with that process's id
    /// (if it wrote one), and the lock is tried again every 200 ms until `timeout`, then
    /// this fails with [`ErrorKind::Timeout`] naming the process.
    pub async fn lock(
        &self,
        timeout: std::time::Duration,
        waiting: impl FnOnce(Option<u32>),
    ) -> Result<ClusterLock> {
        let path = self.lock_file();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("open the lock file", &path, e))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiting = Some(waiting);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &path, e)),
            }
            let holder = read_pid(&mut file);
            if let Some(w) = waiting.take() {
                w(holder);
            }
            if tokio::time::Instant::now() >= deadline {
                let who = holder.map_or_else(
                    || "another cloudtik command".to_string(),
                    |p| format!("another cloudtik command (pid {p})"),
                );
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{who} still works on this cluster after {timeout:?}: wait until it ends, or stop it \
                         (the lock is {}; it is released when that command exits)",
                        path.display()
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // Ours now: say who holds it, for the next command that waits.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(ClusterLock { file, path })
    }

    /// Removes the cluster's secrets from this machine: the key pair made here (never a
    /// key `auth` names elsewhere), `secrets.json`, `known_hosts`, `head-launch.json`,
    /// and the folder itself when nothing else is left in it. Call it once the cluster's
    /// nodes are gone; the next `start` makes new ones. Returns the files removed.
    pub fn remove_secrets(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for f in [
            self.private_key(),
            self.public_key(),
            self.secrets_file(),
            self.known_hosts(),
            self.head_launch_file(),
        ] {
            match std::fs::remove_file(&f) {
                Ok(()) => removed.push(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", &f, e)),
            }
        }
        // Left-overs of interrupted writes.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") || name.starts_with(".keygen-") {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
        // Only when empty: files a user put there stay.
        let _ = std::fs::remove_dir(&self.root);
        Ok(removed)
    }

    /// Whether the folder exists.
    pub fn exists(&self) -> bool {
        self.root.exists()
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
    ///
    /// Safe against another process doing the same: the pair is made in a temporary
    /// folder, the private key is linked into place only if none is there (the first one
    /// wins, the other's pair is discarded), and a missing public key is derived from the
    /// private key that won (`ssh-keygen -y`), so a reader never sees half a pair.
    pub fn ensure_key_pair(&self) -> Result<()> {
        if !self.private_key().exists() {
            self.create()?;
            let tmp = tempfile::Builder::new()
                .prefix(".keygen-")
                .tempdir_in(&self.root)
                .map_err(|e| io_error("make a temporary folder in", &self.root, e))?;
            let private = tmp.path().join("id_ed25519");
            let out = run_ssh_keygen(
                &["-q", "-t", "ed25519", "-N", "", "-C", "cloudtik-cluster", "-f"],
                &private,
            )?;
            if !out.status.success() {
                return Err(keygen_failed(
                    &format!("making {}", self.private_key().display()),
                    &out,
                ));
            }
            match std::fs::hard_link(&private, self.private_key()) {
                Ok(()) => {
                    let public = tmp.path().join("id_ed25519.pub");
                    std::fs::rename(&public, self.public_key())
                        .map_err(|e| io_error("write", &self.public_key(), e))?;
                    return Ok(());
                }
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("write", &self.private_key(), e)),
            }
        }
        if self.public_key().exists() {
            return Ok(());
        }
        // Give a process that is making the pair a moment to put the public key there,
        // then derive it from the private key.
        for _ in 0..25 {
            if self.public_key().exists() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = run_ssh_keygen(&["-y", "-f"], &self.private_key())?;
        if !out.status.success() {
            return Err(keygen_failed(
                &format!(
                    "deriving the public key of {} (is it a private key without a passphrase?)",
                    self.private_key().display()
                ),
                &out,
            ));
        }
        let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !text.contains(' ') {
            text.push_str(" cloudtik-cluster");
        }
        text.push('\n');
        write_file(&self.public_key(), text.as_bytes(), 0o644)
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
                            "{} is damaged ({e:#}); restore it, or delete it only if the cluster is stopped",
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
        // No-clobber: if another process made them meanwhile, theirs are the cluster's.
        if !write_file_new(
            &path,
            &serde_json::to_vec_pretty(&secrets).unwrap_or_default(),
            0o600,
        )? {
            return self.secrets();
        }
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

/// The cluster's lock on this machine, from [`ClusterDir::lock`]; released when dropped.
#[derive(Debug)]
pub struct ClusterLock {
    file: std::fs::File,
    path: PathBuf,
}

impl ClusterLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_pid(file: &mut std::fs::File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn run_ssh_keygen(args: &[&str], file: &Path) -> Result<std::process::Output> {
    std::process::Command::new("ssh-keygen")
        .args(args)
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::new(
                ErrorKind::NotFound,
                "cannot run ssh-keygen to make the cluster's key pair: install openssh-client \
                 (or set auth.ssh_private_key to a key of yours)",
            )
            .with_source(e)
        })
}

fn keygen_failed(what: &str, out: &std::process::Output) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let said = if stderr.is_empty() {
        "it printed nothing".to_string()
    } else {
        format!("it said: {stderr}")
    };
    Error::new(
        ErrorKind::Unexpected,
        format!(
            "ssh-keygen failed {what} ({}; {said}); check that the folder is writable and \
             ssh-keygen works (`ssh-keygen -t ed25519 -f /tmp/k`), or set auth.ssh_private_key to a key of yours",
            out.status
        ),
    )
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
    write_file(path, bytes, 0o600)
}

/// Writes `bytes` to `path` with `mode` atomically: a temporary file of a name unique to
/// this write (so two processes never write the same one), then rename.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| io_error("write a temporary file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| io_error("write", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_error("write", tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io_error("write", path, e.error))?;
    Ok(())
}

/// Like [`write_file`], but only if `path` does not exist; false if it did.
fn write_file_new(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".new.")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| io_error("write a temporary file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| io_error("write", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_error("write", tmp.path(), e))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_error("write", path, e.error)),
    }
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
        assert!(e.to_string().contains("damaged"), "{e:#}");
    }

    #[tokio::test]
    async fn the_lock_makes_a_second_command_wait_and_names_the_holder() {
        let base = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(base.path(), &config());
        let held = dir
            .lock(std::time::Duration::from_secs(1), |_| panic!("free"))
            .await
            .unwrap();
        assert_eq!(held.path(), base.path().join("w/c.lock"));
        let mut told = None;
        let e = dir
            .lock(std::time::Duration::from_millis(300), |pid| told = Some(pid))
            .await
            .unwrap_err();
        assert_eq!(told, Some(Some(std::process::id())));
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(
            e.to_string().contains(&format!("pid {}", std::process::id())),
            "{e:#}"
        );
        drop(held);
        dir.lock(std::time::Duration::from_millis(300), |_| panic!("released"))
            .await
            .unwrap();
    }

    #[test]
    fn key_pairs_made_at_once_by_many_end_as_one_pair() {
        if std::process::Command::new("ssh-keygen")
            .arg("-?")
            .output()
            .is_err()
        {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(base.path(), &config());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| dir.ensure_key_pair().unwrap());
            }
        });
        let derived = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(dir.private_key())
            .output()
            .unwrap();
        let public = std::fs::read_to_string(dir.public_key()).unwrap();
        let derived = String::from_utf8_lossy(&derived.stdout);
        let key_of = |s: &str| s.split_whitespace().nth(1).map(str::to_string);
        assert_eq!(key_of(&public), key_of(&derived));
        // A lost public key is derived again from the private key.
        std::fs::remove_file(dir.public_key()).unwrap();
        dir.ensure_key_pair().unwrap();
        assert_eq!(
            key_of(&std::fs::read_to_string(dir.public_key()).unwrap()),
            key_of(&public)
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn secrets_are_removed_with_the_folder_but_not_other_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(base.path(), &config());
        dir.secrets().unwrap();
        dir.record_head_launch("t").unwrap();
        std::fs::write(dir.known_hosts(), "n1 ssh-ed25519 AAAA\n").unwrap();
        let removed = dir.remove_secrets().unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(!dir.exists());
        // A file the user put there stays, and so does the folder.
        dir.secrets().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        dir.remove_secrets().unwrap();
        assert!(dir.path().join("notes.txt").exists());
        assert!(!dir.path().join("secrets.json").exists());
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

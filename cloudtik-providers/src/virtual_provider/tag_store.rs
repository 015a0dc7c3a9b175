//! The tag overlay: tags set after launch, per container id, in one JSON file per cluster.
//!
//! Reads need no lock (the file is replaced by an atomic rename, so a reader sees the old
//! or the new file, never half of one). Read-modify-write cycles hold an exclusive
//! `flock` on `tags.json.lock`, which serializes writers in this process, in other
//! processes, and in the head container that mounts the same folder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use cloudtik_core::{Error, ErrorKind, Result, Tags};
use serde::{Deserialize, Serialize};

/// The overlay file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Overlay {
    /// Container id -> tags that override (or add to) its labels.
    #[serde(default)]
    pub(crate) nodes: BTreeMap<String, Tags>,
}

impl Overlay {
    /// Every tag key some entry overrides.
    pub(crate) fn overridden_keys(&self) -> BTreeSet<&str> {
        self.nodes
            .values()
            .flat_map(|t| t.keys().map(String::as_str))
            .collect()
    }

    /// Drops the entries of containers not in `alive`; true when one was dropped.
    pub(crate) fn retain_alive(&mut self, alive: &BTreeSet<String>) -> bool {
        let before = self.nodes.len();
        self.nodes.retain(|id, _| alive.contains(id));
        self.nodes.len() != before
    }
}

/// The overlay of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct TagStore {
    dir: PathBuf,
}

/// Holds the overlay's lock until dropped.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl TagStore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        TagStore { dir }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join("tags.json")
    }

    fn io_error(&self, what: &str, path: &Path, e: std::io::Error) -> Error {
        let kind = if e.kind() == std::io::ErrorKind::PermissionDenied {
            ErrorKind::PermissionDenied
        } else {
            ErrorKind::Unexpected
        };
        Error::new(kind, format!("cannot {what} the tag overlay {}", path.display())).with_source(e)
    }

    /// The overlay; empty when the file does not exist.
    pub(crate) fn read(&self) -> Result<Overlay> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "the tag overlay {} is not valid JSON; move it away to reset the tags set after launch",
                        path.display()
                    ),
                )
                .with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
            Err(e) => Err(self.io_error("read", &path, e)),
        }
    }

    /// Takes the exclusive lock of the overlay (waiting for other holders on a blocking thread).
    pub(crate) async fn lock(&self) -> Result<StoreLock> {
        self.lock_file("tags.json.lock").await
    }

    /// Takes the cluster's launch lock: launches of one cluster run one at a time, so
    /// two calls with the same token (a re-run CLI while the first still runs) never
    /// both create the missing nodes.
    pub(crate) async fn launch_lock(&self) -> Result<StoreLock> {
        self.lock_file("launch.lock").await
    }

    async fn lock_file(&self, name: &str) -> Result<StoreLock> {
        let dir = self.dir.clone();
        let lock_path = dir.join(name);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| this.io_error("create the folder of", &dir, e))?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| this.io_error("open the lock of", &lock_path, e))?;
            file.lock().map_err(|e| this.io_error("lock", &lock_path, e))?;
            Ok(StoreLock { _file: file })
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, "the tag overlay lock task failed").with_source(e))?
    }

    /// Replaces the overlay atomically; the caller holds the lock. An empty overlay
    /// removes the file.
    pub(crate) fn write(&self, _lock: &StoreLock, overlay: &Overlay) -> Result<()> {
        let path = self.path();
        if overlay.nodes.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.io_error("remove", &path, e)),
            };
        }
        let tmp = self.dir.join(format!("tags.json.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(overlay)
            .map_err(|e| Error::new(ErrorKind::Unexpected, "cannot encode the tag overlay").with_source(e))?;
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.io_error("write", &path, e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn writes_are_atomic_and_survive_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path().join("ws").join("c"));
        assert_eq!(store.read().unwrap(), Overlay::default());
        let lock = store.lock().await.unwrap();
        let mut overlay = store.read().unwrap();
        overlay.nodes.insert("abc".into(), tags(&[("k", "v")]));
        store.write(&lock, &overlay).unwrap();
        drop(lock);
        let again = TagStore::new(dir.path().join("ws").join("c"));
        assert_eq!(again.read().unwrap(), overlay);
        assert_eq!(overlay.overridden_keys(), BTreeSet::from(["k"]));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("ws").join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
        // An empty overlay removes the file.
        let lock = again.lock().await.unwrap();
        again.write(&lock, &Overlay::default()).unwrap();
        assert!(!again.path().exists());
    }

    #[tokio::test]
    async fn concurrent_writers_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path().to_path_buf());
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let lock = store.lock().await.unwrap();
                    let mut overlay = store.read().unwrap();
                    tokio::task::yield_now().await;
                    overlay
                        .nodes
                        .insert(format!("node-{i}"), tags(&[("i", &i.to_string())]));
                    store.write(&lock, &overlay).unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.read().unwrap().nodes.len(), 16);
    }

    #[test]
    fn dead_entries_are_dropped() {
        let mut overlay = Overlay::default();
        overlay.nodes.insert("a".into(), tags(&[("k", "1")]));
        overlay.nodes.insert("b".into(), tags(&[("k", "2")]));
        assert!(overlay.retain_alive(&BTreeSet::from(["a".to_string()])));
        assert!(!overlay.retain_alive(&BTreeSet::from(["a".to_string()])));
        assert_eq!(overlay.nodes.keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn a_broken_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path().to_path_buf());
        std::fs::write(store.path(), b"{not json").unwrap();
        let e = store.read().unwrap_err();
        assert!(e.to_string().contains("is not valid JSON"), "{e:#}");
    }
}

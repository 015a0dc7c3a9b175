//! How the machine running `cloudtik` reaches the package indexes, passed on to nodes:
//! its pip index, extra indexes, trusted hosts and CA bundle, and its proxies. Users
//! behind a corporate proxy or a TLS-inspecting gateway need their nodes to do as their
//! machine does.
//!
//! Read from, later ones winning: pip's config files (`/etc/xdg/pip/pip.conf`,
//! `/etc/pip.conf`, `~/.pip/pip.conf`, `~/.config/pip/pip.conf`, `$PIP_CONFIG_FILE`;
//! sections `[global]` then `[install]`), then the environment (`PIP_INDEX_URL`,
//! `PIP_EXTRA_INDEX_URL`, `PIP_TRUSTED_HOST`, `PIP_CERT`, `HTTP_PROXY`, `HTTPS_PROXY`,
//! `NO_PROXY`, upper or lower case). pip's `find-links` is not passed on: it names
//! folders of this machine.
//!
//! [`MachinePackageSettings::apply`] adds them to a cluster config: the CA bundle as a
//! file mount (`~/cloudtik/pip/ca-bundle.crt` of the SSH user on every node), and
//! `PIP_*` and proxy variables in `runtime.envs`, which every node command gets. A
//! variable the config sets itself is left as the config has it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cloudtik_core::config::ClusterConfig;

/// The machine's package-index settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MachinePackageSettings {
    /// pip's index URL.
    pub index_url: Option<String>,
    /// pip's extra index URLs (space separated, as pip takes them).
    pub extra_index_url: Option<String>,
    /// pip's trusted hosts (space separated).
    pub trusted_host: Option<String>,
    /// The CA bundle pip verifies TLS with, on this machine.
    pub ca_bundle: Option<PathBuf>,
    /// Proxy variables, by their canonical upper-case name (`HTTP_PROXY`, `HTTPS_PROXY`,
    /// `NO_PROXY`).
    pub proxies: BTreeMap<String, String>,
}

/// The values of the keys of `[global]` then `[install]` in a pip config file.
fn parse_pip_conf(text: &str, out: &mut BTreeMap<String, String>) {
    let mut section = String::new();
    let mut global = BTreeMap::new();
    let mut install = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_lowercase();
            continue;
        }
        let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            continue;
        };
        let k = k.trim().to_lowercase().replace('_', "-");
        let v = v.trim().to_string();
        match section.as_str() {
            "global" => global.insert(k, v),
            "install" => install.insert(k, v),
            _ => None,
        };
    }
    out.extend(global);
    out.extend(install);
}

impl MachinePackageSettings {
    /// The settings of this machine (see the module docs).
    pub fn detect() -> Self {
        let home = std::env::var("HOME").unwrap_or_default();
        let mut files: Vec<PathBuf> = vec![
            "/etc/xdg/pip/pip.conf".into(),
            "/etc/pip.conf".into(),
            Path::new(&home).join(".pip/pip.conf"),
            Path::new(&home).join(".config/pip/pip.conf"),
        ];
        if let Ok(f) = std::env::var("PIP_CONFIG_FILE") {
            files.push(f.into());
        }
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_sources(&files, &env)
    }

    /// The settings from these pip config files (missing ones skipped) and this
    /// environment.
    pub fn from_sources(files: &[PathBuf], env: &BTreeMap<String, String>) -> Self {
        let mut conf = BTreeMap::new();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(f) {
                parse_pip_conf(&text, &mut conf);
            }
        }
        let get = |env_name: &str, key: &str| -> Option<String> {
            env.get(env_name)
                .cloned()
                .or_else(|| conf.get(key).cloned())
                .filter(|v| !v.is_empty())
        };
        let mut proxies = BTreeMap::new();
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"] {
            if let Some(v) = env
                .get(name)
                .or_else(|| env.get(&name.to_lowercase()))
                .filter(|v| !v.is_empty())
            {
                proxies.insert(name.to_string(), v.clone());
            }
        }
        MachinePackageSettings {
            index_url: get("PIP_INDEX_URL", "index-url"),
            extra_index_url: get("PIP_EXTRA_INDEX_URL", "extra-index-url"),
            trusted_host: get("PIP_TRUSTED_HOST", "trusted-host"),
            ca_bundle: get("PIP_CERT", "cert").map(PathBuf::from).filter(|p| p.is_file()),
            proxies,
        }
    }

    /// True when there is nothing to pass on.
    pub fn is_empty(&self) -> bool {
        self.index_url.is_none()
            && self.extra_index_url.is_none()
            && self.trusted_host.is_none()
            && self.ca_bundle.is_none()
            && self.proxies.is_empty()
    }

    /// Where the CA bundle goes on a node whose SSH user is `user`.
    pub fn ca_bundle_on_node(user: &str) -> String {
        let home = if user == "root" {
            "/root".to_string()
        } else {
            format!("/home/{user}")
        };
        format!("{home}/cloudtik/pip/ca-bundle.crt")
    }

    /// The variables every node command gets, for a node whose SSH user is `user`.
    pub fn node_env(&self, user: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(v) = &self.index_url {
            env.insert("PIP_INDEX_URL".to_string(), v.clone());
        }
        if let Some(v) = &self.extra_index_url {
            env.insert("PIP_EXTRA_INDEX_URL".to_string(), v.clone());
        }
        if let Some(v) = &self.trusted_host {
            env.insert("PIP_TRUSTED_HOST".to_string(), v.clone());
        }
        if self.ca_bundle.is_some() {
            env.insert("PIP_CERT".to_string(), Self::ca_bundle_on_node(user));
        }
        for (k, v) in &self.proxies {
            env.insert(k.clone(), v.clone());
            env.insert(k.to_lowercase(), v.clone());
        }
        env
    }

    /// Adds the settings to `config` (see the module docs). Variables and file mounts the
    /// config has are kept.
    pub fn apply(&self, config: &mut ClusterConfig) {
        let user = config.auth.ssh_user.clone().unwrap_or_else(|| "root".to_string());
        if let Some(ca) = &self.ca_bundle {
            config
                .file_mounts
                .entry(Self::ca_bundle_on_node(&user))
                .or_insert_with(|| ca.display().to_string());
        }
        for (k, v) in self.node_env(&user) {
            config
                .runtime
                .envs
                .entry(k)
                .or_insert(serde_json::Value::String(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_config_files_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "CERT").unwrap();
        let global = dir.path().join("pip.conf");
        std::fs::write(
            &global,
            format!(
                "[global]\nindex-url = https://mirror.example/simple\ncert = {}\nfind-links = /opt/wheels\n\
                 [install]\ntrusted_host = mirror.example\n",
                ca.display()
            ),
        )
        .unwrap();
        let env = BTreeMap::from([
            ("https_proxy".to_string(), "http://proxy:3128".to_string()),
            (
                "PIP_EXTRA_INDEX_URL".to_string(),
                "https://extra.example/simple".to_string(),
            ),
        ]);
        let s = MachinePackageSettings::from_sources(&[global.clone(), dir.path().join("missing")], &env);
        assert_eq!(s.index_url.as_deref(), Some("https://mirror.example/simple"));
        assert_eq!(s.trusted_host.as_deref(), Some("mirror.example"));
        assert_eq!(s.extra_index_url.as_deref(), Some("https://extra.example/simple"));
        assert_eq!(s.ca_bundle.as_deref(), Some(ca.as_path()));
        assert_eq!(s.proxies["HTTPS_PROXY"], "http://proxy:3128");
        let node = s.node_env("ubuntu");
        assert_eq!(node["PIP_CERT"], "/home/ubuntu/cloudtik/pip/ca-bundle.crt");
        assert_eq!(node["https_proxy"], "http://proxy:3128");
        assert!(!node.keys().any(|k| k.contains("FIND")));
        // The environment wins over the files.
        let env = BTreeMap::from([("PIP_INDEX_URL".to_string(), "https://env.example".to_string())]);
        let s = MachinePackageSettings::from_sources(&[global], &env);
        assert_eq!(s.index_url.as_deref(), Some("https://env.example"));
        // A CA bundle that does not exist is not passed on.
        let env = BTreeMap::from([("PIP_CERT".to_string(), "/nonexistent/ca".to_string())]);
        assert!(MachinePackageSettings::from_sources(&[], &env).is_empty());
    }

    #[test]
    fn apply_keeps_what_the_config_sets() {
        let mut config: ClusterConfig = serde_json::from_value(serde_json::json!({
            "cluster_name": "c", "workspace_name": "w", "provider": {"type": "virtual"},
            "head_node_type": "head", "available_node_types": {"head": {"node_config": {}}}
        }))
        .unwrap();
        config
            .runtime
            .envs
            .insert("PIP_INDEX_URL".into(), serde_json::json!("https://mine.example"));
        let s = MachinePackageSettings {
            index_url: Some("https://machine.example".into()),
            ca_bundle: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            ..Default::default()
        };
        s.apply(&mut config);
        assert_eq!(config.runtime.envs["PIP_INDEX_URL"], "https://mine.example");
        assert_eq!(
            config.runtime.envs["PIP_CERT"],
            "/root/cloudtik/pip/ca-bundle.crt"
        );
        assert_eq!(
            config.file_mounts["/root/cloudtik/pip/ca-bundle.crt"],
            "/etc/ssl/certs/ca-certificates.crt"
        );
    }
}

//! Launch and runtime hashes: SHA-1 of canonical JSON, as CloudTik computes them.
//!
//! Canonical JSON is Python's `json.dumps(obj, sort_keys=True)`: keys sorted, `", "` and
//! `": "` as separators, non-ASCII escaped as `\uXXXX`. For configs made of strings,
//! integers, booleans, nulls and short decimals the hashes are the ones CloudTik's
//! Python computes; key order and YAML layout never change them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha1::{Digest, Sha1};

use super::cluster::{AuthConfig, ClusterConfig, CommandPhase};
use super::path::YamlPath;
use crate::error::{Error, Result};
use crate::node::NodeKind;

/// Writes `v` as canonical JSON.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 1e16 {
                    let _ = write!(out, "{f:.1}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(k, out);
                out.push_str(": ");
                write_canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// SHA-1 hex digest of the canonical JSON of `v`.
pub fn hash_value(v: &Value) -> String {
    hex::encode(Sha1::digest(canonical_json(v).as_bytes()))
}

/// `p` with a leading `~` replaced by `$HOME`.
pub fn expand_home(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = dirs::home_dir()
    {
        return home.join(rest);
    }
    PathBuf::from(p)
}

/// The launch hash of a node: SHA-1 of `[node_config, auth]`, with the key paths in
/// `auth` replaced by the keys' contents (so the same key at another path hashes the
/// same). A node whose `cloudtik-launch-config` tag differs from this is outdated.
pub fn launch_hash(node_config: &Value, auth: &AuthConfig) -> Result<String> {
    let mut full_auth = serde_json::to_value(auth).unwrap_or(Value::Null);
    for key in ["ssh_private_key", "ssh_public_key"] {
        let path = full_auth.get(key).and_then(Value::as_str).map(str::to_string);
        if let Some(path) = path {
            let contents = std::fs::read_to_string(expand_home(&path)).map_err(|e| {
                Error::config(
                    YamlPath::root().key("auth").key(key).to_string(),
                    format!("cannot read the key file `{path}`: {e:#}"),
                )
            })?;
            full_auth[key] = Value::String(contents);
        }
    }
    Ok(hash_value(&Value::Array(vec![node_config.clone(), full_auth])))
}

/// The hashes that decide whether a node's setup must run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHashes {
    /// Hash of the commands, runtime and docker settings and file-mount layout of the
    /// node's kind and type (`cloudtik-runtime-config`).
    pub runtime_hash: String,
    /// Hash of the contents of the file mounts (`cloudtik-file-mounts-contents`).
    pub file_mounts_contents_hash: String,
}

/// Computes the runtime hashes of a node of `kind` and `node_type`. Reads the local
/// side of every file mount; a missing one is an error naming it.
pub fn runtime_hashes(config: &ClusterConfig, kind: NodeKind, node_type: &str) -> Result<RuntimeHashes> {
    let commands: Vec<Value> = [
        CommandPhase::Initialization,
        CommandPhase::Setup,
        CommandPhase::Start,
    ]
    .iter()
    .map(|p| serde_json::json!(config.commands(*p, kind, node_type)))
    .collect();
    let t = config.available_node_types.get(node_type);
    let runtime = serde_json::json!({
        "global": config.runtime,
        "node_type": t.and_then(|t| t.runtime.as_ref()),
    });
    let docker = serde_json::json!({
        "global": config.docker,
        "node_type": t.and_then(|t| t.docker.as_ref()),
    });
    let runtime_hash = hash_value(&serde_json::json!([
        commands,
        runtime,
        docker,
        config.file_mounts,
        config.cluster_synced_files,
    ]));

    let mut hasher = Sha1::new();
    for (remote, local) in &config.file_mounts {
        hasher.update(remote.as_bytes());
        hasher.update([0u8]);
        let p = expand_home(local);
        hash_path(&p, &p, &mut hasher).map_err(|e| {
            Error::config(
                YamlPath::root().key("file_mounts").key(remote).to_string(),
                format!("cannot read the local path `{local}`: {e:#}"),
            )
        })?;
    }
    Ok(RuntimeHashes {
        runtime_hash,
        file_mounts_contents_hash: hex::encode(hasher.finalize()),
    })
}

fn hash_path(root: &Path, p: &Path, hasher: &mut Sha1) -> std::io::Result<()> {
    let meta = std::fs::metadata(p)?;
    let rel = p.strip_prefix(root).unwrap_or(p).to_string_lossy().into_owned();
    if meta.is_dir() {
        hasher.update(b"d:");
        hasher.update(rel.as_bytes());
        hasher.update([0u8]);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            hash_path(root, &e, hasher)?;
        }
    } else {
        hasher.update(b"f:");
        hasher.update(rel.as_bytes());
        hasher.update([0u8]);
        hasher.update(std::fs::read(p)?);
        hasher.update([0u8]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_is_pythons() {
        let v = json!({"b": [1, 2.5, "x"], "a": {"z": null, "y": true}, "é": "ü\n", "f": 3.0});
        assert_eq!(
            canonical_json(&v),
            r#"{"a": {"y": true, "z": null}, "b": [1, 2.5, "x"], "f": 3.0, "\u00e9": "\u00fc\n"}"#
        );
    }

    #[test]
    fn launch_hash_matches_cloudtik_python() {
        // Known answer computed with CPython 3.11:
        //   hashlib.sha1(json.dumps([{"InstanceType": "m5.2xlarge", "ImageId": "ami-1"},
        //                            {"ssh_user": "ubuntu"}], sort_keys=True).encode()).hexdigest()
        let node_config = json!({"InstanceType": "m5.2xlarge", "ImageId": "ami-1"});
        let auth = AuthConfig {
            ssh_user: Some("ubuntu".into()),
            ..Default::default()
        };
        assert_eq!(launch_hash(&node_config, &auth).unwrap(), PYTHON_SHA1);
    }

    const PYTHON_SHA1: &str = include_str!("../../tests/data/launch_hash_python.txt").trim_ascii();

    #[test]
    fn launch_hash_reads_keys_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = dir.path().join("k1");
        let k2 = dir.path().join("sub_k2");
        std::fs::write(&k1, "KEY").unwrap();
        std::fs::write(&k2, "KEY").unwrap();
        let a1 = AuthConfig {
            ssh_private_key: Some(k1.display().to_string()),
            ..Default::default()
        };
        let a2 = AuthConfig {
            ssh_private_key: Some(k2.display().to_string()),
            ..Default::default()
        };
        let nc = json!({"x": 1});
        assert_eq!(launch_hash(&nc, &a1).unwrap(), launch_hash(&nc, &a2).unwrap());
        std::fs::write(&k2, "OTHER").unwrap();
        assert_ne!(launch_hash(&nc, &a1).unwrap(), launch_hash(&nc, &a2).unwrap());
        let missing = AuthConfig {
            ssh_private_key: Some("/nonexistent/key".into()),
            ..Default::default()
        };
        let e = launch_hash(&nc, &missing).unwrap_err();
        assert_eq!(e.location().unwrap().path, "auth.ssh_private_key");
    }
}

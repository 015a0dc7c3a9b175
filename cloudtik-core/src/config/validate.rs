//! Checks of a typed cluster config that types alone cannot express.

use super::cluster::ClusterConfig;
use super::path::YamlPath;

use crate::error::{Error, Result};

fn at(path: YamlPath, msg: impl Into<String>) -> Error {
    Error::config(path.to_string(), msg)
}

fn node_type_path(name: &str) -> YamlPath {
    YamlPath::root().key("available_node_types").key(name)
}

/// Validates names, node types, worker limits and scaling options.
pub(crate) fn validate_cluster(c: &ClusterConfig) -> Result<()> {
    check_name(&c.cluster_name, "cluster_name")?;
    check_name(&c.workspace_name, "workspace_name")?;
    if c.provider.provider_type.trim().is_empty() {
        return Err(at(
            YamlPath::root().key("provider").key("type"),
            "must not be empty",
        ));
    }
    if c.available_node_types.is_empty() {
        return Err(at(
            YamlPath::root().key("available_node_types"),
            "no node types: define at least the head's type, or inherit a template with `from:`",
        ));
    }
    if c.head_node_type.is_empty() {
        return Err(at(
            YamlPath::root().key("head_node_type"),
            "missing: name the head's type, one of available_node_types",
        ));
    }
    if !c.available_node_types.contains_key(&c.head_node_type) {
        let names: Vec<&str> = c.available_node_types.keys().map(String::as_str).collect();
        return Err(at(
            YamlPath::root().key("head_node_type"),
            format!(
                "`{}` is not one of available_node_types ({})",
                c.head_node_type,
                names.join(", ")
            ),
        ));
    }
    for (name, t) in &c.available_node_types {
        let p = node_type_path(name);
        if name.trim().is_empty() {
            return Err(at(p, "a node type needs a non-empty name"));
        }
        if *name == c.head_node_type && t.min_workers.unwrap_or(0) > 0 {
            return Err(at(
                p.key("min_workers"),
                "the head's node type has no workers of its own: min_workers must be 0 \
                     (define a separate worker type)",
            ));
        }
        if let (Some(min), Some(max)) = (t.min_workers, t.max_workers)
            && min > max
        {
            return Err(at(
                p.key("min_workers"),
                format!("min_workers ({min}) is greater than max_workers ({max})"),
            ));
        }
        if let Some(r) = &t.resources {
            for (k, v) in r.iter() {
                if !v.is_finite() || v < 0.0 {
                    return Err(at(
                        p.key("resources").key(k),
                        "must be a finite number, 0 or more",
                    ));
                }
            }
        }
        if let Some(rt) = &t.runtime {
            for (i, rt_name) in rt.types.iter().enumerate() {
                if !c.runtime.types.contains(rt_name) {
                    return Err(at(
                        p.key("runtime").key("types").index(i),
                        format!(
                            "`{rt_name}` is not in the cluster's runtime.types ({}): a node type runs a subset of them",
                            c.runtime.types.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    if let Some(max) = c.max_workers {
        let sum = c.sum_min_workers();
        if sum > max {
            return Err(at(
                YamlPath::root().key("max_workers"),
                format!(
                    "max_workers ({max}) is smaller than the sum of min_workers of the node types ({sum})"
                ),
            ));
        }
        for (name, t) in &c.available_node_types {
            if let Some(min) = t.min_workers
                && min > max
                && *name != c.head_node_type
            {
                return Err(at(
                    node_type_path(name).key("min_workers"),
                    format!("min_workers ({min}) is greater than the global max_workers ({max})"),
                ));
            }
        }
    }
    for (path, v) in [
        (YamlPath::root().key("upscaling_speed"), c.upscaling_speed),
        (
            YamlPath::root().key("options").key("upscaling_speed"),
            c.options.upscaling_speed,
        ),
    ] {
        if let Some(v) = v
            && (!v.is_finite() || v <= 0.0)
        {
            return Err(at(path, format!("must be a number greater than 0, found {v}")));
        }
    }
    for (path, v) in [
        (
            YamlPath::root().key("idle_timeout_minutes"),
            c.idle_timeout_minutes,
        ),
        (
            YamlPath::root().key("options").key("idle_timeout_minutes"),
            c.options.idle_timeout_minutes,
        ),
    ] {
        if let Some(v) = v
            && (!v.is_finite() || v < 0.0)
        {
            return Err(at(path, format!("must be 0 (never) or more minutes, found {v}")));
        }
    }
    if c.auth.ssh_port == Some(0) {
        return Err(at(
            YamlPath::root().key("auth").key("ssh_port"),
            "must be a port from 1 to 65535",
        ));
    }
    // Container execution mode: every node type that runs in a container has an image
    // for its kind.
    for (name, t) in &c.available_node_types {
        let docker = c.docker_for(name)?;
        if !docker.enabled {
            continue;
        }
        let head = *name == c.head_node_type;
        let image = if head {
            &docker.head_image
        } else {
            &docker.worker_image
        };
        if image
            .as_ref()
            .or(docker.image.as_ref())
            .is_none_or(|i| i.trim().is_empty())
        {
            let own = t.docker.as_ref().is_some_and(|d| d.contains_key("enabled"));
            let path = if own {
                node_type_path(name).key("docker").key("image")
            } else {
                YamlPath::root().key("docker").key("image")
            };
            return Err(at(
                path,
                format!(
                    "container mode (`docker.enabled: true`) needs the image node type `{name}` runs in: \
                     set `docker.image` (or `docker.{}`)",
                    if head { "head_image" } else { "worker_image" }
                ),
            ));
        }
    }
    for remote in c.file_mounts.keys() {
        if !(remote.starts_with('/') || remote.starts_with('~')) {
            return Err(at(
                YamlPath::root().key("file_mounts").key(remote),
                "the remote path (the key) must be absolute or start with ~",
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, t) in c.runtime.types.iter().enumerate() {
        if !seen.insert(t) {
            return Err(at(
                YamlPath::root().key("runtime").key("types").index(i),
                format!("`{t}` is listed twice"),
            ));
        }
    }
    Ok(())
}

/// Names of clusters and workspaces become container, network and cloud resource names:
/// letters, digits, `-` and `_`, starting with a letter, at most 64 characters.
pub(crate) fn check_name(name: &str, key: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(at(
            YamlPath::root().key(key),
            format!(
                "`{name}` is not a valid name: use letters, digits, `-` and `_`, start with a letter, \
                 at most 64 characters"
            ),
        ))
    }
}

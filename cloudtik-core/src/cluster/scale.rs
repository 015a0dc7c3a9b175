//! `scale`: the resource request a [`ScaleRequest`] stands for.

use std::collections::BTreeMap;

use super::now_secs;
use crate::config::ClusterConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::operations::ScaleRequest;

use crate::scaler::inputs::node_type_marker;
use crate::state::{RequestBundle, ResourceRequest};

pub(super) fn count_bundle(name: &str, n: u32) -> Vec<RequestBundle> {
    if n == 0 {
        return vec![BTreeMap::from([(name.to_string(), 0.0)])];
    }
    (0..n)
        .map(|_| BTreeMap::from([(name.to_string(), 1.0)]))
        .collect()
}

/// The worker type `scale --workers` means.
pub(super) fn scale_worker_type(config: &ClusterConfig, given: Option<&str>) -> Result<String> {
    let workers: Vec<&String> = config
        .available_node_types
        .keys()
        .filter(|n| **n != config.head_node_type)
        .collect();
    match given {
        Some(t) if workers.iter().any(|w| *w == t) => Ok(t.to_string()),
        Some(t) => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "`{t}` is not a worker type of this cluster; worker types: {}",
                workers.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
        None if workers.len() == 1 => Ok(workers[0].clone()),
        None => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the cluster has several worker types ({}): say which with --worker-type",
                workers.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The resource request a [`ScaleRequest`] stands for in `config`'s cluster: `--workers N`
/// is `N` bundles of the worker type's marker resource ([`node_type_marker`]), `--cpus N`
/// and `--gpus N` are `N` bundles of one CPU or GPU, `--resources` one bundle per unit
/// of each integral amount, `--bundles` as given; zero clears the standing request of
/// that resource.
pub fn resource_request(config: &ClusterConfig, request: &ScaleRequest) -> Result<ResourceRequest> {
    let mut bundles: Vec<RequestBundle> = Vec::new();
    if let Some(n) = request.workers {
        let t = scale_worker_type(config, request.worker_type.as_deref())?;
        bundles.extend(count_bundle(&node_type_marker(&t), n));
    }
    if let Some(n) = request.cpus {
        bundles.extend(count_bundle("CPU", n));
    }
    if let Some(n) = request.gpus {
        bundles.extend(count_bundle("GPU", n));
    }
    if let Some(r) = &request.resources {
        for (name, amount) in r.iter() {
            if amount.fract() == 0.0 && amount <= 10_000.0 {
                bundles.extend(count_bundle(name, amount as u32));
            } else {
                bundles.push(BTreeMap::from([(name.to_string(), amount)]));
            }
        }
    }
    for b in &request.bundles {
        bundles.push(b.iter().map(|(k, v)| (k.to_string(), v)).collect());
    }
    if bundles.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "nothing to scale: give --workers, --cpus, --gpus, --resources or --bundles",
        ));
    }
    let r = ResourceRequest {
        request_time: now_secs(),
        requests: bundles,
        override_all: request.override_previous,
    };
    r.validate()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    fn config(worker_types: &[&str]) -> ClusterConfig {
        let mut yaml = String::from(
            "cluster_name: c\nworkspace_name: w\nprovider: {type: local}\nauth: {ssh_user: root}\n\
             available_node_types:\n  head.default: {node_config: {}, resources: {CPU: 4}}\n",
        );
        for t in worker_types {
            yaml.push_str(&format!(
                "  {t}: {{node_config: {{}}, resources: {{CPU: 2}}, max_workers: 10}}\n"
            ));
        }
        yaml.push_str("head_node_type: head.default\n");
        crate::config::ConfigLoader::new()
            .load_cluster_str("t.yaml", &yaml)
            .unwrap()
    }

    fn scale() -> ScaleRequest {
        ScaleRequest::default()
    }

    #[test]
    fn workers_are_marker_bundles_of_the_only_or_named_type() {
        // The provider defaults' worker.default joins any config (CloudTik's merge), so
        // the only worker type is worker.default itself.
        let c = config(&["worker.default"]);
        let r = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(3),
                ..scale()
            },
        )
        .unwrap();
        assert_eq!(r.requests.len(), 3);
        assert!(
            r.requests
                .iter()
                .all(|b| b.get("node-type:worker.default") == Some(&1.0) && b.len() == 1)
        );
        // Zero clears the type's request.
        let r = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(0),
                ..scale()
            },
        )
        .unwrap();
        assert_eq!(
            r.requests,
            vec![BTreeMap::from([("node-type:worker.default".to_string(), 0.0)])]
        );

        let c = config(&["worker.a", "worker.b"]);
        let e = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(1),
                ..scale()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--worker-type"), "{e:#}");
        let e = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(1),
                worker_type: Some("head.default".into()),
                ..scale()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("worker.a, worker.b, worker.default"),
            "{e:#}"
        );
        // As in CloudTik, a config naming one type of its own has two worker types.
        let e = resource_request(
            &config(&["worker.a"]),
            &ScaleRequest {
                workers: Some(1),
                ..scale()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--worker-type"), "{e:#}");
        let r = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(2),
                worker_type: Some("worker.b".into()),
                ..scale()
            },
        )
        .unwrap();
        assert!(r.requests.iter().all(|b| b.contains_key("node-type:worker.b")));
    }

    #[test]
    fn cpus_gpus_resources_and_bundles_become_bundles() {
        let c = config(&["w"]);
        let r = resource_request(
            &c,
            &ScaleRequest {
                cpus: Some(2),
                gpus: Some(1),
                resources: Some(Resources::from_pairs([("memory", 1.5), ("disk", 2.0)])),
                bundles: vec![Resources::from_pairs([("CPU", 4.0), ("GPU", 1.0)])],
                override_previous: true,
                ..scale()
            },
        )
        .unwrap();
        let count = |name: &str| {
            r.requests
                .iter()
                .filter(|b| b.contains_key(name) && b.len() == 1)
                .count()
        };
        assert_eq!(count("CPU"), 2);
        assert_eq!(count("GPU"), 1);
        assert_eq!(count("disk"), 2, "integral amounts are unit bundles");
        assert!(r.requests.iter().any(|b| b.get("memory") == Some(&1.5)));
        assert!(r.requests.iter().any(|b| b.len() == 2));
        assert!(r.override_all);
        let e = resource_request(&c, &scale()).unwrap_err();
        assert!(e.to_string().contains("nothing to scale"), "{e:#}");
        let e = resource_request(
            &c,
            &ScaleRequest {
                resources: Some(Resources::from_pairs([("CPU", f64::NAN)])),
                ..scale()
            },
        );
        assert!(e.is_err());
    }
}

//! CloudTik's built-in cluster templates for aws, gcp and azure: every one is built in
//! under CloudTik's name and loads with `from: <name>`, and every instance, machine and VM
//! type they name is one the cloud publishes, with the vCPUs, memory and GPUs their
//! comments state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cloudtik_core::config::template::built_in_template_names;
use serde_json::Value;

/// Every aws, gcp and azure template CloudTik ships (python/cloudtik/templates), by the
/// name users write after `from:`. `gcp/gpu/a100-40/utra-large` is CloudTik's spelling.
const CLOUDTIK_TEMPLATES: &[&str] = &[
    // aws: 31
    "aws/small",
    "aws/small-highmem",
    "aws/standard",
    "aws/standard-highmem",
    "aws/medium",
    "aws/medium-highmem",
    "aws/large",
    "aws/large-highmem",
    "aws/very-large",
    "aws/very-large-highmem",
    "aws/latest/small",
    "aws/latest/small-highmem",
    "aws/latest/standard",
    "aws/latest/standard-highmem",
    "aws/latest/medium",
    "aws/latest/medium-highmem",
    "aws/latest/large",
    "aws/latest/large-highmem",
    "aws/latest/very-large",
    "aws/latest/very-large-highmem",
    "aws/gpu/base",
    "aws/gpu/t4/very-small",
    "aws/gpu/t4/small",
    "aws/gpu/t4/standard",
    "aws/gpu/t4/large",
    "aws/gpu/t4/very-large",
    "aws/gpu/v100/standard",
    "aws/gpu/v100/large",
    "aws/gpu/v100/very-large",
    "aws/gpu/v100/very-large-x",
    "aws/gpu/a100/very-large",
    // gcp: 32
    "gcp/small",
    "gcp/small-highmem",
    "gcp/standard",
    "gcp/standard-highmem",
    "gcp/medium",
    "gcp/medium-highmem",
    "gcp/large",
    "gcp/large-highmem",
    "gcp/very-large",
    "gcp/very-large-highmem",
    "gcp/gpu/base",
    "gcp/gpu/base-2",
    "gcp/gpu/base-4",
    "gcp/gpu/base-8",
    "gcp/gpu/t4/very-small",
    "gcp/gpu/t4/small",
    "gcp/gpu/t4/standard",
    "gcp/gpu/t4/medium",
    "gcp/gpu/t4/large",
    "gcp/gpu/v100/standard",
    "gcp/gpu/v100/medium",
    "gcp/gpu/v100/large",
    "gcp/gpu/v100/very-large",
    "gcp/gpu/a100-40/standard",
    "gcp/gpu/a100-40/medium",
    "gcp/gpu/a100-40/large",
    "gcp/gpu/a100-40/very-large",
    "gcp/gpu/a100-40/utra-large",
    "gcp/gpu/a100-80/standard",
    "gcp/gpu/a100-80/medium",
    "gcp/gpu/a100-80/large",
    "gcp/gpu/a100-80/very-large",
    // azure: 32
    "azure/small",
    "azure/small-highmem",
    "azure/standard",
    "azure/standard-highmem",
    "azure/medium",
    "azure/medium-highmem",
    "azure/large",
    "azure/large-highmem",
    "azure/very-large",
    "azure/very-large-highmem",
    "azure/latest/small",
    "azure/latest/small-highmem",
    "azure/latest/standard",
    "azure/latest/standard-highmem",
    "azure/latest/medium",
    "azure/latest/medium-highmem",
    "azure/latest/large",
    "azure/latest/large-highmem",
    "azure/latest/very-large",
    "azure/latest/very-large-highmem",
    "azure/gpu/base",
    "azure/gpu/t4/very-small",
    "azure/gpu/t4/small",
    "azure/gpu/t4/standard",
    "azure/gpu/t4/large",
    "azure/gpu/v100/standard",
    "azure/gpu/v100/medium",
    "azure/gpu/v100/large",
    "azure/gpu/a100/standard",
    "azure/gpu/a100/medium",
    "azure/gpu/a100/large",
    "azure/gpu/a100/very-large",
];

/// An instance, machine or VM type as its cloud publishes it.
struct Fact {
    provider: &'static str,
    name: &'static str,
    vcpus: u32,
    /// Memory as the cloud states it: GiB on AWS and Azure, GB on GCP.
    memory: f64,
    gpus: u32,
    /// GPU model and memory per GPU, "" without GPUs.
    gpu: &'static str,
}

const fn fact(provider: &'static str, name: &'static str, vcpus: u32, memory: f64) -> Fact {
    Fact {
        provider,
        name,
        vcpus,
        memory,
        gpus: 0,
        gpu: "",
    }
}

const fn gpu_fact(
    provider: &'static str,
    name: &'static str,
    vcpus: u32,
    memory: f64,
    gpus: u32,
    gpu: &'static str,
) -> Fact {
    Fact {
        provider,
        name,
        vcpus,
        memory,
        gpus,
        gpu,
    }
}

/// The types the templates use, checked one by one against the clouds' published tables.
const FACTS: &[Fact] = &[
    // AWS: Amazon EC2 User Guide, "Hardware specifications" of the general purpose, memory
    // optimized and accelerated computing instance pages (the guide's source,
    // awsdocs/amazon-ec2-user-guide, 2023-05): default vCPUs, memory (GiB), GPUs. GPU models
    // from the same accelerated computing page (G4dn: NVIDIA T4, 16 GiB each; P3: V100, up to
    // 32 GiB each, 16 GiB on p3.2xlarge/8xlarge/16xlarge per AWS's P3 launch table; P4d:
    // A100, 8 x 40 GB per AWS's P4d launch post).
    fact("aws", "m5.xlarge", 4, 16.0),
    fact("aws", "m5.2xlarge", 8, 32.0),
    fact("aws", "m5.4xlarge", 16, 64.0),
    fact("aws", "m5.8xlarge", 32, 128.0),
    fact("aws", "m5.16xlarge", 64, 256.0),
    fact("aws", "m5.24xlarge", 96, 384.0),
    fact("aws", "r5.xlarge", 4, 32.0),
    fact("aws", "r5.2xlarge", 8, 64.0),
    fact("aws", "r5.8xlarge", 32, 256.0),
    fact("aws", "r5.16xlarge", 64, 512.0),
    fact("aws", "r5.24xlarge", 96, 768.0),
    fact("aws", "m6i.xlarge", 4, 16.0),
    fact("aws", "m6i.2xlarge", 8, 32.0),
    fact("aws", "m6i.8xlarge", 32, 128.0),
    fact("aws", "m6i.16xlarge", 64, 256.0),
    fact("aws", "m6i.32xlarge", 128, 512.0),
    fact("aws", "r6i.xlarge", 4, 32.0),
    fact("aws", "r6i.2xlarge", 8, 64.0),
    fact("aws", "r6i.8xlarge", 32, 256.0),
    fact("aws", "r6i.16xlarge", 64, 512.0),
    fact("aws", "r6i.32xlarge", 128, 1024.0),
    gpu_fact("aws", "g4dn.xlarge", 4, 16.0, 1, "T4 16GB"),
    gpu_fact("aws", "g4dn.2xlarge", 8, 32.0, 1, "T4 16GB"),
    gpu_fact("aws", "g4dn.8xlarge", 32, 128.0, 1, "T4 16GB"),
    gpu_fact("aws", "g4dn.12xlarge", 48, 192.0, 4, "T4 16GB"),
    gpu_fact("aws", "g4dn.metal", 96, 384.0, 8, "T4 16GB"),
    gpu_fact("aws", "p3.2xlarge", 8, 61.0, 1, "V100 16GB"),
    gpu_fact("aws", "p3.8xlarge", 32, 244.0, 4, "V100 16GB"),
    gpu_fact("aws", "p3.16xlarge", 64, 488.0, 8, "V100 16GB"),
    gpu_fact("aws", "p3dn.24xlarge", 96, 768.0, 8, "V100 32GB"),
    gpu_fact("aws", "p4d.24xlarge", 96, 1152.0, 8, "A100 40GB"),
    // GCP: Google Cloud docs, the N1, N2 and A2 machine type tables of "Configure compute
    // resources for inference" (docs.cloud.google.com), n1-standard-64 from Compute Engine
    // "Machine types"; vCPUs, memory (GB), GPUs (A2: A100 40GB, A2 Ultra: A100 80GB).
    fact("gcp", "n2-standard-4", 4, 16.0),
    fact("gcp", "n2-standard-8", 8, 32.0),
    fact("gcp", "n2-standard-16", 16, 64.0),
    fact("gcp", "n2-standard-32", 32, 128.0),
    fact("gcp", "n2-standard-64", 64, 256.0),
    fact("gcp", "n2-standard-128", 128, 512.0),
    fact("gcp", "n2-highmem-4", 4, 32.0),
    fact("gcp", "n2-highmem-8", 8, 64.0),
    fact("gcp", "n2-highmem-32", 32, 256.0),
    fact("gcp", "n2-highmem-64", 64, 512.0),
    fact("gcp", "n2-highmem-128", 128, 864.0),
    fact("gcp", "n1-standard-4", 4, 15.0),
    fact("gcp", "n1-standard-8", 8, 30.0),
    fact("gcp", "n1-standard-16", 16, 60.0),
    fact("gcp", "n1-standard-32", 32, 120.0),
    fact("gcp", "n1-standard-64", 64, 240.0),
    gpu_fact("gcp", "a2-highgpu-1g", 12, 85.0, 1, "A100 40GB"),
    gpu_fact("gcp", "a2-highgpu-2g", 24, 170.0, 2, "A100 40GB"),
    gpu_fact("gcp", "a2-highgpu-4g", 48, 340.0, 4, "A100 40GB"),
    gpu_fact("gcp", "a2-highgpu-8g", 96, 680.0, 8, "A100 40GB"),
    gpu_fact("gcp", "a2-megagpu-16g", 96, 1360.0, 16, "A100 40GB"),
    gpu_fact("gcp", "a2-ultragpu-1g", 12, 170.0, 1, "A100 80GB"),
    gpu_fact("gcp", "a2-ultragpu-2g", 24, 340.0, 2, "A100 80GB"),
    gpu_fact("gcp", "a2-ultragpu-4g", 48, 680.0, 4, "A100 80GB"),
    gpu_fact("gcp", "a2-ultragpu-8g", 96, 1360.0, 8, "A100 80GB"),
    // Azure: Microsoft Learn, "Sizes in series" tables of the Dsv4, Dasv4, Dsv5, Esv4,
    // Easv4, Esv5, NCasT4_v3, NCv3, NC_A100_v4 and NDm_A100_v4 size pages
    // (MicrosoftDocs/azure-compute-docs, articles/virtual-machines/sizes): vCPUs, memory
    // (GiB), accelerators and accelerator memory. NCv3 was retired on 2025-09-30.
    fact("azure", "Standard_D4s_v4", 4, 16.0),
    fact("azure", "Standard_D8s_v4", 8, 32.0),
    fact("azure", "Standard_D16s_v4", 16, 64.0),
    fact("azure", "Standard_D32s_v4", 32, 128.0),
    fact("azure", "Standard_D64s_v4", 64, 256.0),
    fact("azure", "Standard_D96as_v4", 96, 384.0),
    fact("azure", "Standard_E4s_v4", 4, 32.0),
    fact("azure", "Standard_E8s_v4", 8, 64.0),
    fact("azure", "Standard_E32s_v4", 32, 256.0),
    fact("azure", "Standard_E64s_v4", 64, 504.0),
    fact("azure", "Standard_E96as_v4", 96, 672.0),
    fact("azure", "Standard_D4s_v5", 4, 16.0),
    fact("azure", "Standard_D8s_v5", 8, 32.0),
    fact("azure", "Standard_D32s_v5", 32, 128.0),
    fact("azure", "Standard_D64s_v5", 64, 256.0),
    fact("azure", "Standard_D96s_v5", 96, 384.0),
    fact("azure", "Standard_E4s_v5", 4, 32.0),
    fact("azure", "Standard_E8s_v5", 8, 64.0),
    fact("azure", "Standard_E32s_v5", 32, 256.0),
    fact("azure", "Standard_E64s_v5", 64, 512.0),
    fact("azure", "Standard_E96s_v5", 96, 672.0),
    gpu_fact("azure", "Standard_NC4as_T4_v3", 4, 28.0, 1, "T4 16GB"),
    gpu_fact("azure", "Standard_NC8as_T4_v3", 8, 56.0, 1, "T4 16GB"),
    gpu_fact("azure", "Standard_NC16as_T4_v3", 16, 110.0, 1, "T4 16GB"),
    gpu_fact("azure", "Standard_NC64as_T4_v3", 64, 440.0, 4, "T4 16GB"),
    gpu_fact("azure", "Standard_NC6s_v3", 6, 112.0, 1, "V100 16GB"),
    gpu_fact("azure", "Standard_NC12s_v3", 12, 224.0, 2, "V100 16GB"),
    gpu_fact("azure", "Standard_NC24s_v3", 24, 448.0, 4, "V100 16GB"),
    gpu_fact("azure", "Standard_NC24ads_A100_v4", 24, 220.0, 1, "A100 80GB"),
    gpu_fact("azure", "Standard_NC48ads_A100_v4", 48, 440.0, 2, "A100 80GB"),
    gpu_fact("azure", "Standard_NC96ads_A100_v4", 96, 880.0, 4, "A100 80GB"),
    gpu_fact("azure", "Standard_ND96amsr_A100_v4", 96, 1900.0, 8, "A100 80GB"),
];

/// GPUs GCP attaches to N1 machine types (`guestAccelerators[].acceleratorType`): Compute
/// Engine "GPU platforms" (nvidia-tesla-t4: NVIDIA T4, 16 GB GDDR6; nvidia-tesla-v100:
/// NVIDIA V100, 16 GB HBM2).
const GCP_ACCELERATORS: &[(&str, &str)] =
    &[("nvidia-tesla-t4", "T4 16GB"), ("nvidia-tesla-v100", "V100 16GB")];

/// Types CloudTik's templates name that the cloud does not offer; our templates use the
/// size in parentheses instead.
const NOT_OFFERED: &[(&str, &str)] = &[
    // azure/very-large: the Dsv4 series stops at 64 vCPUs.
    ("Standard_D96s_v4", "Standard_D96as_v4"),
    // azure/very-large-highmem: Esv4 has no 96-vCPU size.
    ("Standard_E96s_v4", "Standard_E96as_v4"),
];

fn facts_of(provider: &str, name: &str) -> Option<&'static Fact> {
    FACTS.iter().find(|f| f.provider == provider && f.name == name)
}

fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cloudtik-core/templates")
}

/// `(name, text)` of every template file of a provider except its defaults.
fn template_files(provider: &str) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .with_extension("")
                    .to_str()
                    .unwrap()
                    .replace('\\', "/");
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let root = templates_dir();
    let mut out = Vec::new();
    walk(&root, &root.join(provider), &mut out);
    out.retain(|(name, _)| !name.ends_with("/defaults"));
    out.sort();
    out
}

/// The types a template file sets, by node type: `(node type, type name, GCP accelerators)`.
fn types_set(provider: &str, name: &str, text: &str) -> Vec<(String, String, Vec<String>)> {
    let doc = cloudtik_core::config::Document::parse(name, text).unwrap();
    assert_eq!(
        doc.value["provider"]["type"], provider,
        "{name}: provider.type must be {provider}"
    );
    let mut out = Vec::new();
    let Some(Value::Object(types)) = doc.value.get("available_node_types") else {
        return out;
    };
    for (node_type, t) in types {
        let nc = &t["node_config"];
        let (ty, accelerators) = match provider {
            "aws" => (nc.get("InstanceType"), vec![]),
            "gcp" => (
                nc.get("machineType"),
                nc.get("guestAccelerators")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|g| g["acceleratorType"].as_str().unwrap().to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "azure" => (nc.pointer("/azure_arm_parameters/vmSize"), vec![]),
            other => panic!("{other}"),
        };
        if let Some(ty) = ty {
            out.push((node_type.clone(), ty.as_str().unwrap().to_string(), accelerators));
        }
    }
    out
}

/// The leading comment of a template, as one line.
fn leading_comment(text: &str) -> String {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `comment` names `ty` next to its vCPUs and memory: "(ty: 8 vCPUs, 32 GiB)",
/// "8-vCPU, 32 GiB ... (ty)" or "8 vCPUs, 32 GiB (ty)".
fn comment_states(comment: &str, ty: &str, f: &Fact, unit: &str) -> bool {
    let sizes = [
        format!("{} vCPUs, {} {unit}", f.vcpus, f.memory),
        format!("{}-vCPU, {} {unit}", f.vcpus, f.memory),
    ];
    comment.match_indices(ty).any(|(i, _)| {
        let after = &comment[i + ty.len()..];
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return false;
        }
        let before = &comment[..i];
        let before = &before[before.len().saturating_sub(70)..];
        let after = &after[..after.len().min(40)];
        sizes
            .iter()
            .any(|s| (after.starts_with(':') && after.contains(s.as_str())) || before.contains(s.as_str()))
    })
}

#[test]
fn every_cloudtik_template_is_built_in_under_its_name() {
    let expected: BTreeSet<&str> = CLOUDTIK_TEMPLATES.iter().copied().collect();
    assert_eq!(expected.len(), 95);
    let mut per_provider = BTreeMap::new();
    for name in &expected {
        *per_provider.entry(name.split('/').next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        per_provider,
        BTreeMap::from([("aws", 31), ("azure", 32), ("gcp", 32)])
    );
    let built_in: BTreeSet<&str> = built_in_template_names().into_iter().collect();
    let cloud: BTreeSet<&str> = built_in
        .iter()
        .copied()
        .filter(|n| ["aws/", "gcp/", "azure/"].iter().any(|p| n.starts_with(p)))
        .collect();
    assert_eq!(
        cloud, expected,
        "the built-in aws/gcp/azure templates are CloudTik's, no more, no less"
    );
    let others: Vec<&str> = built_in.difference(&cloud).copied().collect();
    assert_eq!(others, ["virtual/standard"]);
    // and the files on disk are what the crate built in
    for provider in ["aws", "gcp", "azure"] {
        for (name, _) in template_files(provider) {
            assert!(built_in.contains(name.as_str()), "{name} is not built in");
        }
    }
}

#[test]
fn every_cloudtik_template_loads_with_from() {
    let loader = cloudtik_providers::config_loader().with_env_template_dirs(false);
    for name in CLOUDTIK_TEMPLATES {
        let provider = name.split('/').next().unwrap();
        let provider_keys = match provider {
            "aws" => "  region: us-east-1\n",
            "gcp" => {
                "  region: us-central1\n  availability_zone: us-central1-a\n  project_id: my-project-123456\n"
            }
            "azure" => "  location: westus2\n  subscription_id: 00000000-0000-0000-0000-000000000000\n",
            other => panic!("{other}"),
        };
        let yaml = format!(
            "from: {name}\ncluster_name: c\nworkspace_name: w\nprovider:\n  type: {provider}\n{provider_keys}"
        );
        let c = loader
            .load_cluster_str(&format!("{name}.yaml"), &yaml)
            .unwrap_or_else(|e| panic!("from: {name}: {e}"));
        assert_eq!(c.provider.provider_type, provider, "{name}");
        assert_eq!(c.head_node_type, "head.default", "{name}");
        let type_of = |node_type: &str| -> Option<String> {
            let nc = &c.available_node_types.get(node_type)?.node_config;
            let v = match provider {
                "aws" => nc.get("InstanceType"),
                "gcp" => nc.get("machineType"),
                _ => nc.get("azure_arm_parameters").and_then(|p| p.get("vmSize")),
            }?;
            Some(v.as_str()?.to_string())
        };
        // The head comes from the template chain, whatever the provider defaults say.
        let head = type_of("head.default").unwrap_or_else(|| panic!("{name}: the head has no type"));
        assert!(facts_of(provider, &head).is_some(), "{name}: head type {head}");
        // So do the workers, except on the GPU bases that only set the head.
        if !name.ends_with("/gpu/base") {
            let worker =
                type_of("worker.default").unwrap_or_else(|| panic!("{name}: the worker has no type"));
            assert!(
                facts_of(provider, &worker).is_some(),
                "{name}: worker type {worker}"
            );
            assert_eq!(c.min_workers_of("worker.default"), 1, "{name}");
        }
    }
}

#[test]
fn every_type_the_templates_name_is_a_published_one() {
    let mut used = BTreeSet::new();
    for (provider, unit) in [("aws", "GiB"), ("gcp", "GB"), ("azure", "GiB")] {
        let files = template_files(provider);
        assert!(!files.is_empty());
        for (name, text) in files {
            let comment = leading_comment(&text);
            assert!(
                !comment.is_empty(),
                "{name}: the first lines say what the template is"
            );
            for (bad, instead) in NOT_OFFERED {
                assert!(
                    !text.contains(&format!(": {bad}")),
                    "{name}: {bad} is not offered; use {instead}"
                );
            }
            for (node_type, ty, accelerators) in types_set(provider, &name, &text) {
                let f = facts_of(provider, &ty).unwrap_or_else(|| {
                    panic!("{name} {node_type}: {ty} is not in the table of checked {provider} types")
                });
                used.insert((provider, ty.clone()));
                assert!(
                    comment_states(&comment, &ty, f, unit),
                    "{name}: the comment should state {ty} with {} vCPUs, {} {unit}: {comment}",
                    f.vcpus,
                    f.memory
                );
                let mut gpu = f.gpu;
                for a in &accelerators {
                    gpu = GCP_ACCELERATORS
                        .iter()
                        .find(|(n, _)| n == a)
                        .unwrap_or_else(|| panic!("{name}: accelerator {a} is not in the table"))
                        .1;
                }
                // gpu/<model>/<size>: the workers carry that GPU model
                let parts: Vec<&str> = name.split('/').collect();
                if node_type == "worker.default" && parts.len() == 4 && parts[1] == "gpu" {
                    let want = match parts[2] {
                        "t4" => "T4",
                        "v100" => "V100",
                        "a100" => "A100",
                        "a100-40" => "A100 40GB",
                        "a100-80" => "A100 80GB",
                        other => panic!("{name}: unknown GPU family {other}"),
                    };
                    assert!(gpu.starts_with(want), "{name}: {ty} has {gpu}, not {want}");
                    assert!(f.gpus > 0 || !accelerators.is_empty(), "{name}: {ty} has no GPU");
                }
            }
        }
    }
    // no stale rows: every checked type is used by a template
    for f in FACTS {
        assert!(
            used.contains(&(f.provider, f.name.to_string())),
            "{} {} is in the table but no template uses it",
            f.provider,
            f.name
        );
    }
}

//! Malformed configs: each is refused with an error that names the YAML path of the
//! problem (and its line where the parser knows it) and says what was expected.

use cloudtik_core::ErrorKind;

const BASE: &str = "cluster_name: demo\nworkspace_name: ws\nprovider:\n  type: virtual\n";

fn with_base(rest: &str) -> Vec<u8> {
    format!("{BASE}{rest}").into_bytes()
}

struct Case {
    name: &'static str,
    yaml: Vec<u8>,
    path: &'static str,
    says: &'static str,
    line: Option<usize>,
}

fn case(name: &'static str, yaml: impl Into<Vec<u8>>, path: &'static str, says: &'static str) -> Case {
    Case {
        name,
        yaml: yaml.into(),
        path,
        says,
        line: None,
    }
}

fn at_line(mut c: Case, line: usize) -> Case {
    c.line = Some(line);
    c
}

fn cases(template_dir: &std::path::Path) -> Vec<Case> {
    let _ = template_dir;
    let deep = format!("{BASE}options:\n  x: {}{}\n", "[".repeat(100), "]".repeat(100));
    let wide_alias = {
        let mut s = String::from(BASE);
        s += "options:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x]\n";
        for i in 1..8 {
            let p = i - 1;
            s += &format!(
                "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            );
        }
        s
    };
    vec![
        case("empty file", "", "", "empty"),
        case("only a comment", "# nothing here\n", "", "empty"),
        case("top level is a list", "- a\n- b\n", "", "expected a mapping"),
        case("top level is text", "just text\n", "", "expected a mapping"),
        at_line(
            case(
                "syntax error",
                format!("{BASE}max_workers: [1, 2\n"),
                "",
                "YAML syntax error",
            ),
            6,
        ),
        at_line(
            case(
                "tab indentation",
                format!("{BASE}auth:\n\tssh_user: x\n"),
                "",
                "YAML syntax error",
            ),
            6,
        ),
        at_line(
            case(
                "non-UTF-8 bytes",
                [BASE.as_bytes(), b"setup_commands: [\"\xff\xfe\"]\n"].concat(),
                "",
                "not valid UTF-8",
            ),
            5,
        ),
        case(
            "several documents",
            format!("{BASE}---\ncluster_name: other\n"),
            "",
            "one YAML document",
        ),
        at_line(
            case(
                "duplicate key",
                format!("{BASE}max_workers: 1\nmax_workers: 2\n"),
                "max_workers",
                "duplicate key",
            ),
            6,
        ),
        case("deeply nested garbage", deep, "options.x", "nesting deeper"),
        case("alias bomb garbage", wide_alias, "options", "aliases expand"),
        case(
            "unknown alias",
            format!("{BASE}max_workers: *nothing\n"),
            "",
            "YAML syntax error",
        ),
        at_line(
            case(
                "unknown top-level key",
                with_base("max_worker: 3\n"),
                "max_worker",
                "unknown key `max_worker`",
            ),
            5,
        ),
        case(
            "missing cluster_name",
            "workspace_name: ws\nprovider: {type: virtual}\n",
            "cluster_name",
            "missing required key",
        ),
        case(
            "missing provider type",
            "cluster_name: c\nworkspace_name: ws\nprovider: {region: x}\n",
            "provider.type",
            "missing",
        ),
        at_line(
            case(
                "unknown provider type",
                "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: openstack\n",
                "provider.type",
                "unknown provider type `openstack`",
            ),
            4,
        ),
        case(
            "provider type not text",
            "cluster_name: c\nworkspace_name: ws\nprovider: {type: [aws]}\n",
            "provider.type",
            "text",
        ),
        at_line(
            case(
                "max_workers is text",
                with_base("max_workers: many\n"),
                "max_workers",
                "whole number",
            ),
            5,
        ),
        case(
            "max_workers negative",
            with_base("max_workers: -1\n"),
            "max_workers",
            "whole number",
        ),
        case(
            "max_workers fractional",
            with_base("max_workers: 2.5\n"),
            "max_workers",
            "whole number",
        ),
        case(
            "setup_commands not a list",
            with_base("setup_commands: echo hi\n"),
            "setup_commands",
            "a list",
        ),
        case(
            "setup command not text",
            with_base("setup_commands:\n  - [echo]\n"),
            "setup_commands[0]",
            "string",
        ),
        case(
            "auth is a list",
            with_base("auth: [root]\n"),
            "auth",
            "expected a mapping",
        ),
        case(
            "ssh_port out of range",
            with_base("auth:\n  ssh_port: 70000\n"),
            "auth.ssh_port",
            "65535",
        ),
        case(
            "ssh_port zero",
            with_base("auth:\n  ssh_port: 0\n"),
            "auth.ssh_port",
            "1 to 65535",
        ),
        case(
            "unknown auth key",
            with_base("auth:\n  ssh_password: x\n"),
            "auth.ssh_password",
            "unknown key",
        ),
        at_line(
            case(
                "head type missing",
                with_base("available_node_types:\n  worker:\n    node_config: {}\nhead_node_type: head\n"),
                "head_node_type",
                "`head` is not one of available_node_types (head.default, worker, worker.default)",
            ),
            8,
        ),
        case(
            "head type emptied",
            with_base("available_node_types:\n  worker:\n    node_config: {}\nhead_node_type:\n"),
            "head_node_type",
            "found null, expected a string",
        ),
        at_line(
            case(
                "min above max",
                with_base(
                    "available_node_types:\n  head:\n    node_config: {}\n  worker:\n    node_config: {}\n    min_workers: 5\n    max_workers: 2\nhead_node_type: head\n",
                ),
                "available_node_types.worker.min_workers",
                "min_workers (5) is greater than max_workers (2)",
            ),
            10,
        ),
        case(
            "sum of mins above global max",
            with_base(
                "max_workers: 3\navailable_node_types:\n  head:\n    node_config: {}\n  a:\n    node_config: {}\n    min_workers: 2\n  b:\n    node_config: {}\n    min_workers: 2\nhead_node_type: head\n",
            ),
            "max_workers",
            "smaller than the sum of min_workers",
        ),
        case(
            "head type with workers",
            with_base(
                "available_node_types:\n  head:\n    node_config: {}\n    min_workers: 1\nhead_node_type: head\n",
            ),
            "available_node_types.head.min_workers",
            "head's node type",
        ),
        case(
            "node_config missing",
            with_base("available_node_types:\n  head: {}\nhead_node_type: head\n"),
            "available_node_types.head.node_config",
            "missing required key",
        ),
        case(
            "node_config not a mapping",
            with_base("available_node_types:\n  head:\n    node_config: m5.large\nhead_node_type: head\n"),
            "available_node_types.head.node_config",
            "mapping",
        ),
        case(
            "dotted type name keeps its quotes",
            with_base(
                "available_node_types:\n  worker.cpu:\n    node_config: {}\n    min_workers: x\n  head:\n    node_config: {}\nhead_node_type: head\n",
            ),
            "available_node_types.\"worker.cpu\".min_workers",
            "whole number",
        ),
        case(
            "unknown node type key",
            with_base(
                "available_node_types:\n  head:\n    node_config: {}\n    min_worker: 1\nhead_node_type: head\n",
            ),
            "available_node_types.head.min_worker",
            "unknown key",
        ),
        case(
            "resources not numbers",
            with_base(
                "available_node_types:\n  head:\n    node_config: {}\n    resources: {CPU: four}\nhead_node_type: head\n",
            ),
            "available_node_types.head.resources.CPU",
            "number",
        ),
        case(
            "negative resources",
            with_base(
                "available_node_types:\n  head:\n    node_config: {}\n    resources: {CPU: -4}\nhead_node_type: head\n",
            ),
            "available_node_types.head.resources.CPU",
            "0 or more",
        ),
        case(
            "upscaling_speed zero",
            with_base("upscaling_speed: 0\n"),
            "upscaling_speed",
            "greater than 0",
        ),
        case(
            "idle timeout negative",
            with_base("options:\n  idle_timeout_minutes: -1\n"),
            "options.idle_timeout_minutes",
            "0 (never) or more",
        ),
        case(
            "nan number",
            with_base("upscaling_speed: .nan\n"),
            "upscaling_speed",
            "not a supported number",
        ),
        at_line(
            case(
                "from not text",
                with_base("from: [aws/standard]\n"),
                "from",
                "template name",
            ),
            5,
        ),
        at_line(
            case(
                "from unknown template",
                with_base("from: virtual/huge\n"),
                "from",
                "template `virtual/huge` not found",
            ),
            5,
        ),
        case(
            "cyclic from",
            "from: loop-a\ncluster_name: c\nworkspace_name: ws\nprovider: {type: virtual}\n",
            "from",
            "cycle: loop-a -> loop-b -> loop-a",
        ),
        case(
            "self from",
            "from: self-loop\ncluster_name: c\nworkspace_name: ws\nprovider: {type: virtual}\n",
            "from",
            "cycle: self-loop -> self-loop",
        ),
        case(
            "append to a non-list",
            with_base("auth++: [x]\n"),
            "auth++",
            "not a list",
        ),
        case(
            "append with a non-list",
            with_base("setup_commands++: echo\n"),
            "setup_commands++",
            "must be a list",
        ),
        case(
            "plus on both sides",
            with_base("++setup_commands++: [echo]\n"),
            "++setup_commands++",
            "either before or after",
        ),
        case(
            "docker enabled without an image",
            with_base("docker:\n  enabled: true\n"),
            "docker.image",
            "needs the image",
        ),
        case(
            "docker enabled not a bool",
            with_base("docker:\n  enabled: yes-please\n"),
            "docker.enabled",
            "boolean",
        ),
        case(
            "relative file mount target",
            with_base("file_mounts:\n  data: /tmp\n"),
            "file_mounts.data",
            "absolute",
        ),
        case(
            "bad cluster name",
            "cluster_name: 'my cluster!'\nworkspace_name: ws\nprovider: {type: virtual}\n",
            "cluster_name",
            "not a valid name",
        ),
        case(
            "node runtime not in cluster runtimes",
            with_base(
                "runtime:\n  types: [spark]\navailable_node_types:\n  head:\n    node_config: {}\n    runtime:\n      types: [ray]\nhead_node_type: head\n",
            ),
            "available_node_types.head.runtime.types[0]",
            "not in the cluster's runtime.types",
        ),
        case(
            "runtime listed twice",
            with_base("runtime:\n  types: [spark, spark]\n"),
            "runtime.types[1]",
            "listed twice",
        ),
        case(
            "mapping as a key",
            with_base("? [a, b]\n: c\n"),
            "",
            "plain value",
        ),
        case(
            "aws without region",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: aws\n  region: ''\n",
            "provider.region",
            "region",
        ),
        case(
            "aws bad ssh source",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: aws\n  allowed_ssh_sources: [everyone]\n",
            "provider.allowed_ssh_sources[0]",
            "CIDR",
        ),
        case(
            "aws working VPC that is no VPC id",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: aws\n  region: us-east-1\n  use_internal_ips: true\n  working_vpc_id: default\n",
            "provider.working_vpc_id",
            "not a VPC id",
        ),
        case(
            "gcp without project",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: gcp\n",
            "provider.project_id",
            "missing required key",
        ),
        case(
            "gcp zone outside region",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: gcp\n  project_id: p\n  availability_zone: europe-west1-b\n",
            "provider.availability_zone",
            "not in region",
        ),
        case(
            "azure without subscription",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: azure\n",
            "provider.subscription_id",
            "missing required key",
        ),
        case(
            "local without nodes",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: local\n",
            "provider.nodes",
            "missing required key",
        ),
        case(
            "local duplicate host",
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: local\n  nodes: [{ip: 10.0.0.1}, {ip: 10.0.0.1}]\n",
            "provider.nodes[1].ip",
            "listed twice",
        ),
    ]
}

#[test]
fn malformed_configs_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("loop-a.yaml"), "from: loop-b\n").unwrap();
    std::fs::write(dir.path().join("loop-b.yaml"), "from: loop-a\n").unwrap();
    std::fs::write(dir.path().join("self-loop.yaml"), "from: self-loop\n").unwrap();
    let loader = cloudtik_providers::config_loader()
        .with_env_template_dirs(false)
        .with_template_dir(dir.path());
    let cases = cases(dir.path());
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for c in &cases {
        let file = dir.path().join("cluster.yaml");
        std::fs::write(&file, &c.yaml).unwrap();
        match loader.load_cluster_file(&file) {
            Ok(_) => failures.push(format!("{}: loaded, expected an error", c.name)),
            Err(e) => {
                let loc = e.location();
                let problems = [
                    (e.kind() != ErrorKind::InvalidConfig).then(|| format!("kind {:?}", e.kind())),
                    (!loc.is_some_and(|l| {
                        l.path == c.path || (c.name.contains("garbage") && l.path.starts_with(c.path))
                    }))
                    .then(|| format!("path {:?}, expected {:?}", loc.map(|l| &l.path), c.path)),
                    (!e.to_string().contains(c.says)).then(|| format!("message lacks {:?}", c.says)),
                    (c.line.is_some() && loc.and_then(|l| l.line) != c.line)
                        .then(|| format!("line {:?}, expected {:?}", loc.and_then(|l| l.line), c.line)),
                    (loc.and_then(|l| l.file.as_ref()).is_none()).then(|| "no file named".to_string()),
                ];
                let problems: Vec<String> = problems.into_iter().flatten().collect();
                if !problems.is_empty() {
                    failures.push(format!("{}: {} -- error was: {e}", c.name, problems.join("; ")));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

//! Bad input on the AWS cloud twin (`tests/twin/`), through the `cloudtik` CLI: each
//! failed `start` names the node, the step and what to do, says what it kept, and
//! `stop` then leaves nothing.
//!
//! * A failing bootstrap step: the `cloudtik-node` given for the nodes' architecture
//!   (`CLOUDTIK_NODE_BINARY_X86_64`) does not run there.
//! * An unreachable instance: SSH on a port the instance does not listen on
//!   (`auth.ssh_port`), so no SSH answers within the timeout (the CLI's head SSH wait,
//!   2 minutes).
//!
//! Needs Docker, the twin image and moto; without them the test fails under `CI=true`.
#![cfg(feature = "aws")]

mod twin;

use twin::aws::{AwsTwin, AwsTwinOptions};
use twin::cli::{AMI, Cli, aws_provider};

fn cluster_yaml(id: u32, ws: &str, provider: &str, extra_auth: &str) -> String {
    format!(
        "cluster_name: faults{id}\nworkspace_name: {ws}\n{provider}auth:\n  ssh_user: ubuntu\n{extra_auth}\
         head_node_type: head.default\navailable_node_types:\n  head.default:\n    node_config: {{InstanceType: t3.medium, ImageId: {AMI}}}\n\
         \x20 worker.default:\n    min_workers: 0\n    max_workers: 1\n    node_config: {{InstanceType: t3.medium, ImageId: {AMI}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_starts_name_the_node_the_step_and_what_to_do_and_leave_nothing() {
    let Some(twin) = AwsTwin::start(None, AwsTwinOptions::default()).await else {
        return;
    };
    let working_vpc = twin.create_working_vpc().await;
    let cli = Cli::new(twin.endpoint_url());
    let id = std::process::id() % 100_000;
    let ws = format!("faults-ws-{id}");
    let provider = aws_provider(&cli.endpoint, &working_vpc);
    let ws_file = cli.file("workspace.yaml", &format!("workspace_name: {ws}\n{provider}"));
    let ws_path = ws_file.to_str().unwrap();
    cli.run_ok(&["workspace", "create", ws_path, "--yes"]);

    // A node program that does not run on the nodes.
    let garbage = cli.file("not-a-program", "this is not an ELF file\n");
    let file = cli.file("broken.yaml", &cluster_yaml(id, &ws, &provider, ""));
    let f = file.to_str().unwrap();
    let out = cli
        .cmd()
        .env("CLOUDTIK_NODE_BINARY_X86_64", &garbage)
        .args(["start", f, "--yes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    let node = twin
        .instances()
        .first()
        .map(|i| i.id.clone())
        .expect("the head instance");
    for needle in [
        node.as_str(),
        "install cloudtik-node",
        "does not run there",
        "bootstrapping",
        "cloudtik stop",
    ] {
        assert!(err.contains(needle), "`{needle}` missing in:\n{err}");
    }
    cli.run_ok(&["stop", f, "--yes"]);
    assert!(twin.instances().is_empty(), "{:?}", twin.instances());

    // No SSH answers: the wait ends with what to check.
    let file = cli.file(
        "unreachable.yaml",
        &cluster_yaml(id, &ws, &provider, "  ssh_port: 2222\n"),
    );
    let f = file.to_str().unwrap();
    let (code, _, err) = cli.run(&["start", f, "--yes"]);
    assert_ne!(code, 0, "{err}");
    let node = twin
        .instances()
        .first()
        .map(|i| i.id.clone())
        .expect("the head instance");
    for needle in [
        node.as_str(),
        "did not answer over SSH",
        "waiting-for-ssh",
        "security group",
        "cloudtik stop",
    ] {
        assert!(err.contains(needle), "`{needle}` missing in:\n{err}");
    }
    cli.run_ok(&["stop", f, "--yes"]);
    assert!(twin.instances().is_empty(), "{:?}", twin.instances());

    cli.run_ok(&["workspace", "delete", ws_path, "--yes"]);
    assert!(twin.failures().is_empty(), "{:?}", twin.failures());
    twin.cleanup().expect("the twin cleans up");
}

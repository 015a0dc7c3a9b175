//! Node bootstrap ([`NodeBootstrap`]) on machines from a stock image: containers of the
//! cloud twin's image (`scripts/build-twin-image.sh`: Debian with sshd and sudo only),
//! reached over SSH as a cloud's nodes are.
//!
//! * A stock node as a sudo user gets this build's `cloudtik-node` and `redis-server`;
//!   a second bootstrap does nothing.
//! * A node holding an older program is upgraded.
//! * A user that is not root and has no sudo gets an error naming the node, the user and
//!   what to do; nothing is installed.
//! * A package that cannot be installed fails the `install packages` step, naming the
//!   node and what to check.
//!
//! Needs Docker and the twin image (built when missing); without them the test fails
//! under `CI=true` and is skipped (saying so) otherwise.

mod twin;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::ErrorKind;
use cloudtik_core::command::{CommandRunner, CommandRunnerExt, SshOptions, SshRunner};
use cloudtik_core::updater::{NodeBinary, NodeBootstrap, NodePackage};
use twin::{InstanceSpec, TwinHost, TwinNetwork, docker, docker_available, ensure_image, required};

const NODE_BINARY: &str = env!("CARGO_BIN_EXE_cloudtik-node");
const INSTALL_PATH: &str = "/usr/local/bin/cloudtik-node";

fn key_pair(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("id");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(dir.join("id.pub")).unwrap();
    (key, public.trim().to_string())
}

fn runner(dir: &Path, key: &Path, user: &str, ip: Ipv4Addr) -> Arc<dyn CommandRunner> {
    let options = SshOptions::new(user, key, dir.join(format!("known_hosts-{user}")));
    Arc::new(SshRunner::new(ip.to_string(), options).unwrap())
}

fn bootstrap() -> NodeBootstrap {
    NodeBootstrap::new(INSTALL_PATH, NodeBinary::local(NODE_BINARY))
        .with_package(NodePackage::new("redis-server"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_nodes_get_the_node_program_and_redis_and_bad_cases_say_what_to_do() {
    if required("Docker", docker_available()).is_none() {
        return;
    }
    let Some(image) = required("the twin image", ensure_image()) else {
        return;
    };
    let network = TwinNetwork::create_free().expect("a twin network");
    let ip = Ipv4Addr::from(u32::from(network.gateway()) + 9);
    let host = TwinHost::new(network, image);
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path());
    let spec = InstanceSpec {
        id: "i-bootstrap".into(),
        private_ip: ip,
        ssh_user: "ubuntu".into(),
        authorized_key: Some(public.clone()),
        environment: Vec::new(),
        mounts: Vec::new(),
        node_engine: false,
    };
    host.run(&spec).expect("the instance starts");
    TwinHost::wait_for_port(ip, 22, Duration::from_secs(30)).unwrap();
    let ubuntu = runner(dir.path(), &key, "ubuntu", ip);

    // A stock node: everything is installed, with sudo.
    let done = match bootstrap().run("i-bootstrap", &*ubuntu, None).await {
        Ok(d) => d,
        Err(e) => {
            let debug = docker(&[
                "exec",
                &host.container_name("i-bootstrap"),
                "sh",
                "-c",
                "ls -la /tmp /usr/local/bin; /usr/local/bin/cloudtik-node --version; echo $?",
            ]);
            panic!("{e:#}\n{debug:?}")
        }
    };
    assert_eq!(done.packages, vec!["redis-server"]);
    assert_eq!(done.binary_from, None);
    assert!(
        done.binary_installed
            .as_deref()
            .is_some_and(|v| v.starts_with("cloudtik-node ")),
        "{done:?}"
    );
    let out = ubuntu
        .run_output("cloudtik-node --version && redis-server --version && command -v rsync || echo no-rsync")
        .await
        .unwrap();
    assert!(
        out.contains("cloudtik-node") && out.contains("Redis server") && out.contains("no-rsync"),
        "{out}"
    );
    // The distribution's redis service is not left listening (no systemd here: none ran).
    // A second bootstrap finds everything and does nothing.
    let (_, plan) = bootstrap().probe("i-bootstrap", &*ubuntu).await.unwrap();
    assert!(plan.is_empty(), "{plan:?}");

    // An older program is upgraded.
    ubuntu
        .run_output(&format!(
            "printf '#!/bin/sh\\necho cloudtik-node 0.0.1\\n' > /tmp/old && sudo -n install -m 0755 /tmp/old {INSTALL_PATH}"
        ))
        .await
        .unwrap();
    let done = bootstrap().run("i-bootstrap", &*ubuntu, None).await.unwrap();
    assert_eq!(done.binary_from.as_deref(), Some("cloudtik-node 0.0.1"));
    assert!(done.packages.is_empty());
    assert!(
        !ubuntu
            .run_output("cloudtik-node --version")
            .await
            .unwrap()
            .contains("0.0.1")
    );

    // A user without sudo: the error names the node, the user and what to do; nothing
    // is installed.
    let container = host.container_name("i-bootstrap");
    docker(&[
        "exec",
        &container,
        "sh",
        "-c",
        &format!(
            "useradd -m -s /bin/sh alice && mkdir -p /home/alice/.ssh && echo '{public}' > /home/alice/.ssh/authorized_keys \
             && chown -R alice /home/alice/.ssh && chmod 600 /home/alice/.ssh/authorized_keys"
        ),
    ])
    .unwrap();
    let alice = runner(dir.path(), &key, "alice", ip);
    let other = NodeBootstrap::new("/opt/alice/cloudtik-node", NodeBinary::local(NODE_BINARY));
    let e = other.run("i-bootstrap", &*alice, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e:#}");
    let text = e.to_string();
    assert!(
        text.contains("i-bootstrap") && text.contains("alice") && text.contains("passwordless sudo"),
        "{text}"
    );
    assert_eq!(e.context_value("step"), Some("probe"));
    assert!(
        alice
            .run_output("test -e /opt/alice/cloudtik-node || echo absent")
            .await
            .unwrap()
            .contains("absent")
    );

    // A package that cannot be installed: the step, the node and what to check.
    let broken = bootstrap().with_package(NodePackage::new("no-such-package-cloudtik"));
    let e = broken.run("i-bootstrap", &*ubuntu, None).await.unwrap_err();
    assert_eq!(e.context_value("step"), Some("install packages"), "{e:#}");
    let text = format!("{e:#}");
    assert!(
        text.contains("i-bootstrap")
            && text.contains("no-such-package-cloudtik")
            && text.contains("package mirror"),
        "{text}"
    );

    ubuntu.close().await.unwrap();
    alice.close().await.unwrap();
    host.cleanup().unwrap();
}

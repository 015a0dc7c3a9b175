//! The self-test of the cloud twin harness (`tests/twin/`): EC2 instances launched on the
//! twin's moto are containers of the stock-like twin image, reachable over SSH at their
//! private IPs with the imported key pair, following the instances through stop, start
//! and terminate, and nothing is left after cleanup.
//!
//! Needs Docker, the twin image (built here with `scripts/build-twin-image.sh` when
//! missing, which needs debootstrap and root or sudo) and moto (the moto harness
//! installs it into a venv). Without them the test fails under `CI=true` and is skipped
//! (saying so) otherwise.
//!
//! `CI=true cargo test -p cloudtik-examples --features aws --test twin_harness -- --nocapture`
#![cfg(feature = "aws")]

mod twin;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::InstanceType;
use twin::aws::{AwsTwin, AwsTwinOptions};
use twin::{TwinHost, all_twin_networks, docker};

/// `ssh user@ip command` with `key`; stdout, or stderr as the error.
fn ssh(key: &Path, user: &str, ip: Ipv4Addr, command: &str) -> Result<String, String> {
    let out = Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(key)
        .arg(format!("{user}@{ip}"))
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ssh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ssh {user}@{ip} {command:?} failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// SSH answers (sshd accepts the key), within `timeout`; how long it took.
fn wait_for_ssh(key: &Path, user: &str, ip: Ipv4Addr, timeout: Duration) -> Duration {
    let start = Instant::now();
    TwinHost::wait_for_port(ip, 22, timeout).unwrap_or_else(|e| panic!("{e}"));
    loop {
        match ssh(key, user, ip, "true") {
            Ok(_) => return start.elapsed(),
            Err(e) if start.elapsed() > timeout => {
                panic!("SSH to {ip} did not answer within {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn state_of(twin: &AwsTwin, id: &str) -> Option<String> {
    twin.instances().into_iter().find(|i| i.id == id).map(|i| i.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_instances_are_stock_machines_reachable_over_ssh() {
    let Some(twin) = AwsTwin::start(None, AwsTwinOptions::default()).await else {
        return;
    };
    let cidr = twin::Cidr::parse(&twin.vpc_cidr()).unwrap();
    eprintln!(
        "twin: network {} ({}), EC2 endpoint {}",
        twin.host().network().name(),
        cidr,
        twin.endpoint_url()
    );
    let ec2 = twin.raw_client().await;

    // The cluster's key pair, imported as CloudTik's bootstrap does.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "twin-test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(keygen.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    ec2.import_key_pair()
        .key_name("twin-key")
        .public_key_material(Blob::new(public.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(twin.public_key("twin-key").as_deref(), Some(public.trim()));

    // A VPC of the twin's range and a subnet, as the workspace makes them.
    let vpc_id = twin.create_working_vpc().await;
    let subnet_cidr = format!("{}/24", cidr.network());
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block(&subnet_cidr)
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).unwrap().to_string();

    // Two instances: a container each, running with moto's private IP, before the answer.
    let started = Instant::now();
    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(2)
        .max_count(2)
        .subnet_id(&subnet_id)
        .key_name("twin-key")
        .send()
        .await
        .unwrap();
    let launch = started.elapsed();
    let launched: Vec<(String, Ipv4Addr)> = run
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.private_ip_address().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(launched.len(), 2);
    eprintln!("RunInstances of 2 (both containers started) took {launch:?}: {launched:?}");
    let containers = twin.instances();
    for (id, ip) in &launched {
        let c = containers
            .iter()
            .find(|c| &c.id == id)
            .unwrap_or_else(|| panic!("no container for {id}: {containers:?}"));
        assert!(c.running(), "{c:?}");
        assert_eq!(c.ip, Some(*ip), "{c:?}");
        assert!(cidr.contains(*ip) && *ip != twin.gateway());
    }

    // SSH as the AMI's user with the key pair: a stock machine with sudo, nothing more.
    let (id0, ip0) = launched[0].clone();
    let ready = wait_for_ssh(&key, "ubuntu", ip0, Duration::from_secs(60));
    eprintln!("SSH answered {ready:?} after RunInstances returned");
    assert_eq!(ssh(&key, "ubuntu", ip0, "hostname").unwrap().trim(), id0);
    assert_eq!(
        ssh(&key, "ubuntu", ip0, "sudo -n true && echo ok")
            .unwrap()
            .trim(),
        "ok"
    );
    let missing = ssh(
        &key,
        "ubuntu",
        ip0,
        "for c in cloudtik-node redis-server rsync python3; do command -v $c || echo missing-$c; done",
    )
    .unwrap();
    assert_eq!(
        missing.split_whitespace().collect::<Vec<_>>(),
        [
            "missing-cloudtik-node",
            "missing-redis-server",
            "missing-rsync",
            "missing-python3"
        ]
    );
    // The instance role's stand-in, through pam_env in an SSH session.
    assert_eq!(
        ssh(
            &key,
            "ubuntu",
            ip0,
            "echo $AWS_ACCESS_KEY_ID $AWS_DEFAULT_REGION $AWS_EC2_METADATA_DISABLED"
        )
        .unwrap()
        .trim(),
        "testing us-east-1 true"
    );
    // The instance reaches the twin's EC2 endpoint (bash's /dev/tcp: no curl on the image).
    let endpoint = twin.endpoint_url().trim_start_matches("http://").to_string();
    let (gw, port) = endpoint.split_once(':').unwrap();
    let answer = ssh(
        &key,
        "ubuntu",
        ip0,
        &format!(
            "exec 3<>/dev/tcp/{gw}/{port} && printf 'GET /moto-api/ HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -c 12 <&3"
        ),
    )
    .unwrap();
    assert!(answer.starts_with("HTTP/1."), "{answer:?}");

    // Stop -> the container is stopped; start -> running again, same IP, SSH answers.
    ec2.stop_instances().instance_ids(&id0).send().await.unwrap();
    assert_eq!(state_of(&twin, &id0).as_deref(), Some("exited"));
    ec2.start_instances().instance_ids(&id0).send().await.unwrap();
    assert_eq!(state_of(&twin, &id0).as_deref(), Some("running"));
    let described = ec2.describe_instances().instance_ids(&id0).send().await.unwrap();
    let ip_after: Ipv4Addr = described.reservations()[0].instances()[0]
        .private_ip_address()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ip_after, ip0, "moto kept the private IP over stop/start");
    let ready = wait_for_ssh(&key, "ubuntu", ip0, Duration::from_secs(60));
    eprintln!("SSH answered {ready:?} after StartInstances returned");
    assert_eq!(
        ssh(&key, "ubuntu", ip0, "echo $AWS_ACCESS_KEY_ID")
            .unwrap()
            .trim(),
        "testing"
    );

    // Terminate behind CloudTik's back -> the container is gone.
    let (id1, _) = launched[1].clone();
    ec2.terminate_instances().instance_ids(&id1).send().await.unwrap();
    assert_eq!(state_of(&twin, &id1), None);
    assert_eq!(state_of(&twin, &id0).as_deref(), Some("running"));

    // A launch outside the twin's range (no subnet: moto's default VPC or a random
    // address) is refused with a clear error rather than started elsewhere.
    let outside = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .send()
        .await;
    match outside {
        Err(e) => {
            let message = format!("{:?}", e.into_service_error());
            assert!(message.contains("CloudTwin.ContainerFailed"), "{message}");
            assert!(message.contains("outside the twin network's range"), "{message}");
            assert_eq!(twin.failures().len(), 1);
        }
        // moto's random 10.x.y.z fell into the twin's /16 (1 in 255): a container then.
        Ok(run) => eprintln!("moto's random address was inside the twin: {:?}", run.instances()),
    }

    // Cleanup -> no container and no network left.
    let network = twin.host().network().name().to_string();
    twin.cleanup().unwrap();
    assert_eq!(twin.instances(), vec![]);
    assert!(!all_twin_networks().unwrap().contains(&network));
    assert!(docker(&["network", "inspect", &network]).is_err());
}

/// The shared package cache (`PackageCache`, a folder kept across runs) mounted into an
/// instance: the SSH user installs a package with apt from the Debian mirror (through
/// Docker's DNS on the twin network) and may write the wheel cache. Needs the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_installs_packages_through_the_shared_cache() {
    let cache_dir = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cloudtik-twin-packages");
    let options = AwsTwinOptions {
        package_cache: Some(twin::PackageCache::new(&cache_dir).unwrap()),
        ..AwsTwinOptions::default()
    };
    let Some(twin) = AwsTwin::start(None, options).await else {
        return;
    };
    let ec2 = twin.raw_client().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    ec2.import_key_pair()
        .key_name("k")
        .public_key_material(Blob::new(public.as_bytes()))
        .send()
        .await
        .unwrap();
    let cidr = twin::Cidr::parse(&twin.vpc_cidr()).unwrap();
    let vpc = ec2.create_vpc().cidr_block(twin.vpc_cidr()).send().await.unwrap();
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block(format!("{}/24", cidr.network()))
        .send()
        .await
        .unwrap();
    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet.subnet().and_then(|s| s.subnet_id()).unwrap())
        .key_name("k")
        .send()
        .await
        .unwrap();
    let ip: Ipv4Addr = run.instances()[0].private_ip_address().unwrap().parse().unwrap();
    wait_for_ssh(&key, "ubuntu", ip, Duration::from_secs(60));
    let started = Instant::now();
    let installed = ssh(
        &key,
        "ubuntu",
        ip,
        "sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null \
         && command -v rsync",
    )
    .unwrap_or_else(|e| panic!("apt-get in the instance (needs the Debian mirror): {e}"));
    eprintln!("apt-get update + install rsync took {:?}", started.elapsed());
    assert_eq!(installed.trim(), "/usr/bin/rsync");
    assert!(
        std::fs::read_dir(cache_dir.join("apt-archives"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("rsync_"))
    );
    ssh(
        &key,
        "ubuntu",
        ip,
        "touch ~/.cache/cloudtik/wheels/.twin-probe ~/.cache/twin-probe && rm ~/.cache/cloudtik/wheels/.twin-probe",
    )
    .unwrap();
}

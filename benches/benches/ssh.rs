//! 100 small commands on one node: through the runner's shared ControlMaster connection
//! versus a fresh `ssh` process (full handshake) per command. Target: the shared
//! connection at least 5x faster per command.
//!
//! Needs `openssh-server`, `openssh-client` and `rsync` (the harness starts its own
//! sshd on loopback); without them the bench prints why and measures nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudtik_core::command::{CommandRunner, CommandSpec, SshRunner};
use cloudtik_core::testing::sshd::{SshKeyPair, SshdServer, sshd_available};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const COMMANDS: u64 = 100;

fn bench_ssh(c: &mut Criterion) {
    if !sshd_available() {
        return;
    }
    let key = SshKeyPair::generate().expect("ssh-keygen");
    let server = SshdServer::start(&key).expect("start sshd");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = server
        .ssh_options(&key, dir.path().join("known_hosts"))
        .with_control_dir(dir.path());
    let runner = SshRunner::new("127.0.0.1", options).expect("runner");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Connect once (and pin the host key) before measuring.
    rt.block_on(runner.run(&CommandSpec::new("true")))
        .expect("first command");
    let config = runner.config_file();

    let mut group = c.benchmark_group("ssh_100_commands");
    group.throughput(Throughput::Elements(COMMANDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("shared_connection", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(async {
                    for _ in 0..COMMANDS {
                        let out = runner.run(&CommandSpec::new("true")).await.expect("command");
                        assert!(out.success());
                    }
                });
            }
            start.elapsed()
        })
    });
    group.bench_function("fresh_ssh_process", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..COMMANDS {
                    let status = Command::new("ssh")
                        .arg("-F")
                        .arg(&config)
                        .args(["-o", "ControlMaster=no", "-o", "ControlPath=none", "-p"])
                        .arg(server.port().to_string())
                        .arg("-l")
                        .arg(server.user())
                        .args(["127.0.0.1", "true"])
                        .stdin(Stdio::null())
                        .status()
                        .expect("ssh");
                    assert!(status.success());
                }
            }
            start.elapsed()
        })
    });
    group.finish();
    drop(rt);
}

criterion_group!(benches, bench_ssh);
criterion_main!(benches);

//! SshRunner against real sshd servers: loopback, and hosts in network namespaces.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::ErrorKind;
use cloudtik_core::command::{
    CommandRunner, CommandRunnerExt, CommandSpec, JumpHost, MASK, SshRunner, SyncOptions, TransferMode,
};
use cloudtik_core::testing::sshd::{
    NetLab, SshKeyPair, SshdServer, free_port, netns_available, sshd_available,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    key: SshKeyPair,
    server: SshdServer,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if !sshd_available() {
            return None;
        }
        let key = SshKeyPair::generate().expect("ssh-keygen");
        let server = SshdServer::start(&key).expect("start sshd");
        let dir = tempfile::tempdir().unwrap();
        Some(Fixture { key, server, dir })
    }

    fn known_hosts(&self) -> std::path::PathBuf {
        self.dir.path().join("known_hosts")
    }

    fn runner(&self) -> SshRunner {
        self.runner_with(TransferMode::Auto)
    }

    fn runner_with(&self, transfer: TransferMode) -> SshRunner {
        let options = self
            .server
            .ssh_options(&self.key, self.known_hosts())
            .with_control_dir(self.dir.path())
            .with_transfer(transfer);
        SshRunner::new("127.0.0.1", options).unwrap()
    }

    fn accepted_logins(&self) -> usize {
        self.server.log().matches("Accepted publickey").count()
    }
}

#[tokio::test]
async fn runs_commands_with_env_output_and_exit_status_and_pins_the_host_key() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner();
    let out = r
        .run(&CommandSpec::new("echo \"hello $WHO\"; echo oops >&2; exit 3").env("WHO", "it's me"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.stdout, "hello it's me\n");
    assert_eq!(out.stderr, "oops\n");
    // Status 127 (no such program) is the command's failure, not a broken connection.
    let out = r
        .run(&CommandSpec::new("no-such-program-cloudtik"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(127));
    assert!(out.stderr.contains("not found"), "{}", out.stderr);

    let known = std::fs::read_to_string(f.known_hosts()).unwrap();
    assert!(
        known.contains(&format!("[127.0.0.1]:{}", f.server.port())),
        "host key pinned in the cluster file: {known}"
    );

    // Streamed output arrives line by line while the command runs.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    r.run(&CommandSpec::new("echo one; echo two").stream_to(tx))
        .await
        .unwrap();
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l.line);
    }
    assert_eq!(lines, vec!["one", "two"]);
    r.close().await.unwrap();
}

#[tokio::test]
async fn every_command_and_rsync_share_one_connection() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner();
    for i in 0..10 {
        assert_eq!(
            r.run_output(&format!("echo {i}")).await.unwrap(),
            format!("{i}\n")
        );
    }
    let src = f.dir.path().join("one.txt");
    std::fs::write(&src, "x").unwrap();
    let remote = f.dir.path().join("remote/one.txt");
    r.upload(&src, remote.to_str().unwrap(), &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), "x");
    assert_eq!(f.accepted_logins(), 1, "sshd log:\n{}", f.server.log());
}

#[tokio::test]
async fn a_dead_master_is_replaced_by_the_next_command() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner();
    let socket = r.connect().await.unwrap();
    assert_eq!(r.run_output("echo before").await.unwrap(), "before\n");
    let stopped = std::process::Command::new("ssh")
        .arg("-S")
        .arg(&socket)
        .args(["-O", "exit", "node"])
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(r.run_output("echo after").await.unwrap(), "after\n");
    assert_eq!(f.accepted_logins(), 2);
}

#[tokio::test]
async fn secrets_are_masked_in_errors_and_output() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner();
    let spec = CommandSpec::new("echo \"using $API_TOKEN\"; echo \"denied for $API_TOKEN\" >&2; exit 1")
        .env("API_TOKEN", "s3cr3t-value");
    let out = r.run(&spec).await.unwrap();
    assert_eq!(out.stdout, format!("using {MASK}\n"));
    let err = r.run_checked(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CommandFailed);
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cr3t-value"), "{text}");
    assert!(text.contains(&format!("denied for {MASK}")), "{text}");
}

#[tokio::test]
async fn a_command_past_its_timeout_fails_and_is_killed() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner();
    let pidfile = f.dir.path().join("pid");
    let marker = f.dir.path().join("finished");
    let spec = CommandSpec::new(format!(
        "echo $$ > {}; sleep 30; touch {}",
        pidfile.display(),
        marker.display()
    ))
    .timeout(Some(Duration::from_secs(1)));
    let err = r.run(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("sleep 30"), "{err}");
    // The remote side kills the command shortly after (timeout -s KILL); wait for it.
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    let proc_dir = Path::new("/proc").join(&pid);
    let mut gone = false;
    for _ in 0..200 {
        if !proc_dir.exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the timed-out command (pid {pid}) still runs");
    assert!(!marker.exists());
    // The connection still works.
    assert_eq!(r.run_output("echo ok").await.unwrap(), "ok\n");
}

#[tokio::test]
async fn a_changed_host_key_is_refused_with_a_clear_error() {
    let Some(mut f) = Fixture::new() else { return };
    let r = f.runner();
    r.run_output("true").await.unwrap();
    r.close().await.unwrap();
    drop(r);
    f.server.restart_with_new_host_key().unwrap();
    let r = f.runner();
    let err = r.run(&CommandSpec::new("true")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("host key"), "{text}");
    assert!(text.contains("changed"), "{text}");
    assert!(text.contains(&f.known_hosts().display().to_string()), "{text}");
    assert!(text.contains("ssh-keygen -R"), "{text}");
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    if !sshd_available() {
        return;
    }
    let key = SshKeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let options = cloudtik_core::command::SshOptions::new("root", key.private_key(), dir.path().join("kh"))
        .with_port(port)
        .with_control_dir(dir.path());
    let r = SshRunner::new("127.0.0.1", options).unwrap();
    let err = r.run(&CommandSpec::new("true")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn thirty_concurrent_commands_on_one_host_all_succeed() {
    let Some(f) = Fixture::new() else { return };
    let r = Arc::new(f.runner());
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                r.run_checked(&CommandSpec::new(format!("sleep 0.3; echo {i}")))
                    .await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap_or_else(|e| panic!("command {i}: {e}"));
        assert_eq!(out.stdout, format!("{i}\n"));
    }
    assert_eq!(f.accepted_logins(), 1);
}

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out.sort();
    out
}

fn source_tree(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    write(&src.join("keep.txt"), "keep");
    write(&src.join("skip.pyc"), "compiled");
    write(&src.join("sub/deep.txt"), "deep");
    write(&src.join("sub/also.pyc"), "compiled");
    write(&src.join(".git/config"), "git");
    src
}

async fn round_trip(f: &Fixture, r: &SshRunner, options: &SyncOptions, expected: &[&str]) {
    let src = source_tree(f.dir.path());
    let remote = f.dir.path().join("remote-dir");
    r.upload(&src, remote.to_str().unwrap(), options).await.unwrap();
    assert_eq!(tree(&remote), expected);
    let back = f.dir.path().join("back");
    r.download(remote.to_str().unwrap(), &back, options)
        .await
        .unwrap();
    assert_eq!(tree(&back), expected);
    assert_eq!(
        std::fs::read_to_string(back.join("sub/deep.txt")).unwrap(),
        "deep"
    );
    // A single file, to a path whose parent does not exist yet.
    let one = f.dir.path().join("remote-file/nested/keep.txt");
    r.upload(&src.join("keep.txt"), one.to_str().unwrap(), options)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&one).unwrap(), "keep");
    let one_back = f.dir.path().join("one-back/keep.txt");
    r.download(one.to_str().unwrap(), &one_back, options)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&one_back).unwrap(), "keep");
}

#[tokio::test]
async fn rsync_up_and_down_with_excludes_and_filters() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner_with(TransferMode::Rsync);
    let options = SyncOptions::default().with_exclude(["*.pyc", ".git"]);
    round_trip(&f, &r, &options, &["keep.txt", "sub/deep.txt"]).await;

    // A filter file (`.gitignore`-style) is honoured per directory.
    let src = f.dir.path().join("filtered");
    write(&src.join(".ignore-me"), "secret.txt\n");
    write(&src.join("secret.txt"), "s");
    write(&src.join("public.txt"), "p");
    let remote = f.dir.path().join("filtered-remote");
    r.upload(
        &src,
        remote.to_str().unwrap(),
        &SyncOptions::default().with_filter([".ignore-me"]),
    )
    .await
    .unwrap();
    assert_eq!(tree(&remote), vec![".ignore-me", "public.txt"]);
    assert_eq!(f.accepted_logins(), 1);
}

#[tokio::test]
async fn sftp_moves_files_where_rsync_is_not_used() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner_with(TransferMode::Sftp);
    let options = SyncOptions::default().with_exclude(["*.pyc", ".git"]);
    round_trip(&f, &r, &options, &["keep.txt", "sub/deep.txt"]).await;

    // Permission bits go along, as rsync keeps them (a private key stays 0600).
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "secret").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let remote = format!("{}/sftp-perm/key", dir.path().display());
    r.upload(&key, &remote, &SyncOptions::default()).await.unwrap();
    let mode = r.run_output(&format!("stat -c %a {remote}")).await.unwrap();
    assert_eq!(mode.trim(), "600");
}

#[tokio::test]
async fn forwards_a_local_port_to_the_node() {
    let Some(f) = Fixture::new() else { return };
    let r = f.runner();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"hello through the tunnel").await;
        }
    });
    let local_port = free_port().unwrap();
    r.forward_port(local_port, "127.0.0.1", remote_port)
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local_port))
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert_eq!(buf, "hello through the tunnel");
    r.close_port_forward(local_port, "127.0.0.1", remote_port)
        .await
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", local_port))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn reaches_an_internal_host_only_through_the_jump_host() {
    if !netns_available() {
        return;
    }
    let key = SshKeyPair::generate().unwrap();
    let lab = NetLab::new().expect("network namespaces");
    let jump = SshdServer::builder()
        .netns(lab.jump_ns())
        .address(lab.jump_address())
        .start(&key)
        .expect("sshd in the jump namespace");
    let internal = SshdServer::builder()
        .netns(lab.internal_ns())
        .address(lab.internal_address())
        .start(&key)
        .expect("sshd in the internal namespace");
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");

    // Directly, the internal host cannot be reached.
    let direct = SshRunner::new(
        lab.internal_address(),
        internal
            .ssh_options(&key, &known_hosts)
            .with_connect_timeout(Duration::from_secs(2))
            .with_control_dir(dir.path()),
    )
    .unwrap();
    let err = direct.run(&CommandSpec::new("true")).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Transient),
        "{err}"
    );

    // Through the jump host it can.
    let options = internal
        .ssh_options(&key, &known_hosts)
        .with_control_dir(dir.path())
        .with_jump(JumpHost {
            host: lab.jump_address(),
            port: jump.port(),
            user: jump.user().to_string(),
        });
    let r = SshRunner::new(lab.internal_address(), options).unwrap();
    let addrs = r.run_output("ip -o -4 addr show").await.unwrap();
    assert!(addrs.contains(&lab.internal_address()), "{addrs}");
    assert!(!addrs.contains(&lab.jump_address()), "{addrs}");
    assert!(r.describe().contains("via"));

    // rsync goes through the same (jumped) connection.
    let src = dir.path().join("payload.txt");
    std::fs::write(&src, "through the jump").unwrap();
    r.upload(&src, "/tmp/ctk-jump-payload.txt", &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.run_output("cat /tmp/ctk-jump-payload.txt; rm /tmp/ctk-jump-payload.txt")
            .await
            .unwrap(),
        "through the jump"
    );
    // Both host keys were pinned in the cluster's file.
    let known = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(known.contains(&lab.jump_address()), "{known}");
    assert!(known.contains(&lab.internal_address()), "{known}");
    r.close().await.unwrap();
}

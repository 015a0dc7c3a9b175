//! A tiny Docker image built locally for tests (no registry needed).
//!
//! [`TestImage::build`] assembles a root filesystem from this machine's own `sh`,
//! `sleep`, `cat`, `mkdir`, `ls`, `rm`, `touch`, `env` and what the node bootstrap's
//! probe and install use (`uname`, `id`, `sha256sum`, `cut`, `head`, `install`) plus the
//! shared libraries `ldd` lists for them, and turns it into an image with `docker import`. Dropping the image
//! removes every tag of its repository and every container whose name starts with its prefix.

use std::fmt;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// A file that exists in the test image only: tests tell container from host by it.
pub const IMAGE_MARKER: &str = "/ctk-test-image";

/// Binaries copied into the test image.
pub const IMAGE_BINARIES: &[&str] = &[
    "sh",
    "sleep",
    "cat",
    "mkdir",
    "ls",
    "rm",
    "touch",
    "env",
    "uname",
    "id",
    "sha256sum",
    "cut",
    "head",
    "install",
];

/// True when the Docker engine answers (`docker info`). Under `CI=true` a missing engine
/// panics with a clear message instead.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true and the Docker engine does not answer `docker info`");
        }
        eprintln!("skipping: the Docker engine does not answer `docker info`");
    }
    ok
}

fn check(out: io::Result<std::process::Output>, what: &str) -> io::Result<String> {
    let out = out?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy_with_parents(src: &Path, root: &Path) -> io::Result<()> {
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dst = root.join(rel);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(src, &dst)?;
    Ok(())
}

/// A locally built image; removed on drop with the containers named after its prefix.
pub struct TestImage {
    prefix: String,
    name: String,
}

impl fmt::Debug for TestImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestImage").field("name", &self.name).finish()
    }
}

impl TestImage {
    /// Builds an image named `<prefix>-<random>:test`.
    pub fn build(prefix: &str) -> io::Result<Self> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let prefix = format!("{prefix}-{id}");
        let name = format!("{prefix}:test");
        let root = tempfile::Builder::new().prefix("ctk-rootfs").tempdir()?;
        std::fs::create_dir_all(root.path().join("bin"))?;
        std::fs::create_dir_all(root.path().join("tmp"))?;
        std::fs::create_dir_all(root.path().join("root"))?;
        for bin in IMAGE_BINARIES {
            let path = check(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {bin}"))
                    .output(),
                &format!("finding {bin}"),
            )?;
            let path = std::fs::canonicalize(path.trim())?;
            std::fs::copy(&path, root.path().join("bin").join(bin))?;
            let libs = check(
                Command::new("ldd").arg(&path).output(),
                &format!("ldd {}", path.display()),
            )?;
            for line in libs.lines() {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
                let candidate = line
                    .split("=>")
                    .nth(1)
                    .unwrap_or(line)
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                if candidate.starts_with('/') {
                    let p = Path::new(candidate);
                    copy_with_parents(p, root.path())?;
                    let real = std::fs::canonicalize(p)?;
                    if real != p {
                        copy_with_parents(&real, root.path())?;
                    }
                }
            }
        }
        std::fs::write(root.path().join(IMAGE_MARKER.trim_start_matches('/')), &name)?;
        std::fs::create_dir_all(root.path().join("usr"))?;
        std::os::unix::fs::symlink("/bin", root.path().join("usr/bin"))?;
        let script = format!(
            "tar -C {} -c . | docker import -c 'ENV PATH=/bin HOME=/root' - {name} >/dev/null",
            root.path().display()
        );
        check(Command::new("sh").arg("-c").arg(script).output(), "docker import")?;
        Ok(TestImage { prefix, name })
    }

    /// The image's name (`repo:tag`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A container name unique to this image: `<prefix>-<suffix>`.
    pub fn container_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let script = format!(
            "docker ps -aq --filter name={p} | xargs -r docker rm -f >/dev/null 2>&1; \
             docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {p} | xargs -r docker rmi -f >/dev/null 2>&1",
            p = self.prefix
        );
        let _ = Command::new("sh").arg("-c").arg(script).status();
    }
}

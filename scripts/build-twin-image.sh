#!/usr/bin/env bash
# Builds the "cloud twin" instance image, locally, from a Debian root filesystem.
#
#   scripts/build-twin-image.sh              build cloudtik-twin:<tag> unless it exists
#   scripts/build-twin-image.sh --print-tag  print the image name and exit
#   scripts/build-twin-image.sh --force      build even if the image exists
#
# The cloud twin test harness (examples/tests/twin/) runs one container of this image per
# instance a fake cloud API launches. The image stands in for a stock cloud image (an
# Ubuntu or Debian AMI): a Debian root with sshd (and its sftp server) and sudo only. There is NO cloudtik
# software, no redis, no rsync and no python in it: whatever CloudTik needs on a node it
# must install itself, as on a real cloud.
#
# Like scripts/build-node-image.sh: debootstrap makes a minimal Debian root filesystem
# from the Debian mirror of this machine's own apt sources (its /etc/apt/sources.list
# points at that mirror, so `apt-get update && apt-get install rsync` works inside), and
# `docker import` turns it into an image. The image is tagged by the first 12 hex digits
# of the SHA-256 of this script: editing this file (even a comment) changes the tag.
#
# The image's command, /usr/local/sbin/twin-init, stands in for cloud-init:
#   - generates the SSH host keys (once per container: a restarted container keeps them);
#   - creates the SSH user of env TWIN_SSH_USER (default `ubuntu`; `root` means root)
#     with passwordless sudo in /etc/sudoers.d/90-cloud-init-users, as Ubuntu images do;
#   - writes env TWIN_AUTHORIZED_KEY into that user's ~/.ssh/authorized_keys (the
#     instance's key pair);
#   - appends env TWIN_ENVIRONMENT (newline-separated KEY=VALUE lines) to
#     /etc/environment, once: it stands in for the instance role's credentials. sshd runs
#     with `UsePAM yes` and Debian's /etc/pam.d/sshd runs pam_env, so SSH sessions see
#     these variables;
#   - when env TWIN_DOCKER_CGROUP_PARENT is set (the harness's node-engine instances,
#     which install and run their own Docker engine as a node in container mode does),
#     writes /etc/docker/daemon.json with that `cgroup-parent`: the instance's inner
#     containers get cgroups of their own, beside the twin containers' (the instance sees
#     the host's cgroup v1 hierarchy, mounted read-write, from its root; with Docker's
#     default parent `/docker` they would land among the host engine's own containers,
#     and every instance's engine in one folder);
#   - then runs `exec /usr/sbin/sshd -D -e`.
#
# Environment:
#   MIRROR      Debian mirror URI (default: the first Debian URI of /etc/apt/sources*)
#   IMAGE_REPO  image repository name (default: cloudtik-twin)
#   WORK_DIR    where the root filesystem is assembled (default: a temporary directory)
set -euo pipefail

SUITE=bookworm
# openssh-sftp-server: every Debian and Ubuntu cloud image has it (sshd_config names it as
# the sftp subsystem); it is how files reach a node without rsync.
PACKAGES=openssh-server,openssh-sftp-server,sudo
IMAGE_REPO=${IMAGE_REPO:-cloudtik-twin}

self="${BASH_SOURCE[0]}"
hash=$(sha256sum "$self" | cut -c1-12)
image="$IMAGE_REPO:$hash"

force=0
case "${1:-}" in
  --print-tag) echo "$image"; exit 0 ;;
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--print-tag|--force]" >&2; exit 2 ;;
esac

step() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "Docker is not reachable: start it (sudo systemctl start docker, or dockerd &) and check that you may use /var/run/docker.sock"

if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  step "image $image exists; nothing to build (use --force to rebuild)"
  exit 0
fi

SUDO=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "debootstrap needs root: run as root or install sudo"
  SUDO=sudo
fi

# The first Debian mirror URI of this machine's apt sources (one-line .list or deb822 .sources).
find_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) ~ /^'"$SUITE"'$/) { print $i; exit } break } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         { uri = ""; ok = 0
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^URIs:/) { split($i, a, " "); uri = a[2] }
             if ($i ~ /^Suites:/) { n = split($i, s, " "); for (j = 2; j <= n; j++) if (s[j] == "'"$SUITE"'") ok = 1 }
           }
           if (ok && uri != "") { print uri; exit } }' "$f"
  done
}

if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(find_mirror | head -n1)
fi
[ -n "${MIRROR:-}" ] || die "no Debian $SUITE mirror in /etc/apt/sources.list*: set MIRROR=http://deb.debian.org/debian"

if ! command -v debootstrap >/dev/null; then
  step "installing debootstrap"
  $SUDO apt-get install -y debootstrap >/dev/null || die "could not install debootstrap: apt-get install -y debootstrap"
fi

if [ -n "${WORK_DIR:-}" ]; then
  mkdir -p "$WORK_DIR"
  rootfs=$(mktemp -d "$WORK_DIR/rootfs.XXXXXX")
else
  rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/cloudtik-twin-rootfs.XXXXXX")
fi
cleanup() { $SUDO rm -rf --one-file-system "$rootfs"; }
trap cleanup EXIT

start=$(date +%s)
step "building $image: debootstrap $SUITE from $MIRROR into $rootfs"
step "packages: $PACKAGES"
$SUDO debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
  | while IFS= read -r line; do
      case "$line" in
        I:\ Retrieving*|I:\ Validating*|I:\ Extracting*|I:\ Unpacking*|I:\ Configuring*) printf '.' ;;
        *) printf '\n  %s' "$line" ;;
      esac
    done
printf '\n'

step "configuring the root filesystem"
# Host keys are generated by each container when it starts (see twin-init), never shared.
$SUDO rm -f "$rootfs"/etc/ssh/ssh_host_*
# Like a fresh cloud image: no downloaded packages, no package lists (apt-get update first).
$SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
$SUDO mkdir -p "$rootfs/run/sshd"
# As Ubuntu cloud images: key authentication only. Everything else is Debian's default
# (UsePAM yes, MaxSessions 10...), on purpose: the twin is a stock image.
printf '%s\n' 'PasswordAuthentication no' \
  | $SUDO tee "$rootfs/etc/ssh/sshd_config.d/60-cloudimg-settings.conf" >/dev/null
grep -qx 'UsePAM yes' "$rootfs/etc/ssh/sshd_config" || die "sshd_config of $SUITE lost 'UsePAM yes' (pam_env applies /etc/environment to SSH sessions)"

# The stand-in for cloud-init (see the header of this script).
$SUDO tee "$rootfs/usr/local/sbin/twin-init" >/dev/null <<'EOF'
#!/bin/sh
# cloud-init stand-in of the cloud twin image (scripts/build-twin-image.sh).
set -eu
user=${TWIN_SSH_USER:-ubuntu}
mkdir -p /run/sshd
ssh-keygen -A >/dev/null
if [ "$user" = root ]; then
  home=/root
else
  if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
  fi
  home=$(getent passwd "$user" | cut -d: -f6)
  printf '# Created by twin-init (stands in for cloud-init)\n\n# User rules for %s\n%s ALL=(ALL) NOPASSWD:ALL\n' \
    "$user" "$user" >/etc/sudoers.d/90-cloud-init-users
  chmod 0440 /etc/sudoers.d/90-cloud-init-users
fi
mkdir -p "$home/.ssh"
if [ -n "${TWIN_AUTHORIZED_KEY:-}" ]; then
  printf '%s\n' "$TWIN_AUTHORIZED_KEY" >"$home/.ssh/authorized_keys"
fi
touch "$home/.ssh/authorized_keys"
chmod 700 "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"
chown "$user:" "$home" "$home/.ssh" "$home/.ssh/authorized_keys"
# Directories Docker made for bind mounts below ~/.cache (the harness may mount a shared
# wheel cache at ~/.cache/cloudtik/wheels) belong to the user; the mounts keep their owner.
for d in "$home/.cache" "$home/.cache/cloudtik"; do
  if [ -d "$d" ] && ! mountpoint -q "$d"; then chown "$user:" "$d"; fi
done
if [ -n "${TWIN_ENVIRONMENT:-}" ] && [ ! -e /var/lib/twin-init.environment ]; then
  printf '%s\n' "$TWIN_ENVIRONMENT" >>/etc/environment
  touch /var/lib/twin-init.environment
fi
if [ -n "${TWIN_DOCKER_CGROUP_PARENT:-}" ]; then
  mkdir -p /etc/docker
  printf '{"cgroup-parent": "%s"}\n' "$TWIN_DOCKER_CGROUP_PARENT" >/etc/docker/daemon.json
fi
exec /usr/sbin/sshd -D -e
EOF
$SUDO chmod 0755 "$rootfs/usr/local/sbin/twin-init"

size=$($SUDO du -sh "$rootfs" | cut -f1)
step "importing $size into docker as $image"
$SUDO tar --numeric-owner -C "$rootfs" -c . \
  | docker import \
      --change 'CMD ["/usr/local/sbin/twin-init"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change "LABEL cloudtik-twin-image-inputs=$hash" \
      - "$image" >/dev/null

end=$(date +%s)
step "built $image in $((end - start)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1000000 }'))"

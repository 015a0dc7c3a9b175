//! What the node agent reads from the host: resources (cgroup limits respected), load
//! and usage metrics, and the state of named processes, all from `/proc`, the cgroup
//! filesystem and `statvfs` of the data disk.
//!
//! Every path is configurable ([`HostPaths`]) so tests can point the agent at a fake
//! `/proc` and cgroup tree in a temporary directory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::time::Instant;

use crate::resources::{self, Resources};
use crate::state::{NodeMetrics, ProcessState};

/// Where the agent reads the host's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The proc filesystem (default `/proc`).
    pub proc_dir: PathBuf,
    /// The root of the cgroup filesystem (default `/sys/fs/cgroup`). Version 2 is
    /// recognised by `cgroup.controllers` in this directory; otherwise version 1
    /// controllers are looked for in `cpu`, `cpu,cpuacct` and `memory` below it.
    pub cgroup_dir: PathBuf,
    /// A path on the node's data disk; its file system is the disk reported in the
    /// metrics (default `/`).
    pub disk_path: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            proc_dir: PathBuf::from("/proc"),
            cgroup_dir: PathBuf::from("/sys/fs/cgroup"),
            disk_path: PathBuf::from("/"),
        }
    }
}

impl HostPaths {
    /// Paths under `root`: `root/proc`, `root/sys/fs/cgroup` and `root` as the disk.
    /// For tests with a fake host tree.
    pub fn under(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        HostPaths {
            proc_dir: root.join("proc"),
            cgroup_dir: root.join("sys/fs/cgroup"),
            disk_path: root.to_path_buf(),
        }
    }
}

/// The resources detected on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectedResources {
    /// CPUs the node may use: the CPUs of the host, capped by the cgroup CPU quota
    /// (`cpu.max` in version 2, `cpu.cfs_quota_us / cpu.cfs_period_us` in version 1) of
    /// this process's cgroup and its ancestors. May be fractional.
    pub cpus: f64,
    /// Memory the node may use, bytes: `MemTotal` of `/proc/meminfo`, capped by the
    /// cgroup memory limit (`memory.max` in version 2, `memory.limit_in_bytes` in
    /// version 1) of this process's cgroup and its ancestors.
    pub memory: u64,
    /// True when a cgroup limit lowered `cpus` or `memory`.
    pub limited_by_cgroup: bool,
}

impl DetectedResources {
    /// Detects the CPUs and memory of the host at `paths` (cgroup limits respected).
    pub fn detect(paths: HostPaths) -> Self {
        HostProbe::new(paths).detect_resources()
    }

    /// As [`Resources`]: `CPU` and `memory` (bytes).
    pub fn to_resources(self) -> Resources {
        Resources::from_pairs([
            (resources::CPU, self.cpus),
            (resources::MEMORY, self.memory as f64),
        ])
    }
}

/// Reads the host; keeps the previous counters to turn them into rates and one read
/// buffer, so a sample allocates little.
#[derive(Debug)]
pub(crate) struct HostProbe {
    paths: HostPaths,
    buf: String,
    cgroup: CgroupPaths,
    prev: Option<Counters>,
    cpus: f64,
}

/// The directories holding this process's cgroup limits, leaf first, root last.
#[derive(Debug, Default, Clone)]
struct CgroupPaths {
    v2: bool,
    cpu: Vec<PathBuf>,
    memory: Vec<PathBuf>,
}

/// Cumulative counters of one sample.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at: Instant,
    cpu_busy: u64,
    cpu_total: u64,
    /// cgroup CPU usage in microseconds, when the CPU is limited by a cgroup.
    cgroup_usage_us: Option<u64>,
    disk_read: u64,
    disk_written: u64,
    net_recv: u64,
    net_sent: u64,
}

impl HostProbe {
    pub(crate) fn new(paths: HostPaths) -> Self {
        let mut probe = HostProbe {
            paths,
            buf: String::with_capacity(4096),
            cgroup: CgroupPaths::default(),
            prev: None,
            cpus: 1.0,
        };
        probe.cgroup = probe.find_cgroup();
        probe
    }

    /// Reads `path` into the probe's buffer; false when it cannot be read.
    fn read(&mut self, path: &Path) -> bool {
        self.buf.clear();
        match std::fs::File::open(path) {
            Ok(mut f) => f.read_to_string(&mut self.buf).is_ok(),
            Err(_) => false,
        }
    }

    fn proc(&self, name: &str) -> PathBuf {
        self.paths.proc_dir.join(name)
    }

    /// This process's cgroup directories, from `/proc/self/cgroup`.
    fn find_cgroup(&mut self) -> CgroupPaths {
        let root = self.paths.cgroup_dir.clone();
        let v2 = root.join("cgroup.controllers").is_file();
        let self_cgroup = self.proc("self/cgroup");
        let text = if self.read(&self_cgroup) {
            self.buf.clone()
        } else {
            String::new()
        };
        let mut out = CgroupPaths {
            v2,
            ..CgroupPaths::default()
        };
        if v2 {
            let rel = text
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/")
                .trim();
            let chain = ancestors(&root, rel);
            out.cpu = chain.clone();
            out.memory = chain;
        } else {
            for line in text.lines() {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, rel) = match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), Some(c)) => (a, b, c.trim()),
                    _ => continue,
                };
                let names: Vec<&str> = controllers.split(',').collect();
                if names.contains(&"cpu") {
                    for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                        let dir = root.join(mount);
                        if dir.is_dir() {
                            out.cpu = ancestors(&dir, rel);
                            break;
                        }
                    }
                }
                if names.contains(&"memory") {
                    out.memory = ancestors(&root.join("memory"), rel);
                }
            }
        }
        out
    }

    /// Detects the node's CPUs and memory.
    pub(crate) fn detect_resources(&mut self) -> DetectedResources {
        let host_cpus = self.host_cpus();
        let quota = self.cgroup_cpu_quota();
        let cpus = match quota {
            Some(q) if q < host_cpus => q,
            _ => host_cpus,
        };
        let host_memory = self.meminfo().0;
        let limit = self.cgroup_memory_limit();
        let memory = match limit {
            Some(l) if l < host_memory || host_memory == 0 => l,
            _ => host_memory,
        };
        self.cpus = cpus;
        DetectedResources {
            cpus,
            memory,
            limited_by_cgroup: cpus < host_cpus || memory < host_memory,
        }
    }

    /// The number of `cpuN` lines of `/proc/stat` (at least 1).
    fn host_cpus(&mut self) -> f64 {
        let path = self.proc("stat");
        if !self.read(&path) {
            return 1.0;
        }
        let n = self
            .buf
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        n.max(1) as f64
    }

    /// The smallest CPU quota on the path from this cgroup to the root, in CPUs.
    fn cgroup_cpu_quota(&mut self) -> Option<f64> {
        let mut best: Option<f64> = None;
        for dir in self.cgroup.cpu.clone() {
            let quota = if self.cgroup.v2 {
                if !self.read(&dir.join("cpu.max")) {
                    continue;
                }
                parse_cpu_max(&self.buf)
            } else {
                let q = self
                    .read(&dir.join("cpu.cfs_quota_us"))
                    .then(|| self.buf.trim().parse::<i64>().ok())
                    .flatten();
                let p = self
                    .read(&dir.join("cpu.cfs_period_us"))
                    .then(|| self.buf.trim().parse::<i64>().ok())
                    .flatten();
                match (q, p) {
                    (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                    _ => None,
                }
            };
            if let Some(q) = quota {
                best = Some(best.map_or(q, |b: f64| b.min(q)));
            }
        }
        best
    }

    /// The smallest memory limit on the path from this cgroup to the root, bytes.
    fn cgroup_memory_limit(&mut self) -> Option<u64> {
        let file = if self.cgroup.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let mut best: Option<u64> = None;
        for dir in self.cgroup.memory.clone() {
            if !self.read(&dir.join(file)) {
                continue;
            }
            // "max" (v2) does not parse: no limit. Version 1 reports "no limit" as a
            // huge number, which the comparison with MemTotal discards.
            if let Ok(limit) = self.buf.trim().parse::<u64>() {
                best = Some(best.map_or(limit, |b| b.min(limit)));
            }
        }
        best
    }

    /// The current memory usage of this cgroup (leaf), bytes.
    fn cgroup_memory_usage(&mut self) -> Option<u64> {
        let file = if self.cgroup.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        let dir = self.cgroup.memory.first()?.clone();
        if !self.read(&dir.join(file)) {
            return None;
        }
        self.buf.trim().parse().ok()
    }

    /// `MemTotal` and `MemAvailable` of `/proc/meminfo`, bytes.
    fn meminfo(&mut self) -> (u64, u64) {
        let path = self.proc("meminfo");
        if !self.read(&path) {
            return (0, 0);
        }
        let mut total = 0;
        let mut available = None;
        let mut free = 0;
        for line in self.buf.lines() {
            let kb = |l: &str| -> u64 {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("MemTotal:") {
                total = kb(line);
            } else if line.starts_with("MemAvailable:") {
                available = Some(kb(line));
            } else if line.starts_with("MemFree:") {
                free = kb(line);
            }
        }
        (total, available.unwrap_or(free))
    }

    /// CPU usage in microseconds of the leaf cgroup (`cpu.stat` `usage_usec` in version
    /// 2, `cpuacct.usage` nanoseconds in version 1).
    fn cgroup_cpu_usage_us(&mut self) -> Option<u64> {
        let dir = self.cgroup.cpu.first()?.clone();
        if self.cgroup.v2 {
            if !self.read(&dir.join("cpu.stat")) {
                return None;
            }
            self.buf
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        } else {
            if !self.read(&dir.join("cpuacct.usage")) {
                return None;
            }
            self.buf.trim().parse::<u64>().ok().map(|ns| ns / 1000)
        }
    }

    fn counters(&mut self, cpu_limited: bool) -> Counters {
        let (cpu_busy, cpu_total) = {
            let path = self.proc("stat");
            if self.read(&path) {
                parse_proc_stat_cpu(&self.buf)
            } else {
                (0, 0)
            }
        };
        let cgroup_usage_us = if cpu_limited {
            self.cgroup_cpu_usage_us()
        } else {
            None
        };
        let (disk_read, disk_written) = {
            let path = self.proc("diskstats");
            if self.read(&path) {
                parse_diskstats(&self.buf)
            } else {
                (0, 0)
            }
        };
        let (net_recv, net_sent) = {
            let path = self.proc("net/dev");
            if self.read(&path) {
                parse_net_dev(&self.buf)
            } else {
                (0, 0)
            }
        };
        Counters {
            at: Instant::now(),
            cpu_busy,
            cpu_total,
            cgroup_usage_us,
            disk_read,
            disk_written,
            net_recv,
            net_sent,
        }
    }

    /// Samples the metrics into `out` (reused between samples). Rates and CPU
    /// utilisation are over the time since the previous sample; the first sample
    /// reports them as 0.
    pub(crate) fn sample_metrics(
        &mut self,
        now_unix: f64,
        detected: DetectedResources,
        out: &mut NodeMetrics,
    ) {
        let cpu_limited = detected.limited_by_cgroup && self.cgroup_cpu_quota().is_some();
        let now = self.counters(cpu_limited);
        out.time = now_unix;
        out.cpu_count = detected.cpus;
        out.cpu_percent = 0.0;
        out.disk_read_bytes_per_sec = 0.0;
        out.disk_write_bytes_per_sec = 0.0;
        out.network_recv_bytes_per_sec = 0.0;
        out.network_sent_bytes_per_sec = 0.0;
        if let Some(prev) = self.prev {
            let secs = now.at.saturating_duration_since(prev.at).as_secs_f64();
            out.cpu_percent = match (prev.cgroup_usage_us, now.cgroup_usage_us) {
                (Some(a), Some(b)) if secs > 0.0 && detected.cpus > 0.0 => {
                    let used = b.saturating_sub(a) as f64 / 1e6;
                    (used / (secs * detected.cpus) * 100.0).clamp(0.0, 100.0)
                }
                _ => {
                    let total = now.cpu_total.saturating_sub(prev.cpu_total);
                    let busy = now.cpu_busy.saturating_sub(prev.cpu_busy);
                    if total > 0 {
                        (busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0)
                    } else {
                        0.0
                    }
                }
            };
            if secs > 0.0 {
                let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
                out.disk_read_bytes_per_sec = rate(prev.disk_read, now.disk_read);
                out.disk_write_bytes_per_sec = rate(prev.disk_written, now.disk_written);
                out.network_recv_bytes_per_sec = rate(prev.net_recv, now.net_recv);
                out.network_sent_bytes_per_sec = rate(prev.net_sent, now.net_sent);
            }
        }
        self.prev = Some(now);

        let path = self.proc("loadavg");
        out.load_avg = if self.read(&path) {
            parse_loadavg(&self.buf)
        } else {
            [0.0; 3]
        };

        let (host_total, host_available) = self.meminfo();
        out.memory_total = detected.memory;
        out.memory_available = host_available.min(detected.memory);
        if detected.memory < host_total
            && let Some(used) = self.cgroup_memory_usage()
        {
            out.memory_available = detected.memory.saturating_sub(used);
        }

        #[cfg(unix)]
        match rustix::fs::statvfs(&self.paths.disk_path) {
            Ok(st) => {
                let frsize = st.f_frsize;
                out.disk_total = st.f_blocks.saturating_mul(frsize);
                out.disk_used = st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(frsize);
            }
            Err(_) => {
                out.disk_total = 0;
                out.disk_used = 0;
            }
        }
    }

    /// The state of each named process: the healthiest state among the processes of
    /// that name, or [`ProcessState::Missing`]. `out` is reused between checks.
    ///
    /// A process matches a name when its `comm` (`/proc/<pid>/comm`, which the kernel
    /// truncates to 15 bytes) equals the name, or the name's first 15 bytes and the
    /// file name of its first command-line argument equals the name.
    /// The state of each `(name, pattern)` process found by its command line: the
    /// healthiest state among the processes whose command line (arguments joined by
    /// spaces) contains `pattern`, or [`ProcessState::Missing`]. Entries of `out` for
    /// these names are replaced; others are kept.
    pub(crate) fn check_command_lines(
        &mut self,
        patterns: &[(String, String)],
        out: &mut BTreeMap<String, ProcessState>,
    ) {
        for (name, _) in patterns {
            out.insert(name.clone(), ProcessState::Missing);
        }
        if patterns.is_empty() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.paths.proc_dir) else {
            return;
        };
        let own = std::process::id().to_string();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str() else { continue };
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
                continue;
            }
            let dir = self.paths.proc_dir.join(pid);
            if !self.read(&dir.join("cmdline")) || self.buf.is_empty() {
                continue;
            }
            let cmdline = self.buf.replace('\0', " ");
            let matched: Vec<String> = patterns
                .iter()
                .filter(|(_, p)| cmdline.contains(p.as_str()))
                .map(|(n, _)| n.clone())
                .collect();
            if matched.is_empty() {
                continue;
            }
            let state = if self.read(&dir.join("stat")) {
                parse_stat_state(&self.buf)
            } else {
                ProcessState::Missing
            };
            for name in matched {
                if let Some(current) = out.get_mut(&name)
                    && rank(state) > rank(*current)
                {
                    *current = state;
                }
            }
        }
    }

    pub(crate) fn check_processes(&mut self, names: &[String], out: &mut BTreeMap<String, ProcessState>) {
        out.retain(|k, _| names.contains(k));
        for name in names {
            out.insert(name.clone(), ProcessState::Missing);
        }
        if names.is_empty() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.paths.proc_dir) else {
            return;
        };
        let mut path = self.paths.proc_dir.clone();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str() else {
                continue;
            };
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            path.push(pid);
            path.push("comm");
            let has_comm = self.read(&path);
            path.pop();
            if !has_comm {
                path.pop();
                continue;
            }
            let comm = self.buf.trim_end_matches('\n');
            let matched: Option<&String> = names.iter().find(|n| comm == n.as_str()).or_else(|| {
                names
                    .iter()
                    .find(|n| n.len() > 15 && n.as_bytes().get(..15) == Some(comm.as_bytes()))
            });
            let Some(name) = matched else {
                path.pop();
                continue;
            };
            if name.len() > 15 {
                path.push("cmdline");
                let ok = self.read(&path) && cmdline_program(&self.buf) == Some(name.as_str());
                path.pop();
                if !ok {
                    path.pop();
                    continue;
                }
            }
            path.push("stat");
            let state = if self.read(&path) {
                parse_stat_state(&self.buf)
            } else {
                ProcessState::Missing
            };
            path.pop();
            path.pop();
            if let Some(current) = out.get_mut(name)
                && rank(state) > rank(*current)
            {
                *current = state;
            }
        }
    }
}

/// `dir` joined with each ancestor of `rel` (an absolute cgroup path), leaf first.
fn ancestors(dir: &Path, rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut rel = rel.trim_end_matches('/');
    loop {
        let trimmed = rel.trim_start_matches('/');
        out.push(if trimmed.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(trimmed)
        });
        if trimmed.is_empty() {
            break;
        }
        rel = match rel.rfind('/') {
            Some(i) => &rel[..i],
            None => "",
        };
    }
    out
}

/// `cpu.max`: `"<quota> <period>"` or `"max <period>"`; CPUs or `None` when unlimited.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next().unwrap_or("100000").parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Busy and total jiffies of the `cpu` line of `/proc/stat`. Idle is `idle + iowait`;
/// guest time is already counted in user time and is left out of the total.
fn parse_proc_stat_cpu(text: &str) -> (u64, u64) {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let mut total = 0u64;
    let mut idle = 0u64;
    for (i, v) in line.split_whitespace().skip(1).take(8).enumerate() {
        let v: u64 = v.parse().unwrap_or(0);
        total = total.saturating_add(v);
        if i == 3 || i == 4 {
            idle = idle.saturating_add(v);
        }
    }
    (total.saturating_sub(idle), total)
}

/// The three load averages of `/proc/loadavg`.
fn parse_loadavg(text: &str) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (slot, v) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = v.parse().unwrap_or(0.0);
    }
    out
}

/// Bytes read and written, summed over the whole disks of `/proc/diskstats`: loop, ram
/// and device-mapper devices are left out, and so are partitions of a listed disk
/// (`sda1` of `sda`, `nvme0n1p1` of `nvme0n1`), which the disk already counts.
fn parse_diskstats(text: &str) -> (u64, u64) {
    let rows: Vec<(&str, u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let read = f[5].parse::<u64>().ok()?;
            let written = f[9].parse::<u64>().ok()?;
            Some((f[2], read, written))
        })
        .collect();
    let is_partition = |name: &str| {
        rows.iter().any(|(disk, _, _)| {
            *disk != name && name.starts_with(disk) && {
                let rest = &name[disk.len()..];
                let digits = rest.strip_prefix('p').unwrap_or(rest);
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            }
        })
    };
    let mut read = 0u64;
    let mut written = 0u64;
    for (name, r, w) in &rows {
        if name.starts_with("loop")
            || name.starts_with("ram")
            || name.starts_with("dm-")
            || is_partition(name)
        {
            continue;
        }
        // Sectors of /proc/diskstats are 512 bytes whatever the device's sector size.
        read = read.saturating_add(r.saturating_mul(512));
        written = written.saturating_add(w.saturating_mul(512));
    }
    (read, written)
}

/// Bytes received and sent over every interface of `/proc/net/dev` but loopback.
fn parse_net_dev(text: &str) -> (u64, u64) {
    let mut recv = 0u64;
    let mut sent = 0u64;
    for line in text.lines().skip(2) {
        let Some((iface, rest)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let mut f = rest.split_whitespace();
        let r = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let s = f.nth(7).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        recv = recv.saturating_add(r);
        sent = sent.saturating_add(s);
    }
    (recv, sent)
}

/// The state letter of `/proc/<pid>/stat` (the field after the parenthesised name,
/// which may itself contain spaces and parentheses).
fn parse_stat_state(text: &str) -> ProcessState {
    let Some(close) = text.rfind(')') else {
        return ProcessState::Unknown;
    };
    match text[close + 1..].trim_start().chars().next() {
        Some('R') => ProcessState::Running,
        // Uninterruptible sleep (waiting for I/O) is a sleep: transient, and healthy.
        Some('S' | 'D') => ProcessState::Sleeping,
        Some('I') => ProcessState::Idle,
        Some('W' | 'K') => ProcessState::Waking,
        Some('T' | 't') => ProcessState::Stopped,
        Some('Z') => ProcessState::Zombie,
        Some('X' | 'x') => ProcessState::Dead,
        _ => ProcessState::Unknown,
    }
}

/// The file name of the first argument of a `/proc/<pid>/cmdline`.
fn cmdline_program(cmdline: &str) -> Option<&str> {
    let first = cmdline.split('\0').next()?;
    // Programs that rewrite their title (redis-server) put everything in argv[0].
    let first = first.split(' ').next()?;
    Some(first.rsplit('/').next().unwrap_or(first)).filter(|s| !s.is_empty())
}

/// Which state to report when several processes share a name: healthy beats unhealthy,
/// and any process found beats none.
fn rank(state: ProcessState) -> u8 {
    match state {
        ProcessState::Running => 9,
        ProcessState::Sleeping => 8,
        ProcessState::Idle => 7,
        ProcessState::Waking => 6,
        ProcessState::Stopped => 5,
        ProcessState::Unknown => 4,
        ProcessState::Zombie => 3,
        ProcessState::Dead => 2,
        ProcessState::Missing => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        // total 980 (first 8 fields), idle 820
        assert_eq!(parse_proc_stat_cpu(stat), (160, 980));
        assert_eq!(parse_loadavg("0.50 1.25 2.00 3/400 1234\n"), [0.5, 1.25, 2.0]);
        let disks = "   8       0 sda 10 0 100 0 20 0 200 0 0 0 0\n   8       1 sda1 9 0 90 0 19 0 190 0 0 0 0\n 259 0 nvme0n1 1 0 4 0 1 0 8 0 0 0 0\n 259 1 nvme0n1p1 1 0 4 0 1 0 8 0 0 0 0\n   7 0 loop0 5 0 1000 0 0 0 0 0 0 0 0\n";
        assert_eq!(parse_diskstats(disks), (104 * 512, 208 * 512));
        let net = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n  eth1:5 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(net), (1005, 2007));
        assert_eq!(
            parse_stat_state("42 (my (odd) proc) S 1 2 3"),
            ProcessState::Sleeping
        );
        assert_eq!(parse_stat_state("42 (z) Z 1"), ProcessState::Zombie);
        assert_eq!(parse_stat_state("42 (t) T 1"), ProcessState::Stopped);
        assert_eq!(parse_stat_state("garbage"), ProcessState::Unknown);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(
            cmdline_program("/usr/bin/redis-server 127.0.0.1:6789\0\0"),
            Some("redis-server")
        );
        assert_eq!(
            cmdline_program("/opt/x/very-long-process-name\0--flag\0"),
            Some("very-long-process-name")
        );
    }

    #[test]
    fn cgroup_ancestors_run_leaf_to_root() {
        let root = Path::new("/cg");
        assert_eq!(
            ancestors(root, "/a/b"),
            vec![
                PathBuf::from("/cg/a/b"),
                PathBuf::from("/cg/a"),
                PathBuf::from("/cg")
            ]
        );
        assert_eq!(ancestors(root, "/"), vec![PathBuf::from("/cg")]);
    }
}

//! Where CloudTik's files live on a node, the core services' start and stop commands,
//! and the bootstrap file the head receives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::command::shell_quote;

/// The state store's port on the head (CloudTik's).
pub const DEFAULT_REDIS_PORT: u16 = 6789;

/// Environment variables the core commands read (set by the updater on every command).
pub mod env {
    /// The node's provider id; the agent reports under it.
    pub const NODE_ID: &str = "CLOUDTIK_NODE_ID";
    /// The node's internal IP.
    pub const NODE_IP: &str = "CLOUDTIK_NODE_IP";
    /// The node type.
    pub const NODE_TYPE: &str = "CLOUDTIK_NODE_TYPE";
    /// The head's internal IP.
    pub const HEAD_IP: &str = "CLOUDTIK_HEAD_IP";
    /// The state store's password (masked in logs: its name contains PASSWORD).
    pub const REDIS_PASSWORD: &str = "CLOUDTIK_REDIS_PASSWORD";
    /// The state store's port.
    pub const REDIS_PORT: &str = "CLOUDTIK_REDIS_PORT";
}

/// Paths on a node, all under `~/cloudtik` of the SSH user (`/root` for root, else
/// `/home/<user>`), and the `cloudtik-node` program.
///
/// | path | what |
/// |---|---|
/// | `cloudtik/bootstrap.yaml` | the head's bootstrap config ([`HeadBootstrap`], mode 0600) |
/// | `cloudtik/cluster.json` | the cluster config the head's controller runs with |
/// | `cloudtik/runtimes.json` | the cluster's runtimes as data, for runtimes the head's program lacks |
/// | `cloudtik/keys/cluster_key` (+`.pub`) | the cluster's key, for the head to reach workers |
/// | `cloudtik/head/` | redis-server's config, data and log |
/// | `cloudtik/services/head.json`, `agent.json` | the node's service (command, env, log) for `cloudtik-node supervise` (mode 0600) |
/// | `cloudtik/logs/head.log`, `cloudtik/logs/agent.log` | the core services' logs |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    home: String,
    node_binary: String,
}

impl NodeLayout {
    /// The layout for the SSH user `user`, running `node_binary` (a path on the node).
    pub fn new(user: &str, node_binary: impl Into<String>) -> Self {
        let home = if user == "root" {
            "/root".to_string()
        } else {
            format!("/home/{user}")
        };
        NodeLayout {
            home,
            node_binary: node_binary.into(),
        }
    }

    /// The layout under the home folder `home` (of the user running this), running
    /// `node_binary`: for programs on the node, which know their `$HOME`.
    pub fn at_home(home: impl Into<String>, node_binary: impl Into<String>) -> Self {
        NodeLayout {
            home: home.into(),
            node_binary: node_binary.into(),
        }
    }

    /// `~/cloudtik`.
    pub fn dir(&self) -> String {
        format!("{}/cloudtik", self.home)
    }
    /// The head's bootstrap config.
    pub fn bootstrap_file(&self) -> String {
        format!("{}/bootstrap.yaml", self.dir())
    }
    /// The cluster config of the head's controller.
    pub fn cluster_file(&self) -> String {
        format!("{}/cluster.json", self.dir())
    }
    /// The runtimes of the cluster as data ([`RuntimeSnapshot`]s, JSON), for the head's
    /// controller to set workers up with runtimes its node program lacks.
    ///
    /// [`RuntimeSnapshot`]: crate::runtime::snapshot::RuntimeSnapshot
    pub fn runtimes_file(&self) -> String {
        format!("{}/runtimes.json", self.dir())
    }
    /// The folder of the cluster's key pair.
    pub fn keys_dir(&self) -> String {
        format!("{}/keys", self.dir())
    }
    /// The cluster's private key on the head.
    pub fn private_key_file(&self) -> String {
        format!("{}/cluster_key", self.keys_dir())
    }
    /// The cluster's public key on the head.
    pub fn public_key_file(&self) -> String {
        format!("{}/cluster_key.pub", self.keys_dir())
    }
    /// The head's known-hosts file for workers.
    pub fn known_hosts_file(&self) -> String {
        format!("{}/known_hosts", self.dir())
    }
    /// The head's redis folder.
    pub fn head_dir(&self) -> String {
        format!("{}/head", self.dir())
    }
    /// The logs folder.
    pub fn log_dir(&self) -> String {
        format!("{}/logs", self.dir())
    }
    /// The head services' log (controller included).
    pub fn head_log(&self) -> String {
        format!("{}/head.log", self.log_dir())
    }
    /// The agent's log on workers.
    pub fn agent_log(&self) -> String {
        format!("{}/agent.log", self.log_dir())
    }
    /// The `cloudtik-node` program on the node.
    pub fn node_binary(&self) -> &str {
        &self.node_binary
    }

    /// The folder of the node's service files (`<name>.json`, read by `cloudtik-node
    /// supervise`).
    pub fn services_dir(&self) -> String {
        format!("{}/services", self.dir())
    }
    /// The service file of `service` (`head` or `agent`).
    pub fn service_file(&self, service: &str) -> String {
        format!("{}/{service}.json", self.services_dir())
    }
    /// The systemd unit that runs the supervisor of `service` on nodes with systemd.
    pub fn systemd_unit(service: &str) -> String {
        format!("cloudtik-{service}.service")
    }

    /// Stops `cloudtik-node <service>` and its supervisor: the systemd unit if there is
    /// one, then SIGTERM to both (the supervisor stops the service and restarts nothing
    /// once asked to stop), waiting up to 30 s for them to exit, then SIGKILL. Exits 0
    /// whether or not they ran.
    pub fn stop_service_command(&self, service: &str) -> String {
        // Anchored at the program path so the shell running this does not match itself.
        let service_pattern = shell_quote(&format!("^{} {service}( |$)", self.node_binary));
        let supervisor_pattern = shell_quote(&format!(
            "^{} supervise --service-file {}( |$)",
            self.node_binary,
            self.service_file(service)
        ));
        let unit = Self::systemd_unit(service);
        format!(
            "if [ -f /etc/systemd/system/{unit} ] && [ -d /run/systemd/system ]; then \
             S=; [ \"$(id -u)\" = 0 ] || S='sudo -n'; $S systemctl stop {unit} 2>/dev/null; fi; \
             pkill -TERM -f {supervisor_pattern}; pkill -TERM -f {service_pattern}; i=0; \
             while {{ pgrep -f {supervisor_pattern} || pgrep -f {service_pattern}; }} >/dev/null && [ $i -lt 300 ]; do \
             sleep 0.1; i=$((i+1)); done; pkill -KILL -f {supervisor_pattern}; pkill -KILL -f {service_pattern}; true"
        )
    }

    /// Writes the service file of `service` for `command` (keeping the current values of
    /// `env`), then runs its supervisor: as a systemd unit (enabled, so it starts at
    /// boot) where systemd is PID 1 and the user is root or may `sudo -n`, else in the
    /// background (the virtual provider's containers start it at boot, see
    /// [`NodeLayout::boot_command`]).
    fn supervised_start_command(&self, service: &str, log: &str, env: &[&str], command: &str) -> String {
        let bin = shell_quote(&self.node_binary);
        let file = shell_quote(&self.service_file(service));
        let env: String = env.iter().map(|e| format!(" --env {e:#}")).collect();
        let unit = Self::systemd_unit(service);
        let unit_text = [
            "[Unit]".to_string(),
            format!("Description=CloudTik {service} (cloudtik-node supervise)"),
            "After=network-online.target".into(),
            "Wants=network-online.target".into(),
            "[Service]".into(),
            format!("User={}", self.user()),
            format!(
                "ExecStart=\"{}\" supervise --service-file \"{}\"",
                self.node_binary,
                self.service_file(service)
            ),
            "KillMode=mixed".into(),
            "TimeoutStopSec=40".into(),
            "Restart=always".into(),
            "RestartSec=2".into(),
            "[Install]".into(),
            "WantedBy=multi-user.target".into(),
        ]
        .iter()
        .map(|l| shell_quote(l))
        .collect::<Vec<_>>()
        .join(" ");
        format!(
            "mkdir -p {logs} && {stop}; {bin} supervise --service-file {file} --log-file {log}{env} --write-only -- \
             {command} && if [ -d /run/systemd/system ] && {{ [ \"$(id -u)\" = 0 ] || sudo -n true 2>/dev/null; }}; then \
             S=; [ \"$(id -u)\" = 0 ] || S='sudo -n'; printf '%s\\n' {unit_text} | $S tee /etc/systemd/system/{unit} >/dev/null \
             && $S systemctl daemon-reload && $S systemctl enable {unit} 2>/dev/null && $S systemctl restart {unit}; \
             else nohup setsid {bin} supervise --service-file {file} >/dev/null 2>&1 < /dev/null & fi",
            logs = shell_quote(&self.log_dir()),
            stop = self.stop_service_command(service),
            log = shell_quote(log),
        )
    }

    /// The SSH user's name (from the home folder).
    fn user(&self) -> &str {
        if self.home == "/root" {
            "root"
        } else {
            self.home.trim_start_matches("/home/")
        }
    }

    /// (Re)starts the head's services under their supervisor: redis-server, the head's
    /// agent and the cluster controller (`cloudtik-node head`).
    pub fn head_start_command(&self) -> String {
        let command = format!(
            "{bin} head --bootstrap-config {boot} --dir {dir} --node-id \"${id}\" --node-ip \"${ip}\"",
            bin = shell_quote(&self.node_binary),
            boot = shell_quote(&self.bootstrap_file()),
            dir = shell_quote(&self.head_dir()),
            id = env::NODE_ID,
            ip = env::NODE_IP,
        );
        self.supervised_start_command(
            "head",
            &self.head_log(),
            &[crate::runtime::node::RUNTIME_CONFIG_ENV],
            &command,
        )
    }

    /// (Re)starts a worker's agent under its supervisor; the password comes from
    /// `$CLOUDTIK_REDIS_PASSWORD` (kept in the service file, mode 0600).
    pub fn agent_start_command(&self) -> String {
        let command = format!(
            "{bin} agent --redis-address \"${head}:${port}\" --node-id \"${id}\" --node-ip \"${ip}\" --node-type \"${ty}\"",
            bin = shell_quote(&self.node_binary),
            head = env::HEAD_IP,
            port = env::REDIS_PORT,
            id = env::NODE_ID,
            ip = env::NODE_IP,
            ty = env::NODE_TYPE,
        );
        self.supervised_start_command(
            "agent",
            &self.agent_log(),
            &[env::REDIS_PASSWORD, crate::runtime::node::RUNTIME_CONFIG_ENV],
            &command,
        )
    }

    /// The log of a runtime service.
    pub fn service_log(&self, service: &str) -> String {
        format!("{}/{service}.log", self.log_dir())
    }

    /// (Re)starts a runtime's service ([`NodeService`](crate::runtime::NodeService))
    /// under its supervisor, as the core services are: its service file keeps its
    /// command line and environment, its output goes to [`service_log`](Self::service_log).
    pub fn runtime_service_start_command(&self, service: &crate::runtime::NodeService) -> String {
        let exports: String = service
            .env
            .iter()
            .map(|(k, v)| format!("export {k}={}; ", shell_quote(v)))
            .collect();
        let names: Vec<&str> = service.env.keys().map(String::as_str).collect();
        let command = service
            .argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{exports}{}",
            self.supervised_start_command(&service.name, &self.service_log(&service.name), &names, &command)
        )
    }

    /// What a node without systemd runs at boot (the virtual provider's containers): a
    /// supervisor for every service file, so a restarted node runs its services again.
    pub fn boot_command(&self) -> String {
        format!(
            "for f in {dir}/*.json; do [ -f \"$f\" ] && nohup setsid {bin} supervise --service-file \"$f\" \
             >/dev/null 2>&1 < /dev/null & done",
            dir = shell_quote(&self.services_dir()),
            bin = shell_quote(&self.node_binary),
        )
    }
}

/// The bootstrap config the head's `cloudtik-node head` reads (`cloudtik/bootstrap.yaml`).
/// Every field is optional for the reader; the cluster operations fill them all.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HeadBootstrap {
    /// The cluster's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// The head's internal IP: redis-server binds to it and loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_ip: Option<String>,
    /// The state store's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_port: Option<u16>,
    /// Where agents find the state store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_address: Option<String>,
    /// The state store's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password: Option<String>,
    /// The cluster's encryption key (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
    /// An agent's node type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    /// The head's node type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_node_type: Option<String>,
    /// Seconds between heartbeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_s: Option<f64>,
    /// Seconds between metrics and process-health reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_interval_s: Option<f64>,
    /// Resources replacing or adding to the detected ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::Resources>,
    /// Processes whose health to report, besides the core ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// The cluster config (JSON) the head's controller runs with; without it the head
    /// runs no controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_config: Option<PathBuf>,
    /// The private key the head reaches workers with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_private_key: Option<PathBuf>,
    /// The public key authorized on workers the head launches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<PathBuf>,
    /// The head's known-hosts file for workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// The `cloudtik-node` program on workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_binary: Option<String>,
    /// Install the head's own `cloudtik-node` on workers that lack it or hold another
    /// build (see [`NodeBootstrap`](crate::updater::NodeBootstrap)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_node_program: Option<bool>,
    /// Seconds between controller passes (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_interval_s: Option<f64>,
    /// Seconds without a heartbeat after which a node is lost (default 30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_s: Option<f64>,
}

impl std::fmt::Debug for HeadBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadBootstrap")
            .field("cluster_name", &self.cluster_name)
            .field("head_ip", &self.head_ip)
            .field("redis_port", &self.redis_port)
            .field("cluster_config", &self.cluster_config)
            .field("secrets", &"..")
            .finish_non_exhaustive()
    }
}

impl HeadBootstrap {
    /// Reads a bootstrap file (YAML or JSON); no file gives the empty config.
    pub fn load(path: Option<&std::path::Path>) -> crate::Result<Self> {
        let Some(path) = path else {
            return Ok(HeadBootstrap::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::NotFound,
                format!("cannot read the bootstrap config {}", path.display()),
            )
            .with_source(e)
        })?;
        serde_yaml_ng::from_str(&text).map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::InvalidConfig,
                format!("invalid bootstrap config {}: {e:#}", path.display()),
            )
        })
    }

    /// Where agents find the state store: `redis_address`, else `head_ip:redis_port`.
    pub fn redis_address(&self) -> Option<String> {
        self.redis_address.clone().or_else(|| {
            self.head_ip
                .as_ref()
                .map(|ip| format!("{ip}:{}", self.redis_port.unwrap_or(DEFAULT_REDIS_PORT)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_user_and_commands_quote_them() {
        let l = NodeLayout::new("ubuntu", "/opt/cloudtik node");
        assert_eq!(l.bootstrap_file(), "/home/ubuntu/cloudtik/bootstrap.yaml");
        assert!(l.head_start_command().contains("'/opt/cloudtik node' head"));
        assert_eq!(NodeLayout::new("root", "x").dir(), "/root/cloudtik");
        let agent = l.agent_start_command();
        assert!(
            agent.contains("\"$CLOUDTIK_HEAD_IP:$CLOUDTIK_REDIS_PORT\""),
            "{agent}"
        );
        assert!(
            !agent.contains("--redis-password")
                && agent.contains("--env CLOUDTIK_REDIS_PASSWORD --env CLOUDTIK_RUNTIME_CONFIG --write-only"),
            "the password comes from the environment, into the service file: {agent}"
        );
        // Both run under the supervisor, from their service files.
        assert!(agent.contains(
            "supervise --service-file /home/ubuntu/cloudtik/services/agent.json --log-file /home/ubuntu/cloudtik/logs/agent.log"
        ));
        let head = l.head_start_command();
        assert!(head.contains("nohup setsid '/opt/cloudtik node' supervise --service-file /home/ubuntu/cloudtik/services/head.json >"));
        assert!(head.contains("systemctl enable cloudtik-head.service"), "{head}");
        assert!(
            l.boot_command()
                .starts_with("for f in /home/ubuntu/cloudtik/services/*.json;"),
            "{}",
            l.boot_command()
        );
    }

    #[test]
    fn the_stop_command_ends_a_running_service_and_tolerates_none() {
        let dir = tempfile::tempdir().unwrap();
        // A fake program named like the node binary, sleeping as "agent".
        let bin = dir.path().join("fake-node");
        std::fs::write(&bin, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let l = NodeLayout::new("root", bin.display().to_string());
        // `sh -c 'exec sleep'` keeps its argv only until exec: run through bash -c with argv.
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("exec -a '{} agent --x' sleep 30", bin.display()))
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(l.stop_service_command("agent"))
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(!exit.success(), "the service was stopped by a signal");
        // Nothing running: still exit 0.
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(l.stop_service_command("agent"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn bootstrap_round_trips_and_hides_secrets_in_debug() {
        let b = HeadBootstrap {
            head_ip: Some("10.0.0.2".into()),
            redis_password: Some("hunter2".into()),
            ..Default::default()
        };
        let text = serde_yaml_ng::to_string(&b).unwrap();
        let back: HeadBootstrap = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.redis_address().as_deref(), Some("10.0.0.2:6789"));
        assert!(!format!("{b:?}").contains("hunter2"));
        assert!(serde_yaml_ng::from_str::<HeadBootstrap>("redis_adress: x").is_err());
    }
}

//! The EC2 twin: moto (the fake EC2 of the provider's tests) behind a proxy that turns the
//! instances moto launches into containers of the twin image (see the [parent](super)).
//!
//! The proxy listens on the twin network's gateway IP, so the host (the `cloudtik` CLI)
//! and the instances (a head's controller) reach it at the same [`AwsTwin::endpoint_url`].
//! It forwards every EC2 query request to moto on loopback, one request per connection
//! (as `counting_proxy.rs`, whose request reading it reuses), and acts on moto's
//! successful answers:
//!
//! | request | the twin |
//! |---|---|
//! | `ImportKeyPair` | remembers `KeyName` -> the public key (base64-decoded) |
//! | `RunInstances` | parses each instance's `instanceId` and `privateIpAddress` from the answer and starts its container (user, the key of `KeyName`, the instance-role environment) **before** returning the answer |
//! | `StopInstances` | `docker stop` |
//! | `StartInstances` | `docker start` (moto keeps the private IP, so does the container) |
//! | `RebootInstances` | `docker restart` |
//! | `TerminateInstances` | `docker rm -f -v` |
//!
//! When a container cannot be started, the caller gets an EC2 error
//! `CloudTwin.ContainerFailed` (HTTP 400, not retried) with Docker's message, and the
//! failure is kept in [`AwsTwin::failures`] (moto has launched the instance anyway).
//!
//! Moto puts an instance launched into a subnet at the first free address after the
//! subnet's network address and the 3 addresses AWS reserves (`.4`, `.5`... of a /24; a
//! terminated instance's address is reused). The Docker gateway, the VPC range's first
//! host, is the reserved `.1` of the VPC's first subnet, so they never collide. Without a
//! subnet moto picks a random `10.x.y.z`: the twin then fails the launch with a clear
//! message instead of starting a container outside the network.
//!
//! # From an end-to-end test of the `cloudtik` CLI
//!
//! ```text
//! let twin = AwsTwin::start(None, AwsTwinOptions { package_cache: Some(PackageCache::new(dir)?), ..Default::default() })
//!     .await?;                                  // None: skipped outside CI
//! let vpc_id = twin.create_working_vpc().await;  // the VPC "the CLI runs in"
//! ```
//!
//! and in the workspace and cluster configs:
//!
//! ```yaml
//! provider:
//!   type: aws
//!   region: us-east-1                 # twin.region()
//!   endpoint_url: http://10.N.0.1:P   # twin.endpoint_url(): the CLI and the head's controller
//!   use_internal_ips: true            # only private IPs exist (no public address is reachable)
//!   working_vpc_id: vpc-...           # twin.create_working_vpc()
//!   vpc_cidr: 10.N.0.0/16             # twin.vpc_cidr(), when the workspace makes its own VPC
//! auth:
//!   ssh_user: ubuntu                  # AWS's default; AwsTwinOptions::ssh_user must match
//! ```
//!
//! `use_internal_ips: true` makes the workspace use the working VPC (CloudTik's
//! `use_working_vpc` defaults to true then): without `working_vpc_id` the provider looks
//! for the EC2 instance with this machine's address, which moto does not have. The
//! workspace's subnets are free /24s of that VPC, i.e. of the twin network. The CLI needs
//! the credentials moto accepts in its environment (`AWS_ACCESS_KEY_ID=testing`,
//! `AWS_SECRET_ACCESS_KEY=testing`, `AWS_EC2_METADATA_DISABLED=true`); the instances get
//! them in `/etc/environment`. The instances have no CloudTik software, no rsync and no
//! python: the cluster's setup must install them (apt reaches the Debian mirror through
//! Docker's NAT).
//!
//! Not handled: a `KeyName` imported straight into moto (not through the proxy), a key
//! pair made with `CreateKeyPair`, and `KeyName` inside a launch template: such
//! instances get no authorized key.
#![allow(dead_code)] // each test file uses a part

#[path = "../../../cloudtik-providers/tests/moto/counting_proxy.rs"]
mod counting_proxy;
#[path = "../../../cloudtik-providers/tests/moto/mod.rs"]
pub(crate) mod moto;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{
    InstanceSpec, Mount, PackageCache, TWIN_IMAGES_DIR, TwinHost, TwinInstance, TwinNetwork,
    docker_available, ensure_image, required,
};
use counting_proxy::{param, raise_min_count, read_request};

/// The region of the twin (moto's and the harness's clients').
pub(crate) const REGION: &str = "us-east-1";

/// How an EC2 twin makes its instances.
#[derive(Debug, Clone)]
pub(crate) struct AwsTwinOptions {
    /// The SSH user the image's cloud-init stand-in makes (AWS's default for CloudTik is
    /// `ubuntu`; `root` means root).
    pub(crate) ssh_user: String,
    /// Bind mounts of every instance.
    pub(crate) mounts: Vec<Mount>,
    /// A package cache shared by the instances (mounted besides `mounts`).
    pub(crate) package_cache: Option<PackageCache>,
    /// Make moto launch like EC2: `MinCount` raised to `MaxCount` in `RunInstances`
    /// (moto launches `MinCount`, EC2 as many as it can up to `MaxCount`).
    pub(crate) ec2_max_count: bool,
    /// Added to the instances' `/etc/environment` besides the instance-role stand-in
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_EC2_METADATA_DISABLED`,
    /// `AWS_DEFAULT_REGION`).
    pub(crate) extra_environment: Vec<(String, String)>,
    /// Every instance can run its own Docker engine, as a node in container mode does
    /// (see [`InstanceSpec::node_engine`] and the [parent](super)'s docs).
    pub(crate) node_engine: bool,
    /// A folder of image archives (`docker save`, see [`super::save_image_archive`])
    /// mounted read-only at [`TWIN_IMAGES_DIR`] on every instance: no registry is
    /// reachable, so this stands in for the registry a real node pulls from.
    pub(crate) image_archives: Option<PathBuf>,
}

impl Default for AwsTwinOptions {
    fn default() -> Self {
        AwsTwinOptions {
            ssh_user: "ubuntu".to_string(),
            mounts: Vec::new(),
            package_cache: None,
            ec2_max_count: false,
            extra_environment: Vec::new(),
            node_engine: false,
            image_archives: None,
        }
    }
}

/// What the proxy's connections share.
#[derive(Debug)]
struct Shared {
    host: TwinHost,
    upstream: String,
    options: AwsTwinOptions,
    /// `KeyName` -> OpenSSH public key line, from `ImportKeyPair`.
    keys: Mutex<HashMap<String, String>>,
    failures: Mutex<Vec<String>>,
    closed: AtomicBool,
}

/// A running EC2 twin; removes its containers and network on drop (moto is killed).
pub(crate) struct AwsTwin {
    shared: Arc<Shared>,
    endpoint: String,
    accept: JoinHandle<()>,
    moto: moto::Moto,
}

impl std::fmt::Debug for AwsTwin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsTwin")
            .field("endpoint", &self.endpoint)
            .field("moto", &self.moto.url)
            .field("network", self.shared.host.network())
            .finish_non_exhaustive()
    }
}

impl AwsTwin {
    /// Starts moto, a twin network with the range `vpc_cidr` (a free `10.N.0.0/16` when
    /// `None`, see the [parent](super)'s docs) and the proxy; builds the twin image when
    /// missing. `None` (after saying why) when Docker, the image or moto is unavailable
    /// outside CI; panics under `CI=true` then. Needs a tokio runtime (the proxy runs on
    /// it).
    pub(crate) async fn start(vpc_cidr: Option<&str>, options: AwsTwinOptions) -> Option<AwsTwin> {
        required("Docker", docker_available())?;
        let image = required("the twin image (scripts/build-twin-image.sh)", ensure_image())?;
        let moto = moto::start_moto()?;
        let network = match vpc_cidr {
            Some(cidr) => TwinNetwork::create(cidr),
            None => TwinNetwork::create_free(),
        }
        .unwrap_or_else(|e| panic!("creating the twin network: {e}"));
        let gateway = network.gateway();
        let host = TwinHost::new(network, image);
        let listener = TcpListener::bind((gateway, 0))
            .await
            .unwrap_or_else(|e| panic!("binding the twin proxy on the gateway {gateway}: {e}"));
        let endpoint = format!("http://{}", listener.local_addr().expect("a bound address"));
        let shared = Arc::new(Shared {
            host,
            upstream: moto.url.trim_start_matches("http://").to_string(),
            options,
            keys: Mutex::default(),
            failures: Mutex::default(),
            closed: AtomicBool::new(false),
        });
        let task_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, Arc::clone(&task_shared)));
            }
        });
        Some(AwsTwin {
            shared,
            endpoint,
            accept,
            moto,
        })
    }

    /// The EC2 endpoint for clients on the host and on the instances:
    /// `http://<gateway IP>:<port>` (a cluster config's `provider.endpoint_url`).
    pub(crate) fn endpoint_url(&self) -> &str {
        &self.endpoint
    }

    /// moto itself, on loopback (requests there bypass the twin).
    pub(crate) fn moto_url(&self) -> &str {
        &self.moto.url
    }

    /// The twin network's range (a workspace config's `provider.vpc_cidr`).
    pub(crate) fn vpc_cidr(&self) -> String {
        self.shared.host.network().cidr().to_string()
    }

    /// This host's address on the twin network.
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        self.shared.host.network().gateway()
    }

    pub(crate) fn region(&self) -> &str {
        REGION
    }

    pub(crate) fn host(&self) -> &TwinHost {
        &self.shared.host
    }

    /// An EC2 client through the proxy (what it does happens to the containers too).
    pub(crate) async fn raw_client(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&moto::sdk_config(&self.endpoint).await)
    }

    /// Creates a VPC with the twin's range (tagged `Name=cloudtik-twin-working`) and
    /// returns its id: the "working VPC" for a config's `provider.working_vpc_id` (see
    /// the module docs).
    pub(crate) async fn create_working_vpc(&self) -> String {
        let tags = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Vpc)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("Name")
                    .value("cloudtik-twin-working")
                    .build(),
            )
            .build();
        let vpc = self
            .raw_client()
            .await
            .create_vpc()
            .cidr_block(self.vpc_cidr())
            .tag_specifications(tags)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateVpc {} on the twin: {e:?}", self.vpc_cidr()));
        vpc.vpc()
            .and_then(|v| v.vpc_id())
            .expect("CreateVpc answers the VPC's id")
            .to_string()
    }

    /// The provider's settings for the twin's endpoint.
    pub(crate) fn settings(&self) -> cloudtik_providers::aws::AwsSettings {
        moto::settings(&self.endpoint)
    }

    /// The instance containers (running or not).
    pub(crate) fn instances(&self) -> Vec<TwinInstance> {
        self.shared
            .host
            .instances()
            .unwrap_or_else(|e| panic!("listing the twin's containers: {e}"))
    }

    /// The public key the twin knows for `key_name`.
    pub(crate) fn public_key(&self, key_name: &str) -> Option<String> {
        self.shared.keys.lock().unwrap().get(key_name).cloned()
    }

    /// What went wrong with containers so far (also answered to the caller as errors).
    pub(crate) fn failures(&self) -> Vec<String> {
        self.shared.failures.lock().unwrap().clone()
    }

    /// Stops the proxy, removes the containers and the network.
    pub(crate) fn cleanup(&self) -> Result<(), String> {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.accept.abort();
        self.shared.host.cleanup()
    }
}

impl Drop for AwsTwin {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("twin cleanup: {e}");
        }
    }
}

/// Percent-decoding of a form value (`+` is a space).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded values of the parameters `<prefix>.1`, `<prefix>.2`...
fn list_param(body: &str, prefix: &str) -> Vec<String> {
    body.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let n = url_decode(k).strip_prefix(prefix)?.strip_prefix('.')?.to_string();
            n.parse::<u32>().ok().map(|_| url_decode(v))
        })
        .collect()
}

fn decoded_param(body: &str, name: &str) -> Option<String> {
    param(body, name).map(url_decode)
}

/// The HTTP status of an answer.
fn status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `(instanceId, privateIpAddress)` of each instance of a `RunInstances` answer: the
/// direct children of the items of `instancesSet` (network interfaces nest their own
/// `privateIpAddress`, which are skipped).
fn run_instances_result(xml: &str) -> Vec<(String, Option<String>)> {
    const OPEN: &str = "<instancesSet>";
    let Some(start) = xml.find(OPEN) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = start + OPEN.len();
    let mut field: Option<(String, usize)> = None;
    let mut item: (Option<String>, Option<String>) = (None, None);
    while let Some(lt) = xml[i..].find('<').map(|p| p + i) {
        let Some(gt) = xml[lt..].find('>').map(|p| p + lt) else {
            break;
        };
        let tag = &xml[lt + 1..gt];
        i = gt + 1;
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            if depth == 0 {
                break; // </instancesSet>
            }
            if depth == 2
                && let Some((open, text_start)) = field.take()
                && open == name
            {
                let text = xml[text_start..lt].trim().to_string();
                match name {
                    "instanceId" => item.0 = Some(text),
                    "privateIpAddress" => item.1 = Some(text),
                    _ => {}
                }
            }
            depth -= 1;
            if depth == 0
                && let (Some(id), ip) = std::mem::take(&mut item)
            {
                out.push((id, ip));
            }
        } else {
            depth += 1;
            if depth == 2 {
                let name = tag.split_whitespace().next().unwrap_or_default().to_string();
                field = Some((name, gt + 1));
            }
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An EC2 error answer (HTTP 400, which the SDK does not retry).
fn error_answer(message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>CloudTwin.ContainerFailed</Code>\
         <Message>{}</Message></Error></Errors><RequestID>cloud-twin</RequestID></Response>",
        xml_escape(message)
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Shared {
    fn fail(&self, message: String) -> Vec<u8> {
        eprintln!("cloud twin: {message}");
        self.failures.lock().unwrap().push(message.clone());
        error_answer(&message)
    }

    fn environment(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_DEFAULT_REGION", REGION),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        env.extend(self.options.extra_environment.iter().cloned());
        env
    }

    fn mounts(&self) -> Vec<Mount> {
        let mut mounts = self.options.mounts.clone();
        if let Some(cache) = &self.options.package_cache {
            mounts.extend(cache.mounts(&self.options.ssh_user));
        }
        if let Some(dir) = &self.options.image_archives {
            mounts.push(Mount::read_only(dir, TWIN_IMAGES_DIR));
        }
        mounts
    }

    /// The specs of the instances of a `RunInstances` answer.
    fn launched(&self, request_body: &str, answer_body: &str) -> Result<Vec<InstanceSpec>, String> {
        let key_name = decoded_param(request_body, "KeyName");
        let authorized_key = match &key_name {
            Some(name) => {
                let key = self.keys.lock().unwrap().get(name).cloned();
                if key.is_none() {
                    eprintln!(
                        "cloud twin: KeyName {name} was not imported through the twin: its instances get no key"
                    );
                }
                key
            }
            None => None,
        };
        let instances = run_instances_result(answer_body);
        if instances.is_empty() {
            return Err("no instance in moto's RunInstances answer".to_string());
        }
        instances
            .into_iter()
            .map(|(id, ip)| {
                let ip: Ipv4Addr = ip
                    .as_deref()
                    .ok_or_else(|| format!("moto gave instance {id} no private IP"))?
                    .parse()
                    .map_err(|e| format!("moto's private IP of instance {id}: {e}"))?;
                self.host
                    .network()
                    .check_instance_ip(ip)
                    .map_err(|e| format!("instance {id}: {e}"))?;
                Ok(InstanceSpec {
                    id,
                    private_ip: ip,
                    ssh_user: self.options.ssh_user.clone(),
                    authorized_key: authorized_key.clone(),
                    environment: self.environment(),
                    mounts: self.mounts(),
                    node_engine: self.options.node_engine,
                })
            })
            .collect()
    }
}

/// moto's answer to `request` (moto closes the connection after it).
async fn forward(upstream: &str, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut moto = TcpStream::connect(upstream).await?;
    moto.write_all(request).await?;
    let mut answer = Vec::new();
    moto.read_to_end(&mut answer).await?;
    Ok(answer)
}

async fn blocking(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .unwrap_or_else(|e| Err(format!("a docker task failed: {e}")))
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let Some((mut request, head_end)) = read_request(&mut client).await else {
        return;
    };
    let body = String::from_utf8_lossy(&request[head_end..]).into_owned();
    let action = param(&body, "Action").unwrap_or("?").to_string();
    if shared.options.ec2_max_count && action == "RunInstances" {
        request = raise_min_count(request, head_end);
    }
    let Ok(mut answer) = forward(&shared.upstream, &request).await else {
        return;
    };
    if status(&answer) == Some(200) && !shared.closed.load(Ordering::SeqCst) {
        let answer_body = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| String::from_utf8_lossy(&answer[p + 4..]).into_owned())
            .unwrap_or_default();
        if let Some(failed) = act(&shared, &action, &body, &answer_body).await {
            answer = failed;
        }
    }
    let _ = client.write_all(&answer).await;
}

/// Does what `action` means for the containers; an error answer when that failed.
async fn act(shared: &Arc<Shared>, action: &str, body: &str, answer_body: &str) -> Option<Vec<u8>> {
    let op: fn(&TwinHost, &str) -> Result<(), String> = match action {
        "ImportKeyPair" => {
            let name = decoded_param(body, "KeyName")?;
            let material = decoded_param(body, "PublicKeyMaterial")?;
            let key = base64::engine::general_purpose::STANDARD
                .decode(material.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or(material);
            shared.keys.lock().unwrap().insert(name, key.trim().to_string());
            return None;
        }
        "RunInstances" => {
            let specs = match shared.launched(body, answer_body) {
                Ok(specs) => specs,
                Err(e) => return Some(shared.fail(format!("RunInstances: {e}"))),
            };
            return match blocking(shared, move |s| s.host.run_all(&specs)).await {
                Ok(()) => None,
                Err(e) => Some(shared.fail(format!("RunInstances: {e}"))),
            };
        }
        "StopInstances" => TwinHost::stop,
        "StartInstances" => TwinHost::start,
        "RebootInstances" => docker_restart,
        "TerminateInstances" => TwinHost::remove,
        _ => return None,
    };
    let ids = list_param(body, "InstanceId");
    let action = action.to_string();
    match blocking(shared, move |s| s.host.each(&ids, op)).await {
        Ok(()) => None,
        Err(e) => Some(shared.fail(format!("{action}: {e}"))),
    }
}

fn docker_restart(host: &TwinHost, id: &str) -> Result<(), String> {
    super::docker(&["restart", "-t", "5", &host.container_name(id)]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_instances_of_a_run_instances_answer() {
        let xml = "<?xml version=\"1.0\"?><RunInstancesResponse><reservationId>r-1</reservationId>\
            <groupSet/><instancesSet><item><blockDeviceMapping><item><deviceName>/dev/sda1</deviceName></item>\
            </blockDeviceMapping><networkInterfaceSet><item><privateIpAddress>10.5.0.4</privateIpAddress>\
            <privateIpAddressesSet><item><privateIpAddress>10.5.0.4</privateIpAddress></item></privateIpAddressesSet>\
            </item></networkInterfaceSet><instanceId>i-1</instanceId><privateIpAddress>10.5.0.4</privateIpAddress>\
            <tagSet/></item><item><instanceId>i-2</instanceId><privateIpAddress>10.5.0.5</privateIpAddress></item>\
            </instancesSet><requesterId/></RunInstancesResponse>";
        assert_eq!(
            run_instances_result(xml),
            vec![
                ("i-1".to_string(), Some("10.5.0.4".to_string())),
                ("i-2".to_string(), Some("10.5.0.5".to_string())),
            ]
        );
    }

    #[test]
    fn decodes_form_parameters() {
        let body = "Action=TerminateInstances&InstanceId.1=i-1&InstanceId.2=i-2&KeyName=a%2Bb+c";
        assert_eq!(list_param(body, "InstanceId"), vec!["i-1", "i-2"]);
        assert_eq!(decoded_param(body, "KeyName").as_deref(), Some("a+b c"));
    }
}

//! [`RedisStore`]: the state store in a primary redis-server plus optional extra shards.
//!
//! See the [module docs](super) for the key layout and the sharding rule.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisConnectionInfo,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::crypto::EncryptionKey;
use super::lease::check_lease_args;
use super::model::{
    ClusterEvent, NodeHeartbeat, NodeMetrics, NodeProcesses, PendingLaunch, ResourceDemands, ResourceRequest,
    StandingRequests, check_key,
};
use super::row::{decode_heartbeat, encode_heartbeat, heartbeat_node_id};
use super::{DEFAULT_EVENT_CAPACITY, Fence, Lease, LeaseAcquire, StateStore, shard_index};
use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeId;
use crate::resources::Resources;

pub(crate) const HEARTBEATS: &str = "cloudtik:nodes:heartbeat";
pub(crate) const METRICS: &str = "cloudtik:nodes:metrics";
pub(crate) const PROCESSES: &str = "cloudtik:nodes:processes";
pub(crate) const DEMANDS: &str = "cloudtik:resource_demands";
pub(crate) const REQUESTS: &str = "cloudtik:resource_requests";
pub(crate) const REQUESTS_TIME: &str = "cloudtik:resource_requests:time";
pub(crate) const PENDING: &str = "cloudtik:pending_launches";
pub(crate) const SCALING_STATUS: &str = "cloudtik:scaling_status";
pub(crate) const RUNTIME_CONFIG: &str = "cloudtik:runtime_config";
pub(crate) const SECRET_PREFIX: &str = "cloudtik:secret:";
pub(crate) const EVENTS: &str = "cloudtik:events";
pub(crate) const SHARDS: &str = "cloudtik:shards";
pub(crate) const LEASE_PREFIX: &str = "cloudtik:lease:";

/// Takes a lease when absent or expired (a new token from the counter), renews it when
/// the caller holds it. KEYS: lease, counter. ARGV: holder, now, expires_at.
/// Returns {acquired ('1'/'0'), holder, token, acquired_at, renewed_at, expires_at}.
const LUA_ACQUIRE: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token', 'acquired_at', 'renewed_at', 'expires_at')
if cur[1] and cur[5] and tonumber(cur[5]) > tonumber(ARGV[2]) then
  if cur[1] == ARGV[1] then
    redis.call('HSET', KEYS[1], 'renewed_at', ARGV[2], 'expires_at', ARGV[3])
    return {'1', cur[1], cur[2], cur[3], ARGV[2], ARGV[3]}
  end
  return {'0', cur[1], cur[2], cur[3], cur[4], cur[5]}
end
local token = tostring(redis.call('INCR', KEYS[2]))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token, 'acquired_at', ARGV[2], 'renewed_at', ARGV[2], 'expires_at', ARGV[3])
return {'1', ARGV[1], token, ARGV[2], ARGV[2], ARGV[3]}
"#;

/// Renews a lease when holder and token match. KEYS: lease. ARGV: holder, token, now,
/// expires_at. Returns the lease as LUA_ACQUIRE does, or an empty array.
const LUA_RENEW: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token', 'acquired_at')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return {} end
redis.call('HSET', KEYS[1], 'renewed_at', ARGV[3], 'expires_at', ARGV[4])
return {'1', cur[1], cur[2], cur[3], ARGV[3], ARGV[4]}
"#;

/// Deletes a lease when holder and token match. KEYS: lease. ARGV: holder, token.
const LUA_RELEASE: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// Writes a hash field when holder and token match. KEYS: lease, hash. ARGV: holder,
/// token, field, value.
const LUA_FENCED_HSET: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
"#;

fn lease_key(name: &str) -> String {
    format!("{LEASE_PREFIX}{name}")
}

/// A lease from the fields holder, token, acquired_at, renewed_at, expires_at.
fn lease_from(op: &'static str, name: &str, f: &[Option<String>]) -> Result<Option<Lease>> {
    let bad = || {
        Error::new(
            ErrorKind::Unexpected,
            format!("the lease {name} is malformed in the store"),
        )
        .with_operation(op)
    };
    let [
        Some(holder),
        Some(token),
        Some(acquired),
        Some(renewed),
        Some(expires),
    ] = f
    else {
        return if f.iter().all(Option::is_none) {
            Ok(None)
        } else {
            Err(bad())
        };
    };
    let num = |v: &str| v.parse::<f64>().map_err(|_| bad());
    Ok(Some(Lease {
        name: name.to_string(),
        holder: holder.clone(),
        token: token.parse().map_err(|_| bad())?,
        acquired_at: num(acquired)?,
        renewed_at: num(renewed)?,
        expires_at: num(expires)?,
    }))
}

/// The address of one redis-server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisAddress {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl RedisAddress {
    /// An address from host and port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        RedisAddress {
            host: host.into(),
            port,
        }
    }

    /// Parses `host:port` (`[v6]:port` for IPv6).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::config("redis_address", format!("expected host:port, got {text:?}"));
        let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(RedisAddress::new(host, port))
    }
}

impl fmt::Display for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How to reach and use the Redis state store. `Debug` does not show the password.
#[derive(Clone)]
pub struct RedisStoreConfig {
    /// The primary: holds the cluster-wide keys (and the node tables when there are no
    /// extra shards).
    pub primary: RedisAddress,
    /// Extra shards for the node tables.
    pub shards: Vec<RedisAddress>,
    /// When `shards` is empty, read the shard list the head published on the primary
    /// ([`RedisStore::publish_shards`]) and use it. For node agents, which know only the
    /// head's address.
    pub discover_shards: bool,
    /// The password (`AUTH`); the same for every shard.
    pub password: Option<String>,
    /// The cluster's key for runtime config and secrets.
    pub encryption_key: EncryptionKey,
    /// How long one connection attempt may take (default 2 s).
    pub connect_timeout: Duration,
    /// How long one command may wait for its answer (default 5 s).
    pub response_timeout: Duration,
    /// The longest wait between reconnection attempts (default 1 s).
    pub max_reconnect_delay: Duration,
    /// How many events to keep (default [`DEFAULT_EVENT_CAPACITY`]).
    pub event_capacity: usize,
}

impl fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("primary", &self.primary)
            .field("shards", &self.shards)
            .field("discover_shards", &self.discover_shards)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("encryption_key", &self.encryption_key)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

impl RedisStoreConfig {
    /// A config for one redis-server with no password and the default timeouts.
    pub fn new(primary: RedisAddress, encryption_key: EncryptionKey) -> Self {
        RedisStoreConfig {
            primary,
            shards: Vec::new(),
            discover_shards: false,
            password: None,
            encryption_key,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(1),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// Adds an extra shard.
    pub fn with_shard(mut self, shard: RedisAddress) -> Self {
        self.shards.push(shard);
        self
    }

    /// Sets `discover_shards`.
    pub fn with_discover_shards(mut self, discover: bool) -> Self {
        self.discover_shards = discover;
        self
    }

    /// Sets the password.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the connect and response timeouts.
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }

    /// Sets how many events to keep (at least 1).
    pub fn with_event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }
}

#[derive(Clone)]
struct Shard {
    addr: RedisAddress,
    conn: ConnectionManager,
}

/// The state store in Redis: a primary plus optional extra shards, each reached through a
/// [`ConnectionManager`] that reconnects by itself after a server restart.
///
/// While a server is down, calls fail with [`Transient`](ErrorKind::Transient) errors
/// instead of hanging: a call waits for at most four connection attempts (each bounded by
/// the connect timeout, with up to `max_reconnect_delay` between them) and then the
/// response timeout. Once the server is back, the next calls reconnect. [`connect`](RedisStore::connect) checks every server and the password
/// first, so a wrong password fails at once with [`Unauthenticated`](ErrorKind::Unauthenticated).
pub struct RedisStore {
    primary: Shard,
    /// The shards holding the node tables: the extra shards, or the primary alone.
    data: Vec<Shard>,
    key: EncryptionKey,
    event_capacity: usize,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("primary", &self.primary.addr)
            .field(
                "data_shards",
                &self.data.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>(),
            )
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the primary and every extra shard, checking that each answers `PING`
    /// with the password. With `discover_shards` and no shards given, the extra shards
    /// are the ones published on the primary.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self> {
        let primary = connect_shard(&config, &config.primary).await?;
        let mut shards = config.shards.clone();
        if shards.is_empty() && config.discover_shards {
            shards = read_shard_list(&primary).await?;
        }
        let extras = try_join_all(shards.iter().map(|a| connect_shard(&config, a))).await?;
        let data = if extras.is_empty() {
            vec![primary.clone()]
        } else {
            extras
        };
        Ok(RedisStore {
            primary,
            data,
            key: config.encryption_key,
            event_capacity: config.event_capacity.max(1),
        })
    }

    /// Publishes this store's extra shards on the primary (key `cloudtik:shards`, a JSON
    /// array of `host:port`), for stores connecting with `discover_shards`. The head does
    /// this once its shards run. Without extra shards it publishes an empty list.
    pub async fn publish_shards(&self) -> Result<()> {
        let op = "publish_shards";
        let list: Vec<String> = if self.data.len() == 1 && self.data[0].addr == self.primary.addr {
            Vec::new()
        } else {
            self.data.iter().map(|s| s.addr.to_string()).collect()
        };
        self.set_primary(op, SHARDS, encode(op, &list)?).await
    }

    /// The addresses of the shards holding the node tables, in shard-index order.
    pub fn data_shards(&self) -> Vec<RedisAddress> {
        self.data.iter().map(|s| s.addr.clone()).collect()
    }

    /// The data shard holding the rows of `node_id`.
    pub fn shard_of(&self, node_id: &str) -> &RedisAddress {
        &self.data[shard_index(node_id, self.data.len())].addr
    }

    fn data_shard(&self, node_id: &str) -> &Shard {
        &self.data[shard_index(node_id, self.data.len())]
    }

    async fn put_row(&self, op: &'static str, table: &str, node_id: &str, value: Vec<u8>) -> Result<()> {
        let shard = self.data_shard(node_id);
        let mut cmd = redis::cmd("HSET");
        cmd.arg(table).arg(node_id).arg(value);
        query::<()>(shard, op, &cmd).await
    }

    /// Every row of a node table: one `HGETALL` per data shard, all shards at once. Each
    /// shard's answer is decoded as soon as it arrives, straight from the reply's buffers.
    async fn all_rows<T: DeserializeOwned>(
        &self,
        op: &'static str,
        table: &str,
    ) -> Result<BTreeMap<NodeId, T>> {
        let parts = try_join_all(self.data.iter().map(|shard| async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(table);
            let reply: redis::Value = query(shard, op, &cmd).await?;
            decode_hash::<T>(op, table, reply)
        }))
        .await?;
        let mut out = BTreeMap::new();
        for part in parts {
            out.extend(part);
        }
        Ok(out)
    }

    /// Groups ids by the data shard that holds them.
    fn by_shard<'a>(&self, ids: &'a [NodeId]) -> Vec<(usize, Vec<&'a str>)> {
        let mut groups: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for id in ids {
            groups
                .entry(shard_index(id, self.data.len()))
                .or_default()
                .push(id.as_str());
        }
        groups.into_iter().collect()
    }

    async fn get_primary<T: FromRedisValue>(&self, op: &'static str, key: &str) -> Result<T> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        query(&self.primary, op, &cmd).await
    }

    async fn set_primary(&self, op: &'static str, key: &str, value: Vec<u8>) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        query::<()>(&self.primary, op, &cmd).await
    }

    async fn set_sealed(&self, op: &'static str, key: &str, plaintext: &[u8]) -> Result<()> {
        let sealed = self.key.seal(key.as_bytes(), plaintext)?;
        self.set_primary(op, key, sealed).await
    }

    async fn get_sealed(&self, op: &'static str, key: &str) -> Result<Option<Vec<u8>>> {
        let sealed: Option<Vec<u8>> = self.get_primary(op, key).await?;
        sealed
            .map(|s| {
                self.key
                    .open(key.as_bytes(), &s)
                    .map_err(|e| e.with_operation(op))
            })
            .transpose()
    }
}

/// The extra shards published on the primary; none when nothing was published.
async fn read_shard_list(primary: &Shard) -> Result<Vec<RedisAddress>> {
    let op = "discover_shards";
    let mut cmd = redis::cmd("GET");
    cmd.arg(SHARDS);
    let bytes: Option<Vec<u8>> = query(primary, op, &cmd).await?;
    let Some(bytes) = bytes else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = decode(op, SHARDS, "", &bytes)?;
    list.iter().map(|a| RedisAddress::parse(a)).collect()
}

fn runtime_config_key(node_type: Option<&str>) -> String {
    match node_type {
        None => RUNTIME_CONFIG.to_string(),
        Some(t) => format!("{RUNTIME_CONFIG}:{t}"),
    }
}

async fn connect_shard(config: &RedisStoreConfig, addr: &RedisAddress) -> Result<Shard> {
    let op = "connect";
    let mut redis_info = RedisConnectionInfo::default();
    if let Some(p) = &config.password {
        redis_info = redis_info.set_password(p);
    }
    let info = ConnectionAddr::Tcp(addr.host.clone(), addr.port)
        .into_connection_info()
        .map_err(|e| redis_error(e, op, addr))?
        .set_redis_settings(redis_info);
    let client = Client::open(info).map_err(|e| redis_error(e, op, addr))?;

    // One direct attempt first, without the manager's retries, so that a wrong password
    // or an unreachable server is reported at once.
    let probe_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout));
    let probe = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(config.connect_timeout + config.response_timeout, probe).await {
        Err(_) => {
            return Err(
                Error::new(ErrorKind::Timeout, "Redis did not answer PING in time")
                    .with_operation(op)
                    .with_context("redis", addr),
            );
        }
        Ok(Err(e)) => return Err(redis_error(e, op, addr)),
        Ok(Ok(_)) => {}
    }

    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(config.max_reconnect_delay)
        .set_number_of_retries(3);
    let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
        .map_err(|e| redis_error(e, op, addr))?;
    Ok(Shard {
        addr: addr.clone(),
        conn,
    })
}

async fn query<T: FromRedisValue>(shard: &Shard, op: &'static str, cmd: &redis::Cmd) -> Result<T> {
    let mut conn = shard.conn.clone();
    cmd.query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, op, &shard.addr))
}

async fn query_pipe<T: FromRedisValue>(shard: &Shard, op: &'static str, pipe: &redis::Pipeline) -> Result<T> {
    let mut conn = shard.conn.clone();
    pipe.query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, op, &shard.addr))
}

/// Classifies a Redis error: wrong or missing password, time-out, unreachable, busy, other.
///
/// Errors of a `MULTI`/`EXEC` or a pipeline carry the server errors of their commands;
/// those are looked at too (a transaction aborted because the server is still loading
/// its data is transient).
fn redis_error(e: redis::RedisError, op: &'static str, addr: &RedisAddress) -> Error {
    // The codes of the server errors inside a transaction or pipeline error, or of a
    // single server error.
    let inner: Vec<String> = e
        .clone()
        .into_server_errors()
        .map(|errs| errs.iter().map(|(_, se)| se.code().to_string()).collect())
        .unwrap_or_default();
    let code = e.code().unwrap_or("");
    let has = |c: &str| code == c || inner.iter().any(|x| x == c);
    let is_busy = |c: &str| matches!(c, "LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "BUSY");
    let busy = is_busy(code) || (!inner.is_empty() && inner.iter().all(|c| is_busy(c)));
    let (kind, message) =
        if e.kind() == redis::ErrorKind::AuthenticationFailed || has("NOAUTH") || has("WRONGPASS") {
            (
                ErrorKind::Unauthenticated,
                "Redis refused the password (wrong or missing password for the cluster's state store)",
            )
        } else if has("NOPERM") {
            (ErrorKind::PermissionDenied, "Redis refused the command (ACL)")
        } else if e.is_timeout() {
            (ErrorKind::Timeout, "Redis did not answer in time")
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            (ErrorKind::Transient, "cannot reach Redis")
        } else if busy {
            (ErrorKind::Transient, "Redis is busy (loading its data)")
        } else {
            (ErrorKind::Unexpected, "Redis command failed")
        };
    Error::new(kind, message)
        .with_operation(op)
        .with_context("redis", addr)
        .with_source(e)
}

/// Decodes an `HGETALL` reply (a flat array in RESP2, a map in RESP3) of JSON values.
fn decode_hash<T: DeserializeOwned>(
    op: &'static str,
    key: &str,
    reply: redis::Value,
) -> Result<Vec<(String, T)>> {
    use redis::Value;
    let bad = |what: &str| {
        Error::new(ErrorKind::Unexpected, format!("unexpected HGETALL reply: {what}"))
            .with_operation(op)
            .with_context("key", key)
    };
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => Vec::new(),
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(bad("odd number of items"));
            }
            let mut it = items.into_iter();
            let mut pairs = Vec::with_capacity(it.len() / 2);
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => return Err(bad("not an array or map")),
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let (Value::BulkString(field), Value::BulkString(bytes)) = (k, v) else {
            return Err(bad("a field or value is not a string"));
        };
        let field = String::from_utf8(field).map_err(|_| bad("a field is not UTF-8"))?;
        let row = decode(op, key, &field, &bytes)?;
        out.push((field, row));
    }
    Ok(out)
}

/// Decodes a heartbeat row: the compact format, or JSON as written by earlier builds.
fn heartbeat_row(op: &'static str, bytes: &[u8]) -> Result<NodeHeartbeat> {
    match bytes.first() {
        Some(b'{') => decode(op, HEARTBEATS, "", bytes),
        _ => decode_heartbeat(bytes).map_err(|what| {
            Error::new(
                ErrorKind::Unexpected,
                format!("a stored heartbeat row is not valid: {what}"),
            )
            .with_operation(op)
            .with_context("key", HEARTBEATS)
        }),
    }
}

fn encode<T: Serialize>(op: &'static str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        Error::new(ErrorKind::InvalidConfig, "cannot encode the value as JSON")
            .with_operation(op)
            .with_source(e)
    })
}

fn decode<T: DeserializeOwned>(op: &'static str, key: &str, field: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Unexpected,
            "a stored value is not valid JSON of the expected shape",
        )
        .with_operation(op)
        .with_context("key", key)
        .with_context("field", field)
        .with_source(e)
    })
}

#[async_trait]
impl StateStore for RedisStore {
    async fn ping(&self) -> Result<()> {
        let mut shards = vec![&self.primary];
        shards.extend(self.data.iter().filter(|s| s.addr != self.primary.addr));
        let ping = redis::cmd("PING");
        try_join_all(shards.into_iter().map(|s| query::<String>(s, "ping", &ping))).await?;
        Ok(())
    }

    fn event_capacity(&self) -> usize {
        self.event_capacity
    }

    async fn put_heartbeat(&self, heartbeat: &NodeHeartbeat) -> Result<()> {
        check_key("put_heartbeat", "node id", &heartbeat.node_id)?;
        let op = "put_heartbeat";
        let row = encode_heartbeat(heartbeat).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot encode the heartbeat row: {e:#}"),
            )
            .with_operation(op)
        })?;
        self.put_row(op, HEARTBEATS, &heartbeat.node_id, row).await
    }

    async fn heartbeats(&self, ids: &[NodeId]) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        let op = "heartbeats";
        let groups = self.by_shard(ids);
        let parts = try_join_all(groups.iter().map(|(shard, ids)| async move {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(HEARTBEATS).arg(ids.as_slice());
            let values: Vec<Option<Vec<u8>>> = query(&self.data[*shard], op, &cmd).await?;
            Ok::<_, Error>(ids.iter().zip(values).collect::<Vec<_>>())
        }))
        .await?;
        let mut out = BTreeMap::new();
        for (id, bytes) in parts.into_iter().flatten() {
            if let Some(bytes) = bytes {
                out.insert(id.to_string(), heartbeat_row(op, &bytes)?);
            }
        }
        Ok(out)
    }

    async fn all_heartbeats(&self) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        // The rows carry their node ids, so one `HVALS` per shard reads them all: half
        // the bulk strings of an `HGETALL`. The rows are sorted by node id before they
        // are decoded (the id sits at a fixed offset), so the map is built from sorted
        // input without moving decoded rows around, and each row is decoded straight
        // from the reply's buffer.
        let op = "all_heartbeats";
        let replies = try_join_all(self.data.iter().map(|shard| async move {
            let mut cmd = redis::cmd("HVALS");
            cmd.arg(HEARTBEATS);
            query::<redis::Value>(shard, op, &cmd).await
        }))
        .await?;
        let bad = |what: &str| {
            Error::new(ErrorKind::Unexpected, format!("unexpected HVALS reply: {what}"))
                .with_operation(op)
                .with_context("key", HEARTBEATS)
        };
        let mut compact: Vec<&[u8]> = Vec::new();
        let mut json: Vec<NodeHeartbeat> = Vec::new();
        for reply in &replies {
            let redis::Value::Array(values) = reply else {
                return Err(bad("not an array"));
            };
            compact.reserve(values.len());
            for value in values {
                let redis::Value::BulkString(bytes) = value else {
                    return Err(bad("a value is not a string"));
                };
                if bytes.first() == Some(&b'{') {
                    json.push(heartbeat_row(op, bytes)?);
                } else {
                    compact.push(bytes);
                }
            }
        }
        compact.sort_unstable_by(|a, b| heartbeat_node_id(a).cmp(heartbeat_node_id(b)));
        let mut out = compact
            .into_iter()
            .map(|bytes| heartbeat_row(op, bytes).map(|hb| (hb.node_id.clone(), hb)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        for hb in json {
            out.insert(hb.node_id.clone(), hb);
        }
        Ok(out)
    }

    async fn put_node_metrics(&self, node_id: &str, metrics: &NodeMetrics) -> Result<()> {
        check_key("put_node_metrics", "node id", node_id)?;
        let op = "put_node_metrics";
        self.put_row(op, METRICS, node_id, encode(op, metrics)?).await
    }

    async fn all_node_metrics(&self) -> Result<BTreeMap<NodeId, NodeMetrics>> {
        self.all_rows("all_node_metrics", METRICS).await
    }

    async fn put_node_processes(&self, node_id: &str, processes: &NodeProcesses) -> Result<()> {
        check_key("put_node_processes", "node id", node_id)?;
        let op = "put_node_processes";
        self.put_row(op, PROCESSES, node_id, encode(op, processes)?).await
    }

    async fn all_node_processes(&self) -> Result<BTreeMap<NodeId, NodeProcesses>> {
        self.all_rows("all_node_processes", PROCESSES).await
    }

    async fn remove_nodes(&self, ids: &[NodeId]) -> Result<()> {
        let op = "remove_nodes";
        let groups = self.by_shard(ids);
        try_join_all(groups.iter().map(|(shard, ids)| async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for table in [HEARTBEATS, METRICS, PROCESSES] {
                pipe.cmd("HDEL").arg(table).arg(ids.as_slice()).ignore();
            }
            query_pipe::<()>(&self.data[*shard], op, &pipe).await
        }))
        .await?;
        Ok(())
    }

    async fn set_resource_demands(&self, demands: &ResourceDemands) -> Result<()> {
        let op = "set_resource_demands";
        self.set_primary(op, DEMANDS, encode(op, demands)?).await
    }

    async fn resource_demands(&self) -> Result<Option<ResourceDemands>> {
        let op = "resource_demands";
        let bytes: Option<Vec<u8>> = self.get_primary(op, DEMANDS).await?;
        bytes.map(|b| decode(op, DEMANDS, "", &b)).transpose()
    }

    async fn submit_resource_request(&self, request: &ResourceRequest) -> Result<()> {
        let op = "submit_resource_request";
        request.validate()?;
        // The merge of StandingRequests::merge, as one MULTI/EXEC: the groups named by the
        // request replace the stored fields of the same resource id.
        let mut pipe = redis::pipe();
        pipe.atomic();
        if request.override_all {
            pipe.cmd("DEL").arg(REQUESTS).ignore();
        }
        for (id, bundles) in request.grouped() {
            if bundles.is_empty() {
                pipe.cmd("HDEL").arg(REQUESTS).arg(&id).ignore();
            } else {
                pipe.cmd("HSET")
                    .arg(REQUESTS)
                    .arg(&id)
                    .arg(encode(op, &bundles)?)
                    .ignore();
            }
        }
        pipe.cmd("SET")
            .arg(REQUESTS_TIME)
            .arg(request.request_time.to_string())
            .ignore();
        query_pipe::<()>(&self.primary, op, &pipe).await
    }

    async fn resource_requests(&self) -> Result<StandingRequests> {
        let op = "resource_requests";
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HGETALL").arg(REQUESTS).cmd("GET").arg(REQUESTS_TIME);
        let (fields, time): (HashMap<String, Vec<u8>>, Option<String>) =
            query_pipe(&self.primary, op, &pipe).await?;
        let mut by_id = BTreeMap::new();
        for (id, bytes) in fields {
            let bundles: Vec<Resources> = decode(op, REQUESTS, &id, &bytes)?;
            by_id.insert(id, bundles);
        }
        let request_time = match time {
            Some(t) => t.parse().map_err(|_| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("stored request time {t:?} is not a number"),
                )
                .with_operation(op)
                .with_context("key", REQUESTS_TIME)
            })?,
            None => 0.0,
        };
        Ok(StandingRequests { request_time, by_id })
    }

    async fn put_pending_launch(&self, token: &str, launch: &PendingLaunch) -> Result<()> {
        check_key("put_pending_launch", "launch token", token)?;
        let op = "put_pending_launch";
        let mut cmd = redis::cmd("HSET");
        cmd.arg(PENDING).arg(token).arg(encode(op, launch)?);
        query::<()>(&self.primary, op, &cmd).await
    }

    async fn remove_pending_launch(&self, token: &str) -> Result<()> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(PENDING).arg(token);
        query::<()>(&self.primary, "remove_pending_launch", &cmd).await
    }

    async fn pending_launches(&self) -> Result<BTreeMap<String, PendingLaunch>> {
        let op = "pending_launches";
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(PENDING);
        let fields: HashMap<String, Vec<u8>> = query(&self.primary, op, &cmd).await?;
        fields
            .into_iter()
            .map(|(token, bytes)| {
                let launch = decode(op, PENDING, &token, &bytes)?;
                Ok((token, launch))
            })
            .collect()
    }

    async fn set_scaling_status(&self, status: &serde_json::Value) -> Result<()> {
        let op = "set_scaling_status";
        self.set_primary(op, SCALING_STATUS, encode(op, status)?).await
    }

    async fn scaling_status(&self) -> Result<Option<serde_json::Value>> {
        let op = "scaling_status";
        let bytes: Option<Vec<u8>> = self.get_primary(op, SCALING_STATUS).await?;
        bytes.map(|b| decode(op, SCALING_STATUS, "", &b)).transpose()
    }

    async fn set_runtime_config(&self, node_type: Option<&str>, config: &serde_json::Value) -> Result<()> {
        let op = "set_runtime_config";
        let key = runtime_config_key(node_type);
        self.set_sealed(op, &key, &encode(op, config)?).await
    }

    async fn runtime_config(&self, node_type: Option<&str>) -> Result<Option<serde_json::Value>> {
        let op = "runtime_config";
        let key = runtime_config_key(node_type);
        let plain = self.get_sealed(op, &key).await?;
        plain.map(|b| decode(op, &key, "", &b)).transpose()
    }

    async fn set_secret(&self, name: &str, value: &[u8]) -> Result<()> {
        check_key("set_secret", "secret name", name)?;
        self.set_sealed("set_secret", &format!("{SECRET_PREFIX}{name}"), value)
            .await
    }

    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.get_sealed("secret", &format!("{SECRET_PREFIX}{name}")).await
    }

    async fn push_event(&self, event: &ClusterEvent) -> Result<()> {
        let op = "push_event";
        let cap = i64::try_from(self.event_capacity).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("RPUSH")
            .arg(EVENTS)
            .arg(encode(op, event)?)
            .ignore()
            .cmd("LTRIM")
            .arg(EVENTS)
            .arg(-cap)
            .arg(-1)
            .ignore();
        query_pipe::<()>(&self.primary, op, &pipe).await
    }

    async fn events(&self, limit: usize) -> Result<Vec<ClusterEvent>> {
        let op = "events";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = -i64::try_from(limit).unwrap_or(i64::MAX);
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(EVENTS).arg(start).arg(-1);
        let items: Vec<Vec<u8>> = query(&self.primary, op, &cmd).await?;
        items.iter().map(|b| decode(op, EVENTS, "", b)).collect()
    }

    async fn try_acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: f64,
        ttl: Duration,
    ) -> Result<LeaseAcquire> {
        let op = "try_acquire_lease";
        check_lease_args(op, name, holder, ttl)?;
        let key = lease_key(name);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LUA_ACQUIRE)
            .arg(2)
            .arg(&key)
            .arg(format!("{key}:token"))
            .arg(holder)
            .arg(now.to_string())
            .arg((now + ttl.as_secs_f64()).to_string());
        let reply: Vec<String> = query(&self.primary, op, &cmd).await?;
        let fields: Vec<Option<String>> = reply.iter().skip(1).cloned().map(Some).collect();
        let lease = lease_from(op, name, &fields)?.ok_or_else(|| {
            Error::new(ErrorKind::Unexpected, "the lease script answered nothing").with_operation(op)
        })?;
        Ok(if reply.first().map(String::as_str) == Some("1") {
            LeaseAcquire::Acquired(lease)
        } else {
            LeaseAcquire::HeldBy(lease)
        })
    }

    async fn renew_lease(&self, fence: &Fence, now: f64, ttl: Duration) -> Result<Option<Lease>> {
        let op = "renew_lease";
        check_lease_args(op, &fence.lease, &fence.holder, ttl)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LUA_RENEW)
            .arg(1)
            .arg(lease_key(&fence.lease))
            .arg(&fence.holder)
            .arg(fence.token.to_string())
            .arg(now.to_string())
            .arg((now + ttl.as_secs_f64()).to_string());
        let reply: Vec<String> = query(&self.primary, op, &cmd).await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let fields: Vec<Option<String>> = reply.iter().skip(1).cloned().map(Some).collect();
        lease_from(op, &fence.lease, &fields)
    }

    async fn release_lease(&self, fence: &Fence) -> Result<bool> {
        let op = "release_lease";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LUA_RELEASE)
            .arg(1)
            .arg(lease_key(&fence.lease))
            .arg(&fence.holder)
            .arg(fence.token.to_string());
        let released: i64 = query(&self.primary, op, &cmd).await?;
        Ok(released == 1)
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let op = "lease";
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(lease_key(name))
            .arg("holder")
            .arg("token")
            .arg("acquired_at")
            .arg("renewed_at")
            .arg("expires_at");
        let fields: Vec<Option<String>> = query(&self.primary, op, &cmd).await?;
        lease_from(op, name, &fields)
    }

    async fn put_pending_launch_fenced(
        &self,
        fence: &Fence,
        token: &str,
        launch: &PendingLaunch,
    ) -> Result<()> {
        let op = "put_pending_launch_fenced";
        check_key(op, "launch token", token)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LUA_FENCED_HSET)
            .arg(2)
            .arg(lease_key(&fence.lease))
            .arg(PENDING)
            .arg(&fence.holder)
            .arg(fence.token.to_string())
            .arg(token)
            .arg(encode(op, launch)?);
        let written: i64 = query(&self.primary, op, &cmd).await?;
        if written == 1 {
            return Ok(());
        }
        let current = self.lease(&fence.lease).await?;
        Err(fence.refused(op, current.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let a = RedisAddress::parse("10.0.0.1:6789").unwrap();
        assert_eq!(a, RedisAddress::new("10.0.0.1", 6789));
        assert_eq!(a.to_string(), "10.0.0.1:6789");
        let v6 = RedisAddress::parse("[::1]:7000").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:7000");
        assert!(RedisAddress::parse("nohost").is_err());
        assert!(RedisAddress::parse(":1").is_err());
        assert!(RedisAddress::parse("h:99999").is_err());
    }

    #[test]
    fn redis_errors_are_classified() {
        use redis::{ErrorKind as R, ServerErrorKind as S, make_extension_error};
        let addr = RedisAddress::new("h", 1);
        let kind = |e: redis::RedisError| redis_error(e, "op", &addr).kind();
        assert_eq!(
            kind((R::AuthenticationFailed, "Password authentication failed").into()),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            kind(make_extension_error("NOAUTH".into(), None)),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            kind(make_extension_error("WRONGPASS".into(), None)),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            kind(make_extension_error("NOPERM".into(), None)),
            ErrorKind::PermissionDenied
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(kind(refused.into()), ErrorKind::Transient);
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(kind(timed_out.into()), ErrorKind::Timeout);
        assert_eq!(
            kind((R::Server(S::BusyLoading), "loading").into()),
            ErrorKind::Transient
        );
        assert_eq!(
            kind(make_extension_error("LOADING".into(), None)),
            ErrorKind::Transient
        );
        assert_eq!(
            kind(make_extension_error("WEIRD".into(), None)),
            ErrorKind::Unexpected
        );
        assert_eq!(
            kind((R::UnexpectedReturnType, "type").into()),
            ErrorKind::Unexpected
        );
        let e = redis_error((R::AuthenticationFailed, "x").into(), "connect", &addr);
        assert!(e.to_string().contains("redis: h:1"), "{e:#}");
    }

    #[test]
    fn config_debug_hides_the_password() {
        let c = RedisStoreConfig::new(RedisAddress::new("h", 1), EncryptionKey::generate())
            .with_password("hunter2-secret");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

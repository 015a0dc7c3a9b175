//! A counting HTTP proxy in front of moto, shared by `aws_controller_moto.rs` and the
//! `aws_launch` bench (which includes this file by path): every EC2 query request is
//! forwarded unchanged (one request per connection, as moto closes after each answer)
//! and logged with its `Action=` and, for `DescribeInstances`, what kind of call it is.
//!
//! With [`CountingProxy::start_ec2_max_count`] the proxy also makes moto launch like EC2:
//! moto creates `MinCount` instances per `RunInstances` while EC2 creates as many as it
//! can up to `MaxCount`, so the proxy raises `MinCount` to `MaxCount` in the request.
#![allow(dead_code, unreachable_pub)] // each user uses a part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What kind of `DescribeInstances` a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Describe {
    /// The first page of a listing of the cluster (no instance-id or token filter).
    Listing,
    /// The first page of a lookup of a launch token's instances.
    ByToken,
    /// The first page of a lookup of given instance ids.
    ById,
    /// A further page (`NextToken`) of any of them.
    NextPage,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Call {
    /// When it arrived.
    pub at: Instant,
    /// Its `Action=`.
    pub action: String,
    /// For `DescribeInstances`, its kind.
    pub describe: Option<Describe>,
}

/// A running proxy; its accept loop lives on the tokio runtime it was started on.
#[derive(Debug, Clone)]
pub struct CountingProxy {
    /// The proxy's endpoint, `http://127.0.0.1:<port>`.
    pub url: String,
    log: Arc<Mutex<Vec<Call>>>,
}

impl CountingProxy {
    /// A proxy in front of `moto_url` that forwards requests unchanged.
    pub async fn start(moto_url: &str) -> CountingProxy {
        Self::start_with(moto_url, false).await
    }

    /// A proxy that also raises `MinCount` to `MaxCount` in `RunInstances` (EC2's
    /// launch semantics on moto).
    pub async fn start_ec2_max_count(moto_url: &str) -> CountingProxy {
        Self::start_with(moto_url, true).await
    }

    async fn start_with(moto_url: &str, max_count: bool) -> CountingProxy {
        let upstream = moto_url.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<Call>>> = Arc::default();
        let task_log = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, upstream.clone(), Arc::clone(&task_log), max_count));
            }
        });
        CountingProxy { url, log }
    }

    /// How many requests were seen so far (a mark for [`calls_since`](Self::calls_since)).
    pub fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The requests seen since `mark`.
    pub fn calls_since(&self, mark: usize) -> Vec<Call> {
        self.log.lock().unwrap()[mark..].to_vec()
    }

    /// Every request seen.
    pub fn calls(&self) -> Vec<Call> {
        self.calls_since(0)
    }
}

/// Counts per action, with `DescribeInstances` split by kind
/// (`DescribeInstances/Listing`...).
pub fn counts(calls: &[Call]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in calls {
        let key = match c.describe {
            Some(d) => format!("{}/{d:?}", c.action),
            None => c.action.clone(),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Reads one HTTP request (head and `Content-Length` body); `None` at end of stream.
pub async fn read_request(stream: &mut TcpStream) -> Option<(Vec<u8>, usize)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((buf, head_end))
}

pub fn param<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn classify(body: &str) -> Option<Describe> {
    if param(body, "Action") != Some("DescribeInstances") {
        return None;
    }
    Some(if param(body, "NextToken").is_some() {
        Describe::NextPage
    } else if body.contains("=instance-id") {
        Describe::ById
    } else if body.contains("cloudtik-launch-token") {
        Describe::ByToken
    } else {
        Describe::Listing
    })
}

/// `request` with `MinCount` raised to `MaxCount` and `Content-Length` fixed.
pub fn raise_min_count(request: Vec<u8>, head_end: usize) -> Vec<u8> {
    let body = String::from_utf8_lossy(&request[head_end..]).to_string();
    let Some(max) = param(&body, "MaxCount").map(str::to_string) else {
        return request;
    };
    let new_body: Vec<String> = body
        .split('&')
        .map(|kv| {
            if kv.starts_with("MinCount=") {
                format!("MinCount={max}")
            } else {
                kv.to_string()
            }
        })
        .collect();
    let new_body = new_body.join("&");
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| {
            if l.to_ascii_lowercase().starts_with("content-length:") {
                format!("content-length: {}", new_body.len())
            } else {
                l.to_string()
            }
        })
        .collect();
    let mut out = head.join("\r\n").into_bytes();
    out.extend_from_slice(new_body.as_bytes());
    out
}

async fn serve(mut client: TcpStream, upstream: String, log: Arc<Mutex<Vec<Call>>>, max_count: bool) {
    let Some((mut request, head_end)) = read_request(&mut client).await else {
        return;
    };
    let body = String::from_utf8_lossy(&request[head_end..]).to_string();
    let action = param(&body, "Action").unwrap_or("?").to_string();
    log.lock().unwrap().push(Call {
        at: Instant::now(),
        describe: classify(&body),
        action: action.clone(),
    });
    if max_count && action == "RunInstances" {
        request = raise_min_count(request, head_end);
    }
    let Ok(mut moto) = TcpStream::connect(&upstream).await else {
        return;
    };
    if moto.write_all(&request).await.is_err() {
        return;
    }
    let mut answer = Vec::new();
    if moto.read_to_end(&mut answer).await.is_err() {
        return;
    }
    let _ = client.write_all(&answer).await;
}

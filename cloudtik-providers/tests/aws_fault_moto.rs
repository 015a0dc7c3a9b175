//! The AWS node provider through a faulty proxy in front of moto (harness: `tests/moto`,
//! see the docs of `aws_moto.rs`): some EC2 calls are throttled (`RequestLimitExceeded`,
//! HTTP 503 with EC2's XML error body), some requests are dropped before they reach
//! moto, and some answers are dropped after moto acted on the request. Launches must
//! still converge without duplicate instances, and terminate must stay idempotent.
//! moto ignores `ClientToken`, so the absence of duplicates here comes from the
//! provider listing the launch token's instances again after a lost answer.
#![cfg(feature = "aws")]

mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudtik_core::node::tags;
use cloudtik_core::{LaunchRequest, NodeKind, NodeProvider, Tags};
use cloudtik_providers::aws::{AwsNodeProvider, RetryPolicy};
use moto::{raw_client, sdk_config, settings, start_moto};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// Forward it and pass the answer back.
    Pass,
    /// Answer `RequestLimitExceeded` without forwarding.
    Throttle,
    /// Close the connection without forwarding.
    DropRequest,
    /// Forward it, then close the connection without passing the answer back.
    DropAnswer,
}

/// The fault for the `n`-th request (from 0) of an EC2 action.
fn plan(action: &str, n: usize) -> Fault {
    match action {
        "RunInstances" => match n % 6 {
            0 => Fault::Throttle,
            1 | 4 => Fault::DropAnswer,
            3 => Fault::DropRequest,
            _ => Fault::Pass,
        },
        "DescribeInstances" => match n % 7 {
            1 => Fault::Throttle,
            3 => Fault::DropRequest,
            5 => Fault::DropAnswer,
            _ => Fault::Pass,
        },
        "TerminateInstances" => match n % 4 {
            0 => Fault::DropAnswer,
            1 => Fault::Throttle,
            _ => Fault::Pass,
        },
        _ => Fault::Pass,
    }
}

/// Counts of what the proxy did, by (action, fault).
type Log = Arc<Mutex<BTreeMap<(String, Fault), usize>>>;

/// EC2's throttling answer.
const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors>\
<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>";

/// Reads one HTTP request (head and `Content-Length` body); `None` at end of stream.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
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
    Some(buf)
}

fn action_of(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    text.split(['&', '\n', '\r'])
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_string()
}

/// One client connection: one request, forwarded on a fresh connection to moto (which
/// closes after every answer) unless the plan says otherwise; the proxy closes too.
async fn serve(
    mut client: TcpStream,
    upstream: String,
    counters: Arc<Mutex<BTreeMap<String, usize>>>,
    log: Log,
) {
    let Some(request) = read_request(&mut client).await else {
        return;
    };
    let action = action_of(&request);
    let n = {
        let mut counters = counters.lock().unwrap();
        let c = counters.entry(action.clone()).or_insert(0);
        *c += 1;
        *c - 1
    };
    let fault = plan(&action, n);
    *log.lock().unwrap().entry((action.clone(), fault)).or_insert(0) += 1;
    match fault {
        Fault::Throttle => {
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml;charset=UTF-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{THROTTLED}",
                THROTTLED.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
        }
        Fault::DropRequest => {}
        Fault::Pass | Fault::DropAnswer => {
            let Ok(mut moto) = TcpStream::connect(&upstream).await else {
                return;
            };
            if moto.write_all(&request).await.is_err() {
                return;
            }
            let mut answer = Vec::new();
            if moto.read_to_end(&mut answer).await.is_err() || fault == Fault::DropAnswer {
                return;
            }
            let _ = client.write_all(&answer).await;
        }
    }
}

/// Starts the proxy in front of `moto_url`; returns its URL and the log.
async fn start_proxy(moto_url: &str) -> (String, Log) {
    let upstream = moto_url.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let counters = Arc::default();
    let task_log = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(serve(
                client,
                upstream.clone(),
                Arc::clone(&counters),
                task_log.clone(),
            ));
        }
    });
    (url, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn launches_converge_without_duplicates_and_terminate_is_idempotent_through_faults() {
    let Some(moto) = start_moto() else { return };
    let (proxy_url, log) = start_proxy(&moto.url).await;
    let retry = RetryPolicy::default()
        .with_max_retries(6)
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(50));
    let p = AwsNodeProvider::from_sdk_config(
        "faulty",
        &sdk_config(&proxy_url).await,
        settings(&proxy_url).with_retry(retry),
    )
    .unwrap();
    let direct = raw_client(&moto).await;
    let image = direct.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let mut t = Tags::new();
    t.insert(tags::NODE_KIND.into(), NodeKind::Worker.as_str().into());
    let request = LaunchRequest::new(
        "worker.default",
        json!({"InstanceType": "t3.micro", "ImageId": image}),
        t,
        12,
    );

    // A controller repeats the request (same token) until it is fulfilled.
    let mut nodes = Vec::new();
    for _ in 0..20 {
        match p.create_nodes(&request).await {
            Ok(outcome) if outcome.shortfall.is_none() && outcome.nodes.len() == request.count => {
                nodes = outcome.nodes;
                break;
            }
            Ok(outcome) => eprintln!("partial: {} nodes, {:?}", outcome.nodes.len(), outcome.shortfall),
            Err(e) => eprintln!("launch failed, retrying: {e}"),
        }
    }
    assert_eq!(
        nodes.len(),
        request.count,
        "the launch did not converge; proxy log: {log:?}"
    );

    // Counted behind the proxy: exactly the requested instances exist for the token.
    let live = |token: String| {
        let direct = direct.clone();
        async move {
            let described = direct
                .describe_instances()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name(format!("tag:{}", tags::LAUNCH_TOKEN))
                        .values(token)
                        .build(),
                )
                .send()
                .await
                .unwrap();
            described
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state()
                        .and_then(|s| s.name())
                        .is_some_and(|s| matches!(s.as_str(), "pending" | "running"))
                })
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect::<BTreeSet<String>>()
        }
    };
    let launched = live(request.token.clone()).await;
    let returned: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    assert_eq!(
        launched, returned,
        "duplicate or missing instances; proxy log: {log:?}"
    );

    // The faults did happen, including answers lost after moto launched an instance.
    {
        let log = log.lock().unwrap();
        let count = |action: &str, fault| log.get(&(action.to_string(), fault)).copied().unwrap_or(0);
        assert!(count("RunInstances", Fault::DropAnswer) >= 2, "{log:?}");
        assert!(count("RunInstances", Fault::Throttle) >= 1, "{log:?}");
        assert!(count("RunInstances", Fault::DropRequest) >= 1, "{log:?}");
        assert!(count("DescribeInstances", Fault::Throttle) >= 1, "{log:?}");
    }

    // Terminate through the faults, twice; then nothing of the token is live.
    let ids: Vec<String> = returned.iter().cloned().collect();
    p.terminate_nodes(&ids).await.unwrap();
    p.terminate_nodes(&ids).await.unwrap();
    assert!(live(request.token.clone()).await.is_empty());
    let log = log.lock().unwrap();
    assert!(
        log.get(&("TerminateInstances".to_string(), Fault::DropAnswer))
            .is_some(),
        "{log:?}"
    );
}

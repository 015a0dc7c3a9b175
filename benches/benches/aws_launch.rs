//! Launching 1,000 nodes through the controller against moto's EC2 server, counting the
//! EC2 calls per controller pass and the time. Target (issue 7): at most 10
//! `RunInstances` calls and at most one `DescribeInstances` listing per pass.
//!
//! The bench starts its own `moto_server` with the harness of
//! `cloudtik-providers/tests/moto` (included by path; it pip-installs `moto[server]`
//! into a venv the first time; without moto the bench prints why and measures nothing,
//! unless `CI=true`). A counting proxy between the provider and moto logs every request
//! by its `Action=`; `DescribeInstances` is split into cluster listings, launch-token
//! lookups, instance-id lookups and further pages.
//!
//! moto creates `MinCount` instances per `RunInstances`, while EC2 creates up to
//! `MaxCount`; the provider sends `MinCount` 1 (partial launches are reported). So the
//! main run has the proxy raise `MinCount` to `MaxCount` (EC2's behaviour); a second run
//! against moto as it is shows the provider's top-up loop (one instance per call there).
//!
//! Node setup is `MarkUpToDate` (moto's instances cannot be reached over SSH); passes
//! start every [`PASS_INTERVAL`]. The criterion part times one steady-state controller
//! pass over the 1,000 nodes (one listing, plan, publish).

#[path = "../../cloudtik-providers/tests/moto/counting_proxy.rs"]
mod counting_proxy;
#[path = "../../cloudtik-providers/tests/moto/mod.rs"]
mod moto;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{
    Controller, ControllerConfig, LaunchSpec, LauncherConfig, MarkUpToDate, ScalingInputs,
};
use cloudtik_core::state::InMemoryStore;
use cloudtik_core::{NodeKind, NodeProvider, NodeStatus, Resources, Tags};
use cloudtik_providers::aws::AwsNodeProvider;
use counting_proxy::{CountingProxy, counts};
use criterion::{Criterion, criterion_group, criterion_main};

const NODES: usize = 1000;
/// Nodes per launch call (so 10 calls for 1,000 nodes).
const BATCH: usize = 100;
/// Time between the starts of two passes.
const PASS_INTERVAL: Duration = Duration::from_secs(2);

type AwsController = Controller<AwsNodeProvider, InMemoryStore, MarkUpToDate<Arc<AwsNodeProvider>>>;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn inputs(image: &str) -> ScalingInputs {
    let worker = NodeTypeConfig::new(Resources::from_pairs([("CPU", 2.0)]), NODES).with_min_workers(NODES);
    ScalingInputs::new(
        ScalingConfig::new("head", NODES)
            .with_node_type("head", NodeTypeConfig::new(Resources::new(), 0))
            .with_node_type("worker", worker)
            .with_upscaling_speed(1.0)
            .with_idle_timeout(Duration::from_secs(3600)),
    )
    .with_launch(
        "worker",
        LaunchSpec::new(
            serde_json::json!({"InstanceType": "t3.micro", "ImageId": image}),
            "h",
        ),
    )
}

/// A controller on `proxy`, and a provider that lists moto directly (not counted).
async fn new_controller(moto: &moto::Moto, proxy: &CountingProxy) -> (AwsController, AwsNodeProvider) {
    let direct = moto::raw_client(moto).await;
    let image = direct.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let provider = Arc::new(
        AwsNodeProvider::from_sdk_config(
            "bench",
            &moto::sdk_config(&proxy.url).await,
            moto::settings(&proxy.url),
        )
        .unwrap(),
    );
    let observer = AwsNodeProvider::from_sdk_config(
        "bench",
        &moto::sdk_config(&moto.url).await,
        moto::settings(&moto.url),
    )
    .unwrap();
    let config = ControllerConfig::default()
        .with_heartbeat_timeout(Duration::from_secs(3600))
        .with_launcher(LauncherConfig::default().with_batch_size(BATCH));
    let c = Controller::new(
        inputs(&image),
        config,
        Arc::clone(&provider),
        Arc::new(InMemoryStore::new()),
        Arc::new(MarkUpToDate::new(Arc::clone(&provider))),
    );
    (c, observer)
}

/// Runs passes until all nodes are listed and up to date; prints the calls of every
/// pass (from its start to the next pass's start) and the totals.
async fn launch_run(
    label: &str,
    controller: &mut AwsController,
    observer: &AwsNodeProvider,
    proxy: &CountingProxy,
) {
    println!("aws_launch/{label}: load average before {}", load_average());
    let start = Instant::now();
    let mut all_listed = None;
    let mut marks = Vec::new();
    let mut ticker = tokio::time::interval(PASS_INTERVAL);
    loop {
        ticker.tick().await;
        if start.elapsed() > Duration::from_secs(900) {
            println!("aws_launch/{label}: gave up after 900 s");
            break;
        }
        marks.push(proxy.mark());
        controller.run_pass().await.unwrap();
        let nodes = observer.list_nodes(&Tags::new()).await.unwrap();
        let workers: Vec<_> = nodes
            .iter()
            .filter(|n| n.kind() == Some(NodeKind::Worker))
            .collect();
        let up = workers
            .iter()
            .filter(|n| n.status() == Some(NodeStatus::UpToDate))
            .count();
        if workers.len() >= NODES && all_listed.is_none() {
            all_listed = Some(start.elapsed());
        }
        println!(
            "aws_launch/{label}: pass {} at {:.1} s: {} workers listed, {up} up to date",
            marks.len(),
            start.elapsed().as_secs_f64(),
            workers.len()
        );
        if up >= NODES {
            break;
        }
    }
    let elapsed = start.elapsed();
    // A pass's calls: from its start to the next pass's start (the last one's: until
    // now), so they include the launch calls and setups it started.
    let all = proxy.calls();
    marks.push(all.len());
    let per_pass: Vec<BTreeMap<String, usize>> = marks.windows(2).map(|w| counts(&all[w[0]..w[1]])).collect();
    let mut max: BTreeMap<String, usize> = BTreeMap::new();
    for (i, calls) in per_pass.iter().enumerate() {
        println!("aws_launch/{label}: pass {}: {calls:?}", i + 1);
        for (k, v) in calls {
            let e = max.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
    println!("aws_launch/{label}: most calls in one pass, per kind: {max:?}");
    println!("aws_launch/{label}: all calls: {:?}", counts(&proxy.calls()));
    println!(
        "aws_launch/{label}: {NODES} nodes listed after {:.1} s, up to date after {:.1} s, {} passes {:?} apart; load average after {}",
        all_listed.unwrap_or(elapsed).as_secs_f64(),
        elapsed.as_secs_f64(),
        per_pass.len(),
        PASS_INTERVAL,
        load_average()
    );
    let run = max.get("RunInstances").copied().unwrap_or(0);
    let listings = max.get("DescribeInstances/Listing").copied().unwrap_or(0);
    println!(
        "aws_launch/{label}: target (<= 10 RunInstances, <= 1 listing per pass): {}",
        if run <= 10 && listings <= 1 {
            "met"
        } else {
            "MISSED"
        }
    );
}

fn bench_aws_launch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let Some(moto) = moto::start_moto() else { return };
    let (mut controller, proxy) = rt.block_on(async {
        let proxy = CountingProxy::start_ec2_max_count(&moto.url).await;
        let (mut controller, observer) = new_controller(&moto, &proxy).await;
        launch_run("ec2-semantics", &mut controller, &observer, &proxy).await;
        (controller, proxy)
    });

    let mark = proxy.mark();
    c.bench_function("aws_launch/steady pass over 1000 moto nodes", |b| {
        b.iter(|| {
            let r = rt.block_on(controller.run_pass()).unwrap();
            assert!(r.launched.is_empty() && r.terminated.is_empty());
        })
    });
    println!(
        "aws_launch/steady passes: calls {:?}",
        counts(&proxy.calls_since(mark))
    );
    drop(moto);

    if std::env::var("CLOUDTIK_BENCH_MOTO_AS_IS").is_ok_and(|v| v == "1") {
        let Some(moto) = moto::start_moto() else { return };
        rt.block_on(async {
            let proxy = CountingProxy::start(&moto.url).await;
            let (mut controller, observer) = new_controller(&moto, &proxy).await;
            launch_run("moto-as-is", &mut controller, &observer, &proxy).await;
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10));
    targets = bench_aws_launch
}
criterion_main!(benches);

//! Config loading: parse, template inheritance, defaults, typing and validation.

use criterion::{Criterion, criterion_group, criterion_main};

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../examples/configs/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn bench_config(c: &mut Criterion) {
    let loader = cloudtik_core::config::ConfigLoader::new().with_env_template_dirs(false);
    let aws = example("aws.yaml");
    let virt = example("virtual.yaml");
    c.bench_function("config/load aws.yaml (from: aws/standard)", |b| {
        b.iter(|| loader.load_cluster_str("aws.yaml", &aws).unwrap())
    });
    c.bench_function("config/load virtual.yaml", |b| {
        b.iter(|| loader.load_cluster_str("virtual.yaml", &virt).unwrap())
    });
    let config = loader.load_cluster_str("aws.yaml", &aws).unwrap();
    let node_config =
        serde_json::Value::Object(config.available_node_types["head.default"].node_config.clone());
    c.bench_function("config/launch hash", |b| {
        b.iter(|| cloudtik_core::config::launch_hash(&node_config, &config.auth).unwrap())
    });
}

criterion_group!(benches, bench_config);
criterion_main!(benches);

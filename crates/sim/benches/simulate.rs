//! Simulator speed: the Azure conversation trace on 16 llama2-70b TP8 H100 instances, and a
//! synthetic workload on 256 instances. Each iteration is one full replay (scheduler build
//! included; workload generation excluded).

use accellm_sim::{cli, config::SimConfig, runner};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn azure_conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    for (name, cluster, inst) in [
        ("azure-conv-16xTP8-least-load-vllm", "least-load", "vllm"),
        (
            "azure-conv-16xTP8-least-load-sarathi",
            "least-load",
            "sarathi",
        ),
        ("azure-conv-16xTP8-splitwise-vllm", "splitwise", "vllm"),
    ] {
        let cfg = SimConfig {
            instances: 16,
            cluster: cluster.parse().unwrap(),
            instance: inst.parse().unwrap(),
            ..SimConfig::default()
        };
        let reqs = runner::core_requests(&runner::workload(&cfg).expect("workload"));
        g.throughput(Throughput::Elements(reqs.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| runner::run(&cfg, &reqs, None).expect("run"))
        });
    }
    g.finish();
}

fn synthetic(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay-synthetic");
    g.sample_size(10);
    let mut cfg = SimConfig {
        instances: 256,
        ..SimConfig::default()
    };
    cfg.workload.source = "synthetic:prompt=lognormal(1000,0.8),output=lognormal(200,0.8)"
        .parse()
        .expect("source");
    cfg.workload.max_requests = Some(100_000);
    let w = cli::workload(&cfg, Some(250.0), None).expect("workload");
    let reqs = runner::core_requests(&w);
    g.throughput(Throughput::Elements(reqs.len() as u64));
    g.bench_function("synthetic-100k-256xTP8-poisson250", |b| {
        b.iter(|| runner::run(&cfg, &reqs, None).expect("run"))
    });
    g.finish();
}

criterion_group!(benches, azure_conv, synthetic);
criterion_main!(benches);

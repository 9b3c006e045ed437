//! `accellm simulate --partition A-B@START..END`: the link between two partners goes down and
//! comes back; both keep serving, nothing is lost or recovered, and fewer bytes are copied.

use accellm_sim::{
    cli::{self, SimulateArgs},
    config::SimConfig,
    runner::{self, RunReport},
};

fn small() -> SimConfig {
    let mut c = SimConfig {
        model: "llama2-7b".into(),
        hardware: "a100".into(),
        instances: 4,
        tp: 1,
        cluster: "accellm".parse().unwrap(),
        instance: "accelgen".parse().unwrap(),
        ..SimConfig::default()
    };
    c.workload.source = "synthetic:prompt=lognormal(600,0.8),output=lognormal(120,0.8)"
        .parse()
        .unwrap();
    c.workload.max_requests = Some(400);
    c.workload.seed = 3;
    c
}

fn run(c: &SimConfig) -> RunReport {
    let w = cli::workload(c, Some(8.0), None).unwrap();
    runner::run(c, &runner::core_requests(&w), None).unwrap()
}

/// `simulate`'s flags alone.
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    args: SimulateArgs,
}

fn parse(flags: &[&str]) -> Result<SimulateArgs, clap::Error> {
    use clap::Parser;
    Flags::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied())).map(|f| f.args)
}

#[test]
fn the_flag_parses_and_refuses_what_is_not_a_partition() {
    let args = parse(&["--partition", "0-1@10..70", "--partition", "2-3@0.5..1.5"]).unwrap();
    let c = cli::config(&args).unwrap();
    assert_eq!(c.partitions, [(0, 1, 10.0, 70.0), (2, 3, 0.5, 1.5)]);
    for bad in [
        "0-1@10",
        "0@10..20",
        "0-0@1..2",
        "0-1@5..2",
        "0-x@1..2",
        "0-1@-1..2",
    ] {
        assert!(parse(&["--partition", bad]).is_err(), "{bad} accepted");
    }
}

#[test]
fn a_partitioned_pair_serves_on_both_sides_and_loses_nothing() {
    let calm = run(&small());
    let mut c = small();
    // Pair 0 loses its link from 5 s to 40 s of a ~50 s run.
    c.partitions = vec![(0, 1, 5.0, 40.0)];
    let cut = run(&c);
    assert_eq!(cut.summary.completed, 400, "no request is lost");
    assert_eq!(cut.unfinished, 0);
    assert_eq!(
        cut.counters.recovered_by_replica + cut.counters.recovered_by_recompute,
        0,
        "nothing failed, nothing is recovered"
    );
    assert!(cut.recovery_ms.is_none());
    // Both partners kept running iterations (mixed ones while cut off), and the pair copied
    // less than undisturbed: no replicas while the link was down.
    for i in [0, 1] {
        let (c, k) = (&calm.instances[i], &cut.instances[i]);
        assert!(k.iterations > 0 && k.mixed > 0.0, "instance {i}: {k:?}");
        assert!(k.busy > 0.5 * c.busy, "instance {i} idled: {k:?} vs {c:?}");
    }
    assert!(
        cut.counters.copy_bytes < calm.counters.copy_bytes,
        "{} vs {}",
        cut.counters.copy_bytes,
        calm.counters.copy_bytes
    );
    // A failed instance, for contrast, stops serving: its partner does its work.
    let mut f = small();
    f.failures = vec![(1, 5.0)];
    let failed = run(&f);
    assert!(failed.instances[1].iterations < cut.instances[1].iterations);
}

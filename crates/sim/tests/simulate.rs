//! End-to-end simulator runs: every baseline policy, determinism, SLO flags, CLI error paths and
//! the cost model's error bound against the measured profiles.

use accellm_core::{
    cluster::ClusterConfig,
    instance::InstanceConfig,
    policy::PolicyConfig,
    request::{RequestSpec, Slo},
};
use accellm_sim::{
    cli::{self, SimulateArgs},
    config::SimConfig,
    runner::{self, RunReport},
    specs::Specs,
    validate,
};

/// A small cluster of 7B instances on a short synthetic Poisson workload.
fn small(cluster: &str, inst: &str, seed: u64) -> SimConfig {
    let mut c = SimConfig {
        model: "llama2-7b".into(),
        hardware: "a100".into(),
        instances: 4,
        tp: 1,
        cluster: cluster.parse().unwrap(),
        instance: inst.parse().unwrap(),
        ..SimConfig::default()
    };
    c.workload.source = "synthetic:prompt=lognormal(600,0.8),output=lognormal(120,0.8)"
        .parse()
        .unwrap();
    c.workload.max_requests = Some(400);
    c.workload.seed = seed;
    c
}

fn run(c: &SimConfig, rate: f64) -> RunReport {
    let w = cli::workload(c, Some(rate), None).unwrap();
    runner::run(c, &runner::core_requests(&w), None).unwrap()
}

/// The report without wall-clock figures.
fn fingerprint(r: &RunReport) -> String {
    let mut r = r.clone();
    r.wall_s = 0.0;
    serde_json::to_string(&r).unwrap()
}

#[test]
fn every_baseline_policy_finishes_every_request() {
    for cluster in ["round-robin", "least-load", "splitwise"] {
        for inst in ["vllm", "sarathi"] {
            let r = run(&small(cluster, inst, 1), 8.0);
            let s = &r.summary;
            assert_eq!(s.arrived, 400, "{cluster}/{inst}");
            assert_eq!(s.completed, 400, "{cluster}/{inst}");
            assert_eq!(r.unfinished, 0, "{cluster}/{inst}");
            assert!(
                s.ttft_ms.p50 > 0.0 && s.tbt_ms.p50 > 0.0,
                "{cluster}/{inst}"
            );
            assert!(s.jct_ms.p99 >= s.jct_ms.p50, "{cluster}/{inst}");
            assert!(r.busy_mean > 0.0 && r.busy_mean <= 1.0, "{cluster}/{inst}");
            assert!(r.kv_peak > 0.0 && r.kv_peak <= 1.0, "{cluster}/{inst}");
            if cluster == "splitwise" {
                // Prefill instances never decode; their KV moves to the decode pool.
                assert!(r.kv_bytes_moved > 0);
                assert!(r.instances[0].decode == 0.0 && r.instances[0].mixed == 0.0);
                assert!(r.instances[3].prefill == 0.0 && r.instances[3].mixed == 0.0);
            } else {
                assert_eq!(r.kv_bytes_moved, 0);
            }
        }
    }
}

#[test]
fn identical_inputs_and_seed_give_identical_runs() {
    let a = run(&small("least-load", "sarathi", 7), 12.0);
    let b = run(&small("least-load", "sarathi", 7), 12.0);
    assert_eq!(fingerprint(&a), fingerprint(&b));
    let c = run(&small("least-load", "sarathi", 8), 12.0);
    assert_ne!(fingerprint(&a), fingerprint(&c), "the seed must matter");
}

#[test]
fn compare_runs_policies_on_the_same_requests() {
    let base = small("least-load", "vllm", 3);
    let names: Vec<String> = ["sarathi", "splitwise", "round-robin/sarathi"]
        .map(String::from)
        .to_vec();
    let compare = |names: Vec<String>| {
        let a = SimulateArgs {
            compare: names,
            ..Default::default()
        };
        cli::resolve_policies(&base, &a)
    };
    let cfgs = compare(names).unwrap();
    let got: Vec<(String, String)> = cfgs
        .iter()
        .map(|c| (c.cluster.name().to_string(), c.instance.name().to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("least-load", "sarathi"),
            ("splitwise", "vllm"),
            ("round-robin", "sarathi")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let err = compare(vec!["fifo".to_string()]).unwrap_err().to_string();
    for name in accellm_core::cluster::NAMES
        .iter()
        .chain(accellm_core::instance::NAMES)
    {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn tighter_slos_are_met_less_often() {
    let mut c = small("least-load", "vllm", 2);
    c.workload.slo = accellm_workload::SloPolicy::Fixed {
        ttft_ms: Some(10_000.0),
        tbt_ms: Some(1_000.0),
        priority: 0,
    };
    let loose = run(&c, 20.0);
    c.workload.slo = accellm_workload::SloPolicy::Fixed {
        ttft_ms: Some(50.0),
        tbt_ms: Some(20.0),
        priority: 0,
    };
    let tight = run(&c, 20.0);
    assert!(loose.summary.slo.slo_attainment_strict > tight.summary.slo.slo_attainment_strict);
    assert!(loose.summary.slo.slo_attainment_mean > tight.summary.slo.slo_attainment_mean);
    assert!(tight.summary.slo.goodput_strict < loose.summary.slo.goodput_strict);
    // Every gap within the SLO implies the mean gap is.
    for r in [&loose, &tight] {
        assert!(r.summary.slo.goodput_strict <= r.summary.slo.goodput_mean);
    }
}

#[test]
fn a_prefill_stall_misses_the_strict_slo_but_not_the_mean() {
    // One instance, prefill-first: a long prompt arriving mid-decode stalls the decode once.
    let mut c = small("least-load", "vllm", 0);
    c.instances = 1;
    let decode = RequestSpec {
        arrival_us: 0,
        prompt_tokens: 16,
        max_output_tokens: 300,
        slo: Slo {
            ttft_ms: Some(5_000.0),
            tbt_ms: Some(50.0),
        },
        priority: 0,
        class: None,
    };
    let stall = RequestSpec {
        arrival_us: 500_000,
        prompt_tokens: 4_000,
        max_output_tokens: 1,
        slo: Slo::default(),
        ..decode
    };
    let r = runner::run(&c, &[decode, stall], None).unwrap();
    assert_eq!(r.summary.completed, 2);
    assert!(r.summary.tbt_ms.max > 50.0, "{:?}", r.summary.tbt_ms);
    let slo = r.summary.slo;
    assert_eq!(
        (slo.slo_attainment_strict, slo.slo_attainment_mean),
        (0.5, 1.0)
    );
    assert!((slo.goodput_mean - 2.0 * slo.goodput_strict).abs() < 1e-12);
    // JSON and CSV name the figures alike.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["summary"]["slo_attainment_strict"], 0.5);
    assert_eq!(json["summary"]["slo_attainment_mean"], 1.0);
    let table = accellm_sim::output::metrics_table(std::slice::from_ref(&r));
    let line = |label: &str| {
        table
            .lines()
            .find(|l| l.starts_with(label))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
    };
    assert_eq!(line("SLO attainment (strict)").as_deref(), Some("50.0%"));
    assert_eq!(line("SLO attainment (mean)").as_deref(), Some("100.0%"));
    let csv = accellm_sim::output::csv(std::slice::from_ref(&r));
    let mut rows = csv.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let (head, row) = (rows.next().unwrap(), rows.next().unwrap());
    let col = |name: &str| row[head.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("slo_attainment_strict"), "0.5");
    assert_eq!(col("slo_attainment_mean"), "1");
}

#[test]
fn per_class_figures_add_up_to_the_run() {
    let mut c = small("least-load", "accelgen", 3);
    c.workload.slo = accellm_workload::SloPolicy::Classes {
        classes: accellm_workload::SloClass::defaults(),
    };
    let r = run(&c, 20.0);
    let names: Vec<&str> = r.classes.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["chat", "code", "summarisation", "batch"]);
    let arrived: u64 = r.classes.iter().map(|k| k.arrived).sum();
    let completed: u64 = r.classes.iter().map(|k| k.completed).sum();
    let strict: f64 = r.classes.iter().map(|k| k.slo.goodput_strict).sum();
    let mean: f64 = r.classes.iter().map(|k| k.slo.goodput_mean).sum();
    assert_eq!(arrived, r.summary.arrived);
    assert_eq!(completed, r.summary.completed);
    assert!((strict - r.summary.slo.goodput_strict).abs() < 1e-9);
    assert!((mean - r.summary.slo.goodput_mean).abs() < 1e-9);
    for k in &r.classes {
        assert!(
            k.tbt_slo_ms.is_some() && k.ttft_slo_ms.is_some(),
            "{}",
            k.name
        );
        // A request meets its TBT SLO strictly only if its worst gap does: a class whose p50
        // worst gap is over its SLO cannot have met it strictly for more than half its requests.
        if k.worst_tbt_ms.p50 > k.tbt_slo_ms.unwrap() {
            let a = k.slo.slo_attainment_strict;
            assert!(a <= 0.5, "{}: {a}", k.name);
        }
    }
    let table = accellm_sim::output::metrics_table(std::slice::from_ref(&r));
    assert!(table.contains("chat (TTFT"), "{table}");
    // Without classes there is no per-class section.
    let plain = run(&small("least-load", "vllm", 3), 20.0);
    assert!(plain.classes.is_empty());
    assert!(!accellm_sim::output::metrics_table(&[plain]).contains("per SLO class"));
}

#[test]
fn a_knob_no_policy_of_the_run_uses_is_an_error() {
    let check = |a: SimulateArgs| {
        let cfg = cli::config(&a).map_err(|e| e.to_string())?;
        cli::resolve_policies(&cfg, &a).map_err(|e| e.to_string())
    };
    let e = check(SimulateArgs {
        cluster_policy: Some("least-load".into()),
        sync: Some("lazy".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("`--sync` applies to `--cluster-policy accellm`, not `least-load`"),
        "{e}"
    );
    let e = check(SimulateArgs {
        cluster_policy: Some("accellm".into()),
        prefill_instances: Some(1),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("--prefill-instances") && e.contains("splitwise"),
        "{e}"
    );
    // Instance-policy knobs too: `--chunk-size` is Sarathi's, `--max-num-batched-tokens` vLLM's.
    let e = check(SimulateArgs {
        instance_policy: Some("vllm".into()),
        chunk_size: Some(256),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("`--chunk-size` applies to `--instance-policy sarathi`, not `vllm`"),
        "{e}"
    );
    let e = check(SimulateArgs {
        compare: vec!["sarathi".into(), "accelgen".into()],
        max_num_batched_tokens: Some(1024),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("--max-num-batched-tokens") && e.contains("not `sarathi`, `accelgen`"),
        "{e}"
    );
    let e = check(SimulateArgs {
        cluster_policy: Some("round-robin".into()),
        prefix_weight: Some(1.0),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("least-load` or `accellm`, not `round-robin`"),
        "{e}"
    );
    // A run that includes the policy takes the flag, and only that run.
    let runs = check(SimulateArgs {
        cluster_policy: Some("least-load".into()),
        compare: vec!["least-load".into(), "accellm".into(), "sarathi".into()],
        eviction: Some("largest-first".into()),
        chunk_size: Some(64),
        max_num_seqs: Some(32),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(runs.len(), 3);
    let ClusterConfig::Accellm(a) = &runs[1].cluster else {
        panic!("{:?}", runs[1].cluster)
    };
    assert_eq!(a.eviction, accellm_core::kv::EvictionPolicy::LargestFirst);
    let InstanceConfig::Vllm(k) = &runs[0].instance else {
        panic!("{:?}", runs[0].instance)
    };
    assert_eq!(k.max_num_seqs, 32);
    let InstanceConfig::Sarathi(k) = &runs[2].instance else {
        panic!("{:?}", runs[2].instance)
    };
    assert_eq!((k.chunk_size, k.max_num_seqs), (64, 32));
}

#[test]
fn config_knobs_of_a_policy_not_run_are_an_error() {
    let dir = std::env::temp_dir().join(format!("accellm-knobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lazy.toml");
    std::fs::write(&file, "[cluster.accellm]\nsync = \"lazy\"\n").unwrap();
    let check = |a: SimulateArgs| {
        let cfg = cli::config(&a).map_err(|e| format!("{e:#}"))?;
        cli::resolve_policies(&cfg, &a).map_err(|e| format!("{e:#}"))
    };
    let with = |f: &dyn Fn(&mut SimulateArgs)| {
        let mut a = SimulateArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        f(&mut a);
        check(a)
    };
    // The file chooses accellm; a flag choosing another policy would drop its knobs.
    let e = with(&|a| a.cluster_policy = Some("least-load".into())).unwrap_err();
    assert!(
        e.contains("[cluster.accellm]") && e.contains("not `least-load`"),
        "{e}"
    );
    // The knobs go to the accellm runs of a comparison; one without any is an error.
    let runs =
        with(&|a| a.compare = vec!["accellm/vllm".into(), "least-load/vllm".into()]).unwrap();
    assert_eq!(
        runs[0].cluster,
        cli::config(&SimulateArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap()
        .cluster
    );
    assert_eq!(
        runs[1].cluster,
        "least-load".parse::<ClusterConfig>().unwrap()
    );
    let e = with(&|a| a.compare = vec!["splitwise/vllm".into()]).unwrap_err();
    assert!(
        e.contains("[cluster.accellm]") && e.contains("not `splitwise`"),
        "{e}"
    );
    // The same policy chosen again keeps them.
    with(&|a| a.cluster_policy = Some("accellm".into())).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_names_list_the_valid_ones() {
    let args = |f: &dyn Fn(&mut SimulateArgs)| {
        let mut a = SimulateArgs::default();
        f(&mut a);
        cli::config(&a).unwrap_err().to_string()
    };
    let e = args(&|a| a.cluster_policy = Some("nope".into()));
    assert!(e.contains("nope") && e.contains("least-load"), "{e}");
    let e = args(&|a| a.instance_policy = Some("nope".into()));
    assert!(e.contains("sarathi"), "{e}");
    // AcceLLM knob flags: the error names the flag and every valid value.
    let knob = |a: SimulateArgs| format!("{:#}", cli::config(&a).unwrap_err());
    let e = knob(SimulateArgs {
        sync: Some("sometimes".into()),
        ..Default::default()
    });
    assert!(
        e.contains("--sync") && e.contains("lazy") && e.contains("recompute"),
        "{e}"
    );
    let e = knob(SimulateArgs {
        eviction: Some("fifo".into()),
        ..Default::default()
    });
    assert!(
        e.contains("--eviction") && e.contains("lru") && e.contains("largest-first"),
        "{e}"
    );
    let e = args(&|a| a.model = Some("gpt-9".into()));
    assert!(e.contains("llama3-70b"), "{e}");
    let e = args(&|a| a.hardware = Some("tpu".into()));
    assert!(
        e.contains("h100-sxm5-80gb") && e.contains("ascend-910b2"),
        "{e}"
    );
}

#[test]
fn a_malformed_trace_line_is_named_by_file_and_line() {
    let dir = std::env::temp_dir().join(format!("accellm-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.csv");
    std::fs::write(&path, "prompt_tokens,output_tokens\n100,20\n50,abc\n").unwrap();
    let args = SimulateArgs {
        workload: Some(path.display().to_string()),
        instances: Some(1),
        ..SimulateArgs::default()
    };
    let err = format!("{:#}", cli::run(args).unwrap_err());
    assert!(err.contains("bad.csv:3"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_model_that_does_not_fit_is_an_error() {
    let c = SimConfig {
        tp: 1,
        ..SimConfig::default()
    };
    let e = format!("{:#}", runner::build(&c).err().unwrap());
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn time_series_cover_the_run() {
    let c = small("splitwise", "vllm", 4);
    let w = cli::workload(&c, Some(8.0), None).unwrap();
    let watch = runner::Watch {
        progress: None,
        timeseries: true,
        requests: false,
    };
    let r = runner::run(&c, &runner::core_requests(&w), Some(watch)).unwrap();
    let ts = r.timeseries.unwrap();
    assert_eq!(ts.segments.len(), 4);
    assert!(ts.segments.iter().all(|s| !s.is_empty()));
    assert!(ts.samples.len() > 10);
    let last = ts.samples.last().unwrap();
    assert!(last.finished <= 400 && last.tokens_out > 0);
    assert!(ts.samples.windows(2).all(|w| w[0].t_us < w[1].t_us));
}

/// The cost model's error against Splitwise's and Vidur's measurements must not regress beyond
/// the bounds reached when it was calibrated (docs/cost-model.md has the table).
#[test]
fn cost_model_error_stays_within_the_calibrated_bound() {
    let specs = Specs::builtin().unwrap();
    let v = validate::validate(&specs, &validate::profiles_dir().unwrap()).unwrap();
    let g = |hw, tp, phase| {
        v.group("splitwise", "llama2-70b", hw, tp, phase)
            .unwrap()
            .mape
    };
    // The headline: H100 Llama-2-70B TP 8 (measured 20.0% prefill, 2.1% decode).
    assert!(g("h100-sxm5-80gb", 8, "prefill") < 0.21);
    assert!(g("h100-sxm5-80gb", 8, "decode") < 0.03);
    for hw in ["h100-sxm5-80gb", "a100-sxm4-80gb"] {
        for tp in [2, 4, 8] {
            assert!(g(hw, tp, "prefill") < 0.21, "{hw} TP{tp} prefill");
            assert!(g(hw, tp, "decode") < 0.05, "{hw} TP{tp} decode");
        }
    }
    for e in v.groups.iter().filter(|e| e.source == "vidur") {
        let bound = if e.model == "llama2-70b" { 0.24 } else { 0.53 };
        assert!(e.mape < bound, "{e:?}");
    }
    assert_eq!(
        v.points.iter().filter(|p| p.source == "splitwise").count(),
        152
    );
}

#[test]
fn report_flag_writes_a_self_contained_html_page() {
    let dir = std::env::temp_dir().join(format!("accellm-sim-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.html");
    let args = SimulateArgs {
        model: Some("llama2-7b".into()),
        hardware: Some("a100".into()),
        tp: Some(1),
        instances: Some(2),
        workload: Some("synthetic:prompt=200,output=uniform(10,50)".into()),
        rate: Some(4.0),
        num_requests: Some(100),
        compare: vec!["vllm".into(), "splitwise".into()],
        slo_classes: Some("classes:chat=0.5,batch=0.5".into()),
        report: Some(path.clone()),
        ..SimulateArgs::default()
    };
    cli::run(args).unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script"));
    assert!(html.contains("least-load/vllm") && html.contains("splitwise/vllm"));
    assert!(html.contains("instance 1"));
    // The per-class table names the classes that were drawn, and only those.
    assert!(html.contains("Per SLO class") && html.contains("chat") && html.contains("batch"));
    assert!(!html.contains("summarisation"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn requests_out_writes_every_request_of_every_run() {
    let dir = std::env::temp_dir().join(format!("accellm-sim-requests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.jsonl");
    let args = SimulateArgs {
        model: Some("llama2-7b".into()),
        hardware: Some("a100".into()),
        tp: Some(1),
        instances: Some(2),
        workload: Some("synthetic:prompt=200,output=uniform(10,50)".into()),
        num_requests: Some(40),
        compare: vec!["accellm/accelgen".into(), "least-load/sarathi".into()],
        sweep_rate: vec![2.0, 8.0],
        slo_classes: Some("default".into()),
        requests_out: Some(path.clone()),
        json: true,
        ..SimulateArgs::default()
    };
    cli::run(args).unwrap();
    let mut runs: std::collections::BTreeMap<(String, String), Vec<u64>> = Default::default();
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["slo_met"]["strict"].is_boolean() && v["ttft_us"].is_u64(),
            "{line}"
        );
        let key = (v["policy"].to_string(), v["rate"].to_string());
        runs.entry(key)
            .or_default()
            .push(v["arrival_us"].as_u64().unwrap());
    }
    assert_eq!(runs.len(), 4, "{:?}", runs.keys());
    // Every request of every run, and both policies saw the identical sequence at each rate.
    for rate in ["2.0", "8.0"] {
        let arrivals: Vec<Vec<u64>> = runs
            .iter()
            .filter(|((_, r), _)| r == rate)
            .map(|(_, a)| {
                let mut a = a.clone();
                a.sort_unstable();
                a
            })
            .collect();
        assert_eq!(arrivals.len(), 2);
        assert_eq!(arrivals[0].len(), 40);
        assert_eq!(arrivals[0], arrivals[1]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn accellm_recompute_sync_moves_decodes_by_compute_not_bytes() {
    let a = SimulateArgs {
        cluster_policy: Some("accellm".into()),
        sync: Some("recompute".into()),
        eviction: Some("largest-first".into()),
        ..Default::default()
    };
    let parsed = cli::config(&a).unwrap();
    let mut c = small("accellm", "vllm", 3);
    c.cluster = parsed.cluster;
    let ClusterConfig::Accellm(k) = &mut c.cluster else {
        panic!("{:?}", c.cluster)
    };
    assert_eq!(k.eviction, accellm_core::kv::EvictionPolicy::LargestFirst);
    let r = run(&c, 8.0);
    assert_eq!(r.unfinished, 0);
    assert_eq!(r.summary.completed, 400);
    let k = r.counters;
    assert!(
        k.migrations_recompute > 0 && k.recompute_tokens > 0,
        "{k:?}"
    );
    assert_eq!(k.transfer_bytes, 0, "{k:?}");
    // Same requests, lazy sync: the same moves are paid in link bytes instead.
    if let ClusterConfig::Accellm(k) = &mut c.cluster {
        k.sync = accellm_core::cluster::accellm::SyncMode::Lazy;
    }
    let lazy = run(&c, 8.0);
    assert!(lazy.counters.transfer_bytes > 0, "{:?}", lazy.counters);
    assert_eq!(lazy.counters.migrations_recompute, 0);
    assert_eq!(
        lazy.counters.copy_bytes, k.copy_bytes,
        "prompt replicas only"
    );
}

#[test]
fn the_example_config_loads() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/splitwise-h100.toml");
    let c = SimConfig::load(&path).unwrap();
    let ClusterConfig::Splitwise(k) = &c.cluster else {
        panic!("{:?}", c.cluster)
    };
    assert_eq!(k.prefill_instances, 3);
    let InstanceConfig::Vllm(k) = &c.instance else {
        panic!("{:?}", c.instance)
    };
    assert_eq!(k.max_num_batched_tokens, 8192);
    runner::build(&c).unwrap();
}

#[test]
fn bad_shapes_and_flags_are_errors_before_any_run() {
    let err = |f: &dyn Fn(&mut SimulateArgs)| {
        let mut a = SimulateArgs::default();
        f(&mut a);
        format!("{:#}", cli::config(&a).unwrap_err())
    };
    assert!(err(&|a| a.instances = Some(0)).contains("--instances"));
    assert!(err(&|a| a.tp = Some(0)).contains("--tp"));
    assert!(err(&|a| a.link = Some("pigeon".into())).contains("nvlink"));
    assert!(err(&|a| a.burstiness = Some(0.5)).contains("--rate"));
    assert!(err(&|a| a.config = Some("/nonexistent/x.toml".into())).contains("/nonexistent/x.toml"));
}

/// `--hardware-profile`: the calibrated CPU engine as the hardware, with the profile's KV pool.
#[test]
fn hardware_profile_models_the_served_engine() {
    let profile = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/calibration/smollm2-q8padded-1t-cpu.toml"
    );
    let args = SimulateArgs {
        hardware_profile: Some(profile.into()),
        instances: Some(2),
        cluster_policy: Some("accellm".into()),
        instance_policy: Some("accelgen".into()),
        workload: Some("synthetic:prompt=lognormal(256,0.5),output=lognormal(64,0.5)".into()),
        num_requests: Some(30),
        rate: Some(1.0),
        slo_classes: Some("default".into()),
        ..SimulateArgs::default()
    };
    let c = cli::config(&args).unwrap();
    assert_eq!((c.tp, c.block_size), (1, 16));
    let r = run(&c, 1.0);
    assert_eq!(r.cluster.kv_blocks, 1024);
    assert_eq!(r.summary.completed, 30, "{:?}", r.summary);
    assert!(
        r.cluster.hardware.contains("thread"),
        "{}",
        r.cluster.hardware
    );
    // 30 requests of ~64 tokens at 1 req/s on two CPU instances: seconds, not milliseconds.
    assert!(r.summary.ttft_ms.p50 > 50.0, "{:?}", r.summary.ttft_ms);
    let bad = SimulateArgs {
        hardware_profile: Some("/nonexistent/profile.toml".into()),
        ..SimulateArgs::default()
    };
    let e = format!("{:#}", cli::config(&bad).unwrap_err());
    assert!(e.contains("/nonexistent/profile.toml"), "{e}");
}

#[test]
fn a_failed_instance_is_recovered_and_timed() {
    let mut c = small("accellm", "accelgen", 3);
    c.failures = vec![(1, 20.0)];
    let r = run(&c, 8.0);
    assert_eq!(r.summary.completed, 400, "no request is lost");
    let [replica, recompute] = r.recovery_ms.expect("recovery times after --fail");
    assert_eq!(replica.count, r.counters.recovered_by_replica);
    assert_eq!(recompute.count, r.counters.recovered_by_recompute);
    assert!(replica.count > 0, "AcceLLM's partner holds replicas");
    assert!(replica.p50 > 0.0 && replica.p99 >= replica.p50);
    // Undisturbed, nothing is recovered and no row is printed.
    let calm = run(&small("accellm", "accelgen", 3), 8.0);
    assert!(calm.recovery_ms.is_none());
    let text = accellm_sim::output::metrics_table(&[r]);
    assert!(text.contains("recovery p50"), "{text}");
}

#[test]
fn slo_scale_multiplies_every_target_and_refuses_what_it_cannot_scale() {
    use accellm_workload::SloPolicy;
    let args = |slo: &str, scale: f64| SimulateArgs {
        slo_classes: Some(slo.into()),
        slo_scale: Some(scale),
        ..SimulateArgs::default()
    };
    let c = cli::config(&args("default", 2.0)).unwrap();
    let SloPolicy::Classes { classes } = &c.workload.slo else {
        panic!("{:?}", c.workload.slo)
    };
    let targets: Vec<_> = classes.iter().map(|c| (c.ttft_ms, c.tbt_ms)).collect();
    assert_eq!(
        targets,
        [
            (Some(2_000.0), Some(100.0)),
            (Some(4_000.0), Some(200.0)),
            (Some(10_000.0), Some(500.0)),
            (Some(60_000.0), Some(2_000.0)),
        ]
    );
    let c = cli::config(&args("fixed:300:20", 0.5)).unwrap();
    assert!(matches!(
        c.workload.slo,
        SloPolicy::Fixed { ttft_ms: Some(t), tbt_ms: Some(b), .. } if t == 150.0 && b == 10.0
    ));
    for (slo, k) in [("default", 0.0), ("default", f64::NAN), ("file", 2.0)] {
        let e = cli::config(&args(slo, k)).unwrap_err();
        assert!(format!("{e:#}").contains("--slo-scale"), "{e:#}");
    }
}

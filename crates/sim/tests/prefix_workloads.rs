//! Workloads with shared prefixes in the simulator: block keys from segments, the
//! `--prefix-cache` and `--prefix-weight` knobs, and the prefix figures of the reports.

use accellm_sim::{
    cli::{self, SimulateArgs},
    config::SimConfig,
    output, runner,
};

/// Two 7B instances on a short multi-turn chat workload.
fn chat(cache: bool) -> SimConfig {
    let mut c = SimConfig {
        model: "llama2-7b".into(),
        hardware: "a100".into(),
        instances: 2,
        tp: 1,
        prefix_cache: cache,
        ..SimConfig::default()
    };
    c.workload.source = "chat:turns=4,user=lognormal(300,0.5),output=lognormal(100,0.5),system=400"
        .parse()
        .unwrap();
    c.workload.max_requests = Some(200);
    c
}

#[test]
fn consecutive_turns_share_the_keys_of_their_history() {
    let c = chat(true);
    let w = cli::workload(&c, Some(2.0), None).unwrap();
    let keys = runner::core_keys(&w, 16);
    assert_eq!(keys.len(), w.requests.len());
    let mut checked = 0;
    for (i, a) in w.prefixes.iter().enumerate() {
        // The next turn of the same conversation (same last stream).
        let Some(j) = (i + 1..w.prefixes.len())
            .find(|&j| w.prefixes[j].last().unwrap().stream == a.last().unwrap().stream)
        else {
            continue;
        };
        let r = &w.requests[i];
        let (ka, kb) = (keys[i].as_ref().unwrap(), keys[j].as_ref().unwrap());
        // This turn's prompt and answer, in full blocks, start the next turn's keys.
        let history_blocks = ((r.prompt_tokens + r.output_tokens) / 16) as usize;
        assert_eq!(ka.len(), history_blocks);
        assert_eq!(&kb[..history_blocks], &ka[..]);
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
    // Conversations that share only the system prompt share its 25 full blocks.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&[u64]> = (0..w.requests.len())
        .filter(|&i| seen.insert(w.prefixes[i][1].stream))
        .filter_map(|i| keys[i].as_deref())
        .filter(|k| k.len() > 25)
        .collect();
    let (a, b) = (firsts[0], firsts[1]);
    assert_eq!(&a[..25], &b[..25]);
    assert_ne!(a[25], b[25]);
    // Other block sizes, other keys; no prefix structure, no keys.
    assert_ne!(runner::core_keys(&w, 32)[0], keys[0]);
    let plain = cli::workload(&SimConfig::default(), None, None).unwrap();
    assert!(runner::core_keys(&plain, 16).is_empty());
}

#[test]
fn the_cache_saves_prefill_only_when_on() {
    let mut reports = Vec::new();
    for cache in [true, false] {
        let c = chat(cache);
        let w = cli::workload(&c, Some(2.0), None).unwrap();
        let requests = runner::core_requests(&w);
        let keys = runner::core_keys(&w, c.block_size);
        let r = runner::run_keyed(&c, &requests, &keys, None).unwrap();
        assert_eq!(r.summary.completed, 200);
        let p = r.prefix_cache.expect("prefix figures");
        assert_eq!(p.enabled, cache);
        assert!(p.hit_tokens <= p.query_tokens);
        assert!(p.hit_rate >= 0.0 && p.hit_rate <= 1.0);
        if cache {
            assert!(p.hit_tokens > 0 && p.prefill_saved > 0.2, "{p:?}");
        } else {
            assert_eq!(p.hit_tokens, 0, "{p:?}");
        }
        reports.push(r);
    }
    let table = output::metrics_table(&reports);
    assert!(table.contains("prefix cache hit rate"), "{table}");
    assert!(table.contains("prefill tokens saved"), "{table}");
    let csv = output::csv(&reports);
    assert!(csv.lines().next().unwrap().ends_with("prefix_hit_tokens"));
    let json = serde_json::to_value(&reports[0]).unwrap();
    assert!(json["prefix_cache"]["hit_rate"].as_f64().unwrap() > 0.0);
    // Without prefix structure the report has no prefix figures.
    let w = cli::workload(&chat(true), Some(2.0), None).unwrap();
    let plain = runner::run(&chat(true), &runner::core_requests(&w), None).unwrap();
    assert!(plain.prefix_cache.is_none());
    assert!(!output::metrics_table(&[plain]).contains("prefix cache"));
}

#[test]
fn flags_and_config_set_the_prefix_knobs() {
    let args = SimulateArgs {
        prefix_cache: Some(false),
        prefix_weight: Some(2.5),
        workload: Some("few-shot".into()),
        ..SimulateArgs::default()
    };
    let c = cli::config(&args).unwrap();
    assert!(!c.prefix_cache);
    assert_eq!(
        c.cluster,
        accellm_core::cluster::ClusterConfig::LeastLoad(
            accellm_core::cluster::least_load::LeastLoadConfig { prefix_weight: 2.5 }
        )
    );
    let bad = SimulateArgs {
        prefix_weight: Some(-1.0),
        ..SimulateArgs::default()
    };
    let e = cli::config(&bad).unwrap_err().to_string();
    assert!(
        e.contains("prefix_weight") && e.contains("non-negative"),
        "{e}"
    );
    let e = "chat:turns=0x"
        .parse::<accellm_workload::WorkloadSource>()
        .unwrap_err();
    assert!(e.to_string().contains("column 6"), "{e}");
}

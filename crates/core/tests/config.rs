//! Policy configuration as config files write it: one policy per level, named alone or as the
//! one key of a table holding its knobs; knobs of another policy are errors, never ignored.

mod common;
use common::config;

use accellm_core::{
    cluster::{
        accellm::{AccellmConfig, SyncMode},
        least_load::LeastLoadConfig,
        splitwise::SplitwiseConfig,
        ClusterConfig,
    },
    instance::{sarathi::SarathiConfig, InstanceConfig},
    policy::{ConfigError, PolicyConfig},
    scheduler::Scheduler,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct File {
    cluster: ClusterConfig,
    instance: InstanceConfig,
}

fn parse(text: &str) -> Result<File, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[test]
fn a_policy_is_named_alone_or_with_its_knobs() {
    let f = parse("cluster = \"round-robin\"\ninstance = \"vllm\"\n").unwrap();
    assert_eq!(f.cluster, ClusterConfig::RoundRobin);
    assert_eq!(f.instance, InstanceConfig::Vllm(Default::default()));
    let f = parse(
        "[cluster.accellm]\nsync = \"lazy\"\nprefix_weight = 1\n\n\
         [instance.sarathi]\nchunk_size = 1024\n",
    )
    .unwrap();
    assert_eq!(
        f.cluster,
        ClusterConfig::Accellm(AccellmConfig {
            sync: SyncMode::Lazy,
            prefix_weight: 1.0,
            ..Default::default()
        })
    );
    assert_eq!(
        f.instance,
        InstanceConfig::Sarathi(SarathiConfig {
            chunk_size: 1024,
            ..Default::default()
        })
    );
    // A policy without knobs also reads as an empty table.
    let f = parse("[cluster.round-robin]\n[instance.accelgen]\n").unwrap();
    assert_eq!(f.cluster, ClusterConfig::RoundRobin);
    assert_eq!(f.instance.name(), "accelgen");
}

#[test]
fn a_knob_of_another_policy_is_an_error() {
    // `chunk_size` is Sarathi's: vLLM has no such knob.
    let e = parse("cluster = \"least-load\"\n[instance.vllm]\nchunk_size = 256\n").unwrap_err();
    assert!(
        e.contains("chunk_size") && e.contains("max_num_batched_tokens"),
        "{e}"
    );
    // `sync` is AcceLLM's.
    let e = parse("instance = \"vllm\"\n[cluster.least-load]\nsync = \"lazy\"\n").unwrap_err();
    assert!(e.contains("sync") && e.contains("prefix_weight"), "{e}");
    let e = parse("instance = \"vllm\"\n[cluster.round-robin]\nprefix_weight = 1\n").unwrap_err();
    assert!(e.contains("prefix_weight"), "{e}");
    // Knobs of two policies of one level: only one runs.
    let e = parse(
        "instance = \"vllm\"\n[cluster.accellm]\nsync = \"lazy\"\n\
         [cluster.splitwise]\nprefill_instances = 2\n",
    )
    .unwrap_err();
    assert!(e.contains("accellm") && e.contains("splitwise"), "{e}");
}

#[test]
fn unknown_names_list_the_valid_ones() {
    let e = parse("cluster = \"fifo\"\ninstance = \"vllm\"\n").unwrap_err();
    assert!(
        e.contains("fifo") && e.contains("least-load, splitwise"),
        "{e}"
    );
    let e = parse("cluster = \"accellm\"\n[instance.orca]\n").unwrap_err();
    assert!(
        e.contains("orca") && e.contains("vllm, sarathi, accelgen"),
        "{e}"
    );
    let e = "fifo".parse::<InstanceConfig>().unwrap_err().to_string();
    assert!(e.contains("sarathi"), "{e}");
}

#[test]
fn every_policy_reads_back_what_it_writes() {
    let mut all: Vec<File> = Vec::new();
    for c in accellm_core::cluster::NAMES {
        for i in accellm_core::instance::NAMES {
            all.push(File {
                cluster: c.parse().unwrap(),
                instance: i.parse().unwrap(),
            });
        }
    }
    all.push(File {
        cluster: ClusterConfig::Splitwise(SplitwiseConfig {
            prefill_instances: 3,
            layerwise: false,
        }),
        instance: InstanceConfig::Sarathi(SarathiConfig {
            chunk_size: 64,
            max_num_seqs: 8,
        }),
    });
    for f in &all {
        let t = toml::to_string(f).unwrap();
        assert_eq!(&parse(&t).unwrap(), f, "{t}");
        let j = serde_json::to_string(f).unwrap();
        assert_eq!(&serde_json::from_str::<File>(&j).unwrap(), f, "{j}");
    }
}

#[test]
fn choosing_another_policy_keeps_no_knobs_silently() {
    let lazy = ClusterConfig::Accellm(AccellmConfig {
        sync: SyncMode::Lazy,
        ..Default::default()
    });
    // The same policy keeps its knobs; another one over knobs is an error naming both.
    assert_eq!(lazy.select("accellm").unwrap(), lazy);
    let e = lazy.select("least-load").unwrap_err();
    assert!(matches!(e, ConfigError::KnobsElsewhere { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("[cluster.accellm]") && e.contains("--cluster-policy accellm"),
        "{e}"
    );
    assert!(e.contains("not `least-load`"), "{e}");
    // A policy named with its defaults only can be switched.
    let plain: ClusterConfig = "accellm".parse().unwrap();
    assert_eq!(
        plain.select("least-load").unwrap(),
        ClusterConfig::LeastLoad(LeastLoadConfig::default())
    );
    // A `--compare` run of another policy gets that policy's defaults.
    assert_eq!(
        lazy.for_policy("round-robin").unwrap(),
        ClusterConfig::RoundRobin
    );
    assert!(lazy.select("nope").is_err());
}

#[test]
fn the_scheduler_is_built_from_both_levels() {
    let cost = common::cost();
    let vllm: InstanceConfig = "vllm".parse().unwrap();
    let s = Scheduler::build(
        &config(64),
        4,
        &"splitwise".parse().unwrap(),
        &vllm,
        cost.clone(),
    )
    .unwrap();
    assert_eq!(
        (s.cluster_policy(), s.instance_policy()),
        ("splitwise", "vllm")
    );
    assert_eq!(s.instances().len(), 4);
    let e = Scheduler::build(
        &config(64),
        0,
        &ClusterConfig::RoundRobin,
        &vllm,
        cost.clone(),
    )
    .err()
    .unwrap();
    assert_eq!(e, ConfigError::NoInstances);
    let bad = ClusterConfig::LeastLoad(LeastLoadConfig {
        prefix_weight: -1.0,
    });
    let e = Scheduler::build(&config(64), 2, &bad, &vllm, cost)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("prefix_weight") && e.contains("least-load"),
        "{e}"
    );
}

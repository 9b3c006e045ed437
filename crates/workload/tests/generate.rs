//! End-to-end tests of `WorkloadSpec::generate` on the shipped traces and on small files.

use std::path::PathBuf;

use accellm_workload::{
    Arrivals, BuiltinTrace, ContextFit, SloClass, SloPolicy, Workload, WorkloadError,
    WorkloadSource, WorkloadSpec,
};

fn spec(source: &str) -> WorkloadSpec {
    WorkloadSpec::new(source.parse().expect("source parses"))
}

fn gaps(w: &Workload) -> Vec<f64> {
    w.requests
        .windows(2)
        .map(|p| p[1].arrival_s - p[0].arrival_s)
        .collect()
}

fn cv(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    v.sqrt() / m
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accellm-workload-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp file");
    p
}

#[test]
fn azure_conv_with_its_own_timestamps() {
    let w = spec("azure-conv").generate().unwrap();
    assert_eq!(w.requests.len(), 19_366);
    assert_eq!(w.requests[0].arrival_s, 0.0);
    assert!(
        (w.duration_s() - 3501.72).abs() < 0.01,
        "{}",
        w.duration_s()
    );
    assert!(w
        .requests
        .windows(2)
        .all(|p| p[0].arrival_s <= p[1].arrival_s));
    assert_eq!(
        (w.requests[0].prompt_tokens, w.requests[0].output_tokens),
        (374, 44)
    );
    let mean_rate = w.mean_rate().unwrap();
    assert!((mean_rate - 5.53).abs() < 0.01, "{mean_rate}");
}

#[test]
fn retiming_hits_target_rate_and_keeps_burstiness() {
    let orig = spec("azure-code").generate().unwrap();
    let mut s = spec("azure-code");
    s.arrivals = Some(Arrivals::Retime { rate: 10.0 });
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), orig.requests.len());
    assert!((w.mean_rate().unwrap() - 10.0).abs() < 1e-9);
    let (a, b) = (cv(&gaps(&orig)), cv(&gaps(&w)));
    assert!(a > 10.0, "code trace is bursty: {a}");
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");

    // A prefix of the trace is re-timed on its own.
    s.max_requests = Some(500);
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), 500);
    assert!((w.mean_rate().unwrap() - 10.0).abs() < 1e-9);
}

#[test]
fn poisson_and_gamma_arrivals_have_requested_rate_and_cv() {
    for (arrivals, want_cv) in [
        (Arrivals::Poisson { rate: 5.0 }, 1.0),
        (Arrivals::Gamma { rate: 5.0, cv: 3.0 }, 3.0),
        (Arrivals::Gamma { rate: 5.0, cv: 0.5 }, 0.5),
    ] {
        let mut s = spec("synthetic:prompt=100,output=10");
        s.arrivals = Some(arrivals);
        s.max_requests = Some(200_000);
        s.seed = 11;
        let w = s.generate().unwrap();
        let rate = w.mean_rate().unwrap();
        assert!((rate - 5.0).abs() / 5.0 < 0.03, "{arrivals:?}: rate {rate}");
        let c = cv(&gaps(&w));
        assert!((c - want_cv).abs() / want_cv < 0.05, "{arrivals:?}: cv {c}");
    }
}

#[test]
fn azure_lengths_with_new_arrivals_keep_file_order() {
    let orig = spec("azure-conv").generate().unwrap();
    let mut s = spec("azure-conv");
    s.arrivals = Some(Arrivals::Poisson { rate: 2.0 });
    s.max_requests = Some(20);
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), 20);
    for (a, b) in w.requests.iter().zip(&orig.requests) {
        assert_eq!(
            (a.prompt_tokens, a.output_tokens),
            (b.prompt_tokens, b.output_tokens)
        );
    }
}

#[test]
fn same_seed_same_workload_other_seed_differs() {
    let make = |seed| {
        let mut s = spec("sharegpt");
        s.arrivals = Some(Arrivals::Gamma { rate: 3.0, cv: 2.0 });
        s.max_requests = Some(1000);
        s.slo = SloPolicy::Classes {
            classes: SloClass::defaults(),
        };
        s.seed = seed;
        s.generate().unwrap()
    };
    assert_eq!(make(7), make(7));
    let (a, b) = (make(7), make(8));
    assert_ne!(a.requests, b.requests);
}

#[test]
fn length_dataset_one_pass_is_a_permutation() {
    let w = spec("sharegpt").generate().unwrap();
    assert_eq!(w.requests.len(), 30_731);
    assert!(
        w.requests.iter().all(|r| r.arrival_s == 0.0),
        "all at once by default"
    );
    let trace = accellm_workload::TraceFile::load(&BuiltinTrace::Sharegpt.path().unwrap()).unwrap();
    let mut got: Vec<(u32, u32)> = w
        .requests
        .iter()
        .map(|r| (r.prompt_tokens, r.output_tokens))
        .collect();
    let mut want: Vec<(u32, u32)> = trace
        .rows
        .iter()
        .map(|r| (r.prompt_tokens.max(1), r.output_tokens.max(1)))
        .collect();
    assert_ne!(got, want, "shuffled");
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn slo_class_weights_are_respected() {
    let mut s = spec("synthetic:prompt=10,output=10");
    s.max_requests = Some(100_000);
    s.slo = "classes:chat=3,code=0,summarisation=1,batch=0"
        .parse()
        .unwrap();
    let w = s.generate().unwrap();
    let mut counts = [0usize; 4];
    for r in &w.requests {
        let c = r.class.expect("every request has a class") as usize;
        counts[c] += 1;
        let class = &w.classes[c];
        assert_eq!(r.ttft_slo_ms, class.ttft_ms);
        assert_eq!(r.tbt_slo_ms, class.tbt_ms);
        assert_eq!(r.priority, class.priority);
    }
    assert_eq!(counts[1] + counts[3], 0);
    let chat = counts[0] as f64 / 100_000.0;
    assert!((chat - 0.75).abs() < 0.01, "chat share {chat}");
}

#[test]
fn mixture_per_source_classes() {
    let mut s = spec("mix:sharegpt*0.8@chat+arxiv*0.2@summarisation");
    s.arrivals = Some(Arrivals::Poisson { rate: 10.0 });
    s.max_requests = Some(20_000);
    s.slo = SloPolicy::PerSource {
        classes: SloClass::defaults(),
    };
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), 20_000);
    let summ = w
        .requests
        .iter()
        .filter(|r| w.class_of(r).map(|c| c.name.as_str()) == Some("summarisation"))
        .count() as f64
        / 20_000.0;
    assert!((summ - 0.2).abs() < 0.015, "{summ}");
    // arXiv prompts are long; the summarisation requests should be longer on average.
    let mean_prompt = |name: &str| {
        let v: Vec<f64> = w
            .requests
            .iter()
            .filter(|r| w.class_of(r).map(|c| c.name.as_str()) == Some(name))
            .map(|r| r.prompt_tokens as f64)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!((mean_prompt("summarisation") - 2588.0).abs() < 60.0);
    assert!((mean_prompt("chat") - 2340.0).abs() < 60.0);

    s.source = "mix:sharegpt@nope".parse().unwrap();
    assert!(matches!(s.generate(), Err(WorkloadError::Invalid(_))));
}

#[test]
fn limits_duration_and_context() {
    let mut s = spec("azure-conv");
    s.duration_s = Some(60.0);
    let w = s.generate().unwrap();
    assert!(w.requests.iter().all(|r| r.arrival_s < 60.0));
    assert!(
        w.requests.len() > 100 && w.requests.len() < 500,
        "{}",
        w.requests.len()
    );

    let mut s = spec("sharegpt");
    s.arrivals = Some(Arrivals::Poisson { rate: 100.0 });
    s.duration_s = Some(10.0);
    s.max_context = Some(2048);
    let w = s.generate().unwrap();
    assert!(w.requests.len() > 800 && w.requests.len() < 1200);
    assert!(w
        .requests
        .iter()
        .all(|r| r.prompt_tokens + r.output_tokens <= 2048));

    s.context_fit = ContextFit::Drop;
    let dropped = s.generate().unwrap();
    assert!(dropped.requests.len() < w.requests.len());

    let s = spec("synthetic:prompt=10,output=10");
    assert!(
        matches!(s.generate(), Err(WorkloadError::Invalid(_))),
        "unbounded"
    );
}

#[test]
fn trace_timing_needs_a_timed_trace() {
    let mut s = spec("sharegpt");
    s.arrivals = Some(Arrivals::Retime { rate: 1.0 });
    assert!(matches!(s.generate(), Err(WorkloadError::Invalid(_))));
}

#[test]
fn slo_from_file_columns_and_mooncake_retime() {
    let p = temp_file(
        "slo.csv",
        "arrival_s,prompt_tokens,output_tokens,ttft_slo_ms,tbt_slo_ms,priority\n\
         0,10,5,200,20,1\n1.5,20,6,,,\n",
    );
    let mut s = WorkloadSpec::new(WorkloadSource::file(&p));
    s.slo = SloPolicy::FromFile;
    let w = s.generate().unwrap();
    assert_eq!(w.requests[0].ttft_slo_ms, Some(200.0));
    assert_eq!(w.requests[0].priority, 1);
    assert_eq!(w.requests[1].tbt_slo_ms, None);
    assert_eq!(w.requests[1].arrival_s, 1.5);
    s.slo = SloPolicy::None;
    assert_eq!(s.generate().unwrap().requests[0].ttft_slo_ms, None);

    let p = temp_file(
        "mc.jsonl",
        "{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 10, \"hash_ids\": [1,2]}\n\
         {\"timestamp\": 500, \"input_length\": 200, \"output_length\": 20, \"hash_ids\": [1]}\n\
         {\"timestamp\": 2000, \"input_length\": 300, \"output_length\": 30, \"hash_ids\": []}\n",
    );
    let mut s = WorkloadSpec::new(WorkloadSource::file(&p));
    s.arrivals = Some(Arrivals::Retime { rate: 2.0 });
    let w = s.generate().unwrap();
    let t: Vec<f64> = w.requests.iter().map(|r| r.arrival_s).collect();
    assert_eq!(t, vec![0.0, 0.25, 1.0]);

    let bad = temp_file(
        "bad.jsonl",
        "{\"input_length\": 1, \"output_length\": 1}\n[1,2\n",
    );
    match WorkloadSpec::new(WorkloadSource::file(&bad)).generate() {
        Err(WorkloadError::Parse { path, line, .. }) => {
            assert_eq!(path, bad);
            assert_eq!(line, 2);
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    match WorkloadSpec::new(WorkloadSource::file("/nope/x.csv")).generate() {
        Err(e @ WorkloadError::Io { .. }) => assert!(e.to_string().contains("/nope/x.csv")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn spec_from_toml() {
    let s: WorkloadSpec = toml::from_str(
        r#"
        source = "sharegpt"
        arrivals = { kind = "gamma", rate = 4.0, cv = 2.0 }
        max_requests = 50
        max_context = 4096
        context_fit = "scale"
        seed = 3
        slo = { kind = "classes", classes = [
            { name = "fast", weight = 1.0, ttft_ms = 100.0, tbt_ms = 10.0 },
            { name = "slow", weight = 1.0, ttft_ms = 1000.0 },
        ] }
        "#,
    )
    .unwrap();
    assert_eq!(s.source, WorkloadSource::builtin(BuiltinTrace::Sharegpt));
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), 50);
    assert_eq!(w.classes.len(), 2);

    let s: WorkloadSpec = toml::from_str(
        r#"
        max_requests = 10
        [arrivals]
        kind = "poisson"
        rate = 1.0
        [source]
        kind = "mixture"
        components = [
            { source = "arxiv", weight = 1.0, class = "summarisation" },
            { source = { kind = "synthetic", prompt = { kind = "lognormal", median = 100.0, sigma = 0.5 }, output = { kind = "fixed", tokens = 7 } }, weight = 1.0, class = "chat" },
        ]
        [slo]
        kind = "per_source"
        "#,
    )
    .unwrap();
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), 10);
    assert!(w.requests.iter().all(|r| r.class.is_some()));

    // Round trip through TOML.
    let text = toml::to_string(&s).unwrap();
    let back: WorkloadSpec = toml::from_str(&text).unwrap();
    assert_eq!(back, s);
}

#[test]
fn a_million_synthetic_requests() {
    let mut s = spec("synthetic:prompt=lognormal(1000,1),output=uniform(1,512)");
    s.arrivals = Some(Arrivals::Gamma {
        rate: 100.0,
        cv: 2.0,
    });
    s.max_requests = Some(1_000_000);
    s.slo = SloPolicy::Classes {
        classes: SloClass::defaults(),
    };
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), 1_000_000);
    assert!(w
        .requests
        .iter()
        .all(|r| r.output_tokens >= 1 && r.output_tokens <= 512));
}

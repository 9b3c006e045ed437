//! Workloads with shared prefixes: multi-turn chat, system prompts, few-shot templates and
//! Mooncake traces with `hash_ids`.

use std::collections::HashMap;
use std::path::PathBuf;

use accellm_workload::prefix::{common_prefix, covered};
use accellm_workload::{Arrivals, Workload, WorkloadError, WorkloadSource, WorkloadSpec};

fn spec(source: &str, n: usize, arrivals: Option<Arrivals>) -> WorkloadSpec {
    let mut s = WorkloadSpec::new(source.parse().expect("source parses"));
    s.max_requests = Some(n);
    s.arrivals = arrivals;
    s
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accellm-prefix-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp file");
    p
}

/// Every request's segments cover at least its prompt.
fn check_cover(w: &Workload) {
    assert_eq!(w.prefixes.len(), w.requests.len());
    for (r, s) in w.requests.iter().zip(&w.prefixes) {
        assert!(covered(s) >= u64::from(r.prompt_tokens), "{r:?} {s:?}");
    }
}

/// The requests of each conversation (keyed by the stream of its last segment), in order.
fn conversations(w: &Workload) -> HashMap<u64, Vec<usize>> {
    let mut by: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, s) in w.prefixes.iter().enumerate() {
        by.entry(s.last().expect("segments").stream)
            .or_default()
            .push(i);
    }
    by
}

#[test]
fn chat_turns_resend_their_history_after_the_answer() {
    let w = spec(
        "chat:turns=uniform(2,6),user=lognormal(100,0.5),output=lognormal(80,0.5),think_ms=2000,tpot_ms=40,system=300,systems=3",
        2000,
        Some(Arrivals::Poisson { rate: 4.0 }),
    )
    .generate()
    .unwrap();
    assert_eq!(w.requests.len(), 2000);
    check_cover(&w);
    assert!(w
        .requests
        .windows(2)
        .all(|p| p[0].arrival_s <= p[1].arrival_s));
    let convs = conversations(&w);
    let mut follow_ups = 0;
    for turns in convs.values() {
        for pair in turns.windows(2) {
            let (a, b) = (&w.requests[pair[0]], &w.requests[pair[1]]);
            let (sa, sb) = (&w.prefixes[pair[0]], &w.prefixes[pair[1]]);
            // The next prompt holds this prompt and its answer, then a new message.
            let history = u64::from(a.prompt_tokens) + u64::from(a.output_tokens);
            assert_eq!(common_prefix(sa, sb), history);
            assert!(u64::from(b.prompt_tokens) > history);
            // It arrives after the answer (at the assumed 40 ms per token) and 2 s of thought.
            let gap = b.arrival_s - a.arrival_s;
            let expected = f64::from(a.output_tokens) * 0.040 + 2.0;
            assert!((gap - expected).abs() < 1e-6, "{gap} vs {expected}");
            follow_ups += 1;
        }
    }
    assert!(follow_ups > 1000, "{follow_ups} follow-ups");
    // Three system prompts of 300 tokens start every conversation.
    let firsts: std::collections::HashSet<u64> = w.prefixes.iter().map(|s| s[0].stream).collect();
    assert_eq!(firsts.len(), 3);
    assert!(w.prefixes.iter().all(|s| s[0].tokens == 300));
    // The rate is the rate of requests, not of conversations.
    let rate = w.mean_rate().unwrap();
    assert!((rate - 4.0).abs() < 0.4, "{rate}");
}

#[test]
fn chat_is_deterministic_and_fits_the_context() {
    let mk = |seed| {
        let mut s = spec(
            "chat:turns=20,user=200,output=100",
            300,
            Some(Arrivals::Poisson { rate: 2.0 }),
        );
        s.seed = seed;
        s.max_context = Some(2048);
        s.generate().unwrap()
    };
    let (a, b, c) = (mk(1), mk(1), mk(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    check_cover(&a);
    for r in &a.requests {
        assert!(r.prompt_tokens + r.output_tokens <= 2048, "{r:?}");
    }
    // 20 turns of 300 tokens do not fit in 2048: conversations end at turn 6 (6 * 300 + 300 > 2048).
    let longest = conversations(&a).values().map(Vec::len).max().unwrap();
    assert_eq!(longest, 6);
}

#[test]
fn chat_all_at_once_and_duration() {
    let w = spec("chat:turns=3", 30, None).generate().unwrap();
    assert_eq!(w.requests.len(), 30);
    assert_eq!(conversations(&w).len(), 10, "whole conversations");
    let mut s = spec("chat", 0, Some(Arrivals::Poisson { rate: 5.0 }));
    s.max_requests = None;
    s.duration_s = Some(20.0);
    let w = s.generate().unwrap();
    assert!(w.requests.iter().all(|r| r.arrival_s < 20.0));
    // About 25 conversations start (1.25 per second); follow-ups ~10 s apart mostly fall
    // inside the 20 s.
    assert!(w.requests.len() > 30, "{}", w.requests.len());
    assert!(conversations(&w).len() > 15);
}

#[test]
fn system_prompts_are_shared_with_skew() {
    let w = spec(
        "system-prompts:prompts=4,prefix=uniform(500,1500),suffix=50,output=10,zipf=1",
        4000,
        Some(Arrivals::Poisson { rate: 10.0 }),
    )
    .generate()
    .unwrap();
    check_cover(&w);
    let mut count: HashMap<u64, usize> = HashMap::new();
    for s in &w.prefixes {
        *count.entry(s[0].stream).or_default() += 1;
    }
    assert_eq!(count.len(), 4);
    let mut counts: Vec<usize> = count.values().copied().collect();
    counts.sort_unstable();
    // Weights 1, 1/2, 1/3, 1/4: the most popular prompt gets 48%, the least 12%.
    assert!(counts[3] > 1700 && counts[0] < 650, "{counts:?}");
    // Two requests with one system prompt share exactly it; their own text differs.
    let (a, b) = (
        &w.prefixes[0],
        w.prefixes
            .iter()
            .skip(1)
            .find(|s| s[0] == w.prefixes[0][0])
            .unwrap(),
    );
    assert_eq!(common_prefix(a, b), u64::from(a[0].tokens));
    assert_eq!(w.requests[0].prompt_tokens, a[0].tokens + 50);
}

#[test]
fn few_shot_templates_share_their_task_instruction() {
    let w = spec(
        "few-shot:tasks=2,instruction=100,templates=3,shots=2,shot=50,query=20,output=8",
        600,
        None,
    )
    .generate()
    .unwrap();
    check_cover(&w);
    let templates: std::collections::HashSet<(u64, u64)> = w
        .prefixes
        .iter()
        .map(|s| (s[0].stream, s[1].stream))
        .collect();
    assert_eq!(templates.len(), 6);
    for (i, a) in w.prefixes.iter().enumerate().take(50) {
        for b in &w.prefixes[i + 1..] {
            let shared = common_prefix(a, b);
            let expected = if a[1] == b[1] {
                200 // instruction + two 50-token examples
            } else if a[0] == b[0] {
                100
            } else {
                0
            };
            assert_eq!(shared, expected);
        }
    }
    assert!(w.requests.iter().all(|r| r.prompt_tokens == 220));
}

#[test]
fn mooncake_hash_ids_become_shared_blocks() {
    let p = temp_file(
        "mooncake.jsonl",
        "{\"timestamp\": 3052, \"input_length\": 700, \"output_length\": 5, \"hash_ids\": [0, 2]}\n\
         {\"timestamp\": 0, \"input_length\": 1100, \"output_length\": 9, \"hash_ids\": [0, 1, 3]}\n\
         {\"timestamp\": 1000, \"input_length\": 1024, \"output_length\": 7, \"hash_ids\": [0, 1]}\n",
    );
    let w = WorkloadSpec::new(WorkloadSource::file(&p))
        .generate()
        .unwrap();
    check_cover(&w);
    // Sorted by arrival, hash ids with their rows.
    let lens: Vec<u32> = w.requests.iter().map(|r| r.prompt_tokens).collect();
    assert_eq!(lens, vec![1100, 1024, 700]);
    let tokens: Vec<Vec<u32>> = w
        .prefixes
        .iter()
        .map(|s| s.iter().map(|x| x.tokens).collect())
        .collect();
    assert_eq!(
        tokens,
        vec![vec![512, 512, 76], vec![512, 512], vec![512, 188]]
    );
    assert_eq!(common_prefix(&w.prefixes[0], &w.prefixes[1]), 1024);
    assert_eq!(common_prefix(&w.prefixes[0], &w.prefixes[2]), 512);
    // Files without hash ids have no prefix structure.
    let q = temp_file(
        "plain.jsonl",
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 5}\n",
    );
    let w = WorkloadSpec::new(WorkloadSource::file(&q))
        .generate()
        .unwrap();
    assert!(!w.has_prefixes());
    assert!(!serde_json::to_string(&w).unwrap().contains("prefixes"));
}

#[test]
fn mixtures_give_unstructured_parts_their_own_content() {
    let w = spec(
        "mix:system-prompts:prompts=2,prefix=64,suffix=8,output=4*1+synthetic:prompt=30,output=5*1",
        400,
        None,
    )
    .generate()
    .unwrap();
    check_cover(&w);
    let plain: Vec<usize> = (0..w.requests.len())
        .filter(|&i| w.requests[i].prompt_tokens == 30)
        .collect();
    assert!(plain.len() > 100, "{}", plain.len());
    for &i in &plain[..20] {
        for &j in &plain[..20] {
            let shared = common_prefix(&w.prefixes[i], &w.prefixes[j]);
            assert_eq!(shared, if i == j { 30 } else { 0 });
        }
    }
    let e = spec("mix:chat*1+sharegpt*1", 10, None)
        .generate()
        .unwrap_err();
    assert!(e.to_string().contains("mixture"), "{e}");
}

#[test]
fn short_form_errors_name_the_column() {
    let cases = [
        ("chat:turns=x", "column 6", "turns"),
        ("chat:turns=2,colour=5", "column 14", "known: turns"),
        ("system-prompts:prompts=0", "column 16", "prompts"),
        ("few-shot:shots=2,query", "column 18", "KEY=VALUE"),
        ("chat:tpot_ms=-1", "column 6", "non-negative"),
    ];
    for (input, col, what) in cases {
        let e = input.parse::<WorkloadSource>().unwrap_err();
        assert!(matches!(e, WorkloadError::Syntax { .. }), "{input}: {e}");
        let m = e.to_string();
        assert!(m.contains(col) && m.contains(what), "{input}: {m}");
    }
    let e = spec("chat", 10, Some(Arrivals::Trace))
        .generate()
        .unwrap_err();
    assert!(e.to_string().contains("generated arrivals"), "{e}");
}

#[test]
fn shared_sources_from_toml_and_back() {
    let s: WorkloadSpec = toml::from_str(
        r#"
        max_requests = 20
        [source]
        kind = "chat"
        turns = { kind = "fixed", tokens = 4 }
        system = { kind = "fixed", tokens = 100 }
        systems = 2
        "#,
    )
    .unwrap();
    let w = s.generate().unwrap();
    assert_eq!(w.requests.len(), 20);
    assert!(
        w.description.starts_with("chat:turns=4,"),
        "{}",
        w.description
    );
    // The description's short form parses back to the same source.
    let short = w.description.split(", ").next().unwrap();
    assert_eq!(short.parse::<WorkloadSource>().unwrap(), s.source);
    for short in [
        "system-prompts:prompts=3,prefix=10,suffix=5,output=2,zipf=0.5",
        "few-shot:tasks=1,instruction=10,templates=2,shots=3,shot=4,query=5,output=6",
    ] {
        let src: WorkloadSource = short.parse().unwrap();
        assert_eq!(src.describe(), short);
        let text = toml::to_string(&WorkloadSpec::new(src.clone())).unwrap();
        let back: WorkloadSpec = toml::from_str(&text).unwrap();
        assert_eq!(back.source, src, "{text}");
    }
}

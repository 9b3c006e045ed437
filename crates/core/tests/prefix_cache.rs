//! Prefix caching through the whole scheduler: hits skip prefill, shared blocks are freed or
//! cached (never leaked), replicas count as cache, and cache-aware routing follows the prefix.

mod common;
use common::{assert_all_done, build, cluster, config, drive, instance, requests};

use accellm_core::{
    cluster::{accellm::AccellmConfig, least_load::LeastLoadConfig, ClusterConfig},
    kv::{run_keys, BlockKeys},
    replay::{self, NoObserver, Observer},
    request::RequestSpec,
    scheduler::{Action, Scheduler},
    TimeUs,
};

fn sched(ccfg: &ClusterConfig, inst: &str, n: u32, cache: bool) -> Scheduler {
    let mut cfg = config(400);
    cfg.prefix_cache = cache;
    build(&cfg, n, ccfg, &instance(inst))
}

/// Keys of a prompt whose first `shared` tokens come from stream `common` and the rest from the
/// request's own stream.
fn keys(common: u64, shared: u32, own: u64, prompt: u32) -> Option<BlockKeys> {
    Some(run_keys(&[(common, 0, shared), (own, 0, prompt - shared)], 16).into())
}

/// Records each request's first-token time.
#[derive(Default)]
struct FirstTokens(Vec<(u32, TimeUs)>);
impl Observer for FirstTokens {
    fn on_action(&mut self, now: TimeUs, a: &Action, _s: &Scheduler) {
        if let Action::Finished { request, .. } = a {
            self.0.push((request.0, now));
        }
    }
}

/// Eight requests, well apart, all starting with the same 480-token system prompt.
fn shared_system_prompt() -> (Vec<RequestSpec>, Vec<Option<BlockKeys>>) {
    let reqs = requests(8, 200_000, |_| 500, |_| 4);
    let keys = (0..8).map(|i| keys(1, 480, 100 + i, 500)).collect();
    (reqs, keys)
}

#[test]
fn a_cached_prefix_is_not_prefilled_again() {
    let (reqs, keys) = shared_system_prompt();
    let mut on = sched(&cluster("round-robin"), "vllm", 1, true);
    replay::run_keyed(&mut on, &reqs, &keys, &mut NoObserver, None);
    let mut off = sched(&cluster("round-robin"), "vllm", 1, false);
    replay::run_keyed(&mut off, &reqs, &keys, &mut NoObserver, None);
    // The first request computes everything; the other seven find 480 tokens (30 blocks).
    let c = on.counters();
    assert_eq!(c.prefix_query_tokens, 8 * 500);
    assert_eq!(c.prefix_hit_tokens, 7 * 480);
    assert_eq!(off.counters().prefix_hit_tokens, 0);
    let ttft = |s: &Scheduler| {
        let f = &s.metrics().finished;
        f.iter().map(|r| r.ttft_us).sum::<TimeUs>() / f.len() as TimeUs
    };
    assert!(
        ttft(&on) * 2 < ttft(&off),
        "mean TTFT {} us with the cache, {} us without",
        ttft(&on),
        ttft(&off)
    );
    assert_all_done(&on, &reqs);
    assert_all_done(&off, &reqs);
    // The shared prefix stays cached after everything ended.
    assert!(on.instance(0).kv.cached_blocks() >= 30);
    assert_eq!(off.instance(0).kv.cached_blocks(), 0);
}

#[test]
fn a_full_hit_still_computes_the_last_prompt_token() {
    // Two identical 64-token prompts (4 full blocks): the second may reuse 3 blocks only, since
    // the block with its last token must be computed to yield the first output token.
    let reqs = requests(2, 200_000, |_| 64, |_| 2);
    let k = keys(9, 64, 9, 64);
    let mut s = sched(&cluster("round-robin"), "sarathi", 1, true);
    replay::run_keyed(&mut s, &reqs, &[k.clone(), k], &mut NoObserver, None);
    assert_eq!(s.counters().prefix_hit_tokens, 48);
    assert_all_done(&s, &reqs);
}

#[test]
fn concurrent_requests_share_blocks_and_free_them_once() {
    // All eight arrive together: the first to start publishes its blocks as its prefill
    // progresses, later ones share them while both run; nothing leaks at the end.
    let reqs = requests(8, 0, |_| 500, |_| 20);
    let keys: Vec<_> = (0..8).map(|i| keys(1, 480, 100 + i, 500)).collect();
    let mut s = sched(&cluster("round-robin"), "sarathi", 1, true);
    replay::run_keyed(&mut s, &reqs, &keys, &mut NoObserver, None);
    assert!(s.counters().prefix_hit_tokens > 0);
    assert_all_done(&s, &reqs);
}

#[test]
fn cache_aware_routing_follows_the_prefix() {
    // Four instances; turns of four conversations interleave while earlier turns still decode,
    // so least-load spreads each conversation over the instances. With a prefix weight a
    // follow-up goes where its conversation's history is cached.
    let turn = |i: u32| 200 + 40 * (i / 4);
    let reqs = requests(24, 20_000, turn, |_| 300);
    let keys: Vec<_> = (0..24u32)
        .map(|i| Some(run_keys(&[((i % 4) as u64, 0, turn(i))], 16).into()))
        .collect();
    let hits = |w: f64| {
        let ccfg = ClusterConfig::LeastLoad(LeastLoadConfig { prefix_weight: w });
        let mut s = sched(&ccfg, "vllm", 4, true);
        replay::run_keyed(&mut s, &reqs, &keys, &mut NoObserver, None);
        assert_all_done(&s, &reqs);
        s.counters().prefix_hit_tokens
    };
    let (plain, aware) = (hits(0.0), hits(1.0));
    // At best every follow-up hits its predecessor's whole prompt (in full blocks).
    let best: u64 = (4..24u32).map(|i| (turn(i - 4) / 16 * 16) as u64).sum();
    assert!(aware <= best);
    assert!(
        aware * 10 >= best * 9 && aware > plain * 3 / 2,
        "least-load hit {plain} tokens, cache-aware {aware}, at best {best}"
    );
}

#[test]
fn accellm_replicas_are_cache_on_either_partner() {
    let (reqs, keys) = shared_system_prompt();
    let run = |replicas_as_cache: bool| {
        let ccfg = ClusterConfig::Accellm(AccellmConfig {
            replicas_as_cache,
            ..Default::default()
        });
        let mut s = sched(&ccfg, "vllm", 2, true);
        let mut firsts = FirstTokens::default();
        replay::run_keyed(&mut s, &reqs, &keys, &mut firsts, None);
        assert_all_done(&s, &reqs);
        (s.counters().prefix_hit_tokens, s.counters().copy_bytes)
    };
    let (with, with_bytes) = run(true);
    let (without, without_bytes) = run(false);
    assert_eq!(
        with,
        7 * 480,
        "every later request hits on whichever partner prefills"
    );
    assert!(without <= with);
    // Replicas that start from the partner's own cache copy fewer bytes.
    assert!(with_bytes <= without_bytes);
}

#[test]
fn a_request_cancelled_after_its_first_token_leaves_its_prompt_cached() {
    // A streaming client that stops reading after the first token, on the default AcceLLM pair:
    // the next request with the same prompt must hit every full block of it.
    let mut s = sched(&cluster("accellm"), "accelgen", 2, true);
    let spec = |at: TimeUs| RequestSpec {
        arrival_us: at,
        ..requests(1, 0, |_| 500, |_| 50)[0]
    };
    let k = keys(1, 480, 100, 500);
    let first = s.submit_keyed(0, spec(0), k.clone());
    let now = drive(&mut s, 0, &mut |_| {}, &|s| {
        s.request(first).is_some_and(|r| r.generated >= 1)
    });
    assert!(s.request(first).is_some(), "still running when cancelled");
    // Cancelled while its next step is in flight: it ends when that step does.
    s.cancel(now, first);
    let now = drive(&mut s, now, &mut |_| {}, &|s| s.request(first).is_none());
    assert!(s.request(first).is_none());
    let hits = s.counters().prefix_hit_tokens;
    let second = s.submit_keyed(now + 1, spec(now + 1), k);
    drive(&mut s, now + 1, &mut |_| {}, &|s| {
        s.request(second).is_some_and(|r| r.generated >= 1)
    });
    // 500 tokens = 31 full blocks of 16 (496 tokens); the last prompt token is always computed.
    assert_eq!(
        s.counters().prefix_hit_tokens - hits,
        496,
        "the first request's prompt blocks stayed cached"
    );
}

//! Prefix-cache holes: generated tokens' blocks are cached once their KV exists (keys the
//! executor adds as blocks fill), and a request's computed blocks stay cached on every instance
//! holding them however it ends (cancelled right after its first token, its instance lost).

mod common;
use common::{build, cluster, config, drive, instance, requests};

use accellm_core::{
    kv::{run_keys, BlockKeys},
    request::{RequestId, RequestSpec},
    scheduler::Scheduler,
    TimeUs,
};

const BS: u32 = 16;

fn sched(cluster_policy: &str, inst: &str, n: u32) -> Scheduler {
    build(&config(400), n, &cluster(cluster_policy), &instance(inst))
}

fn spec(at: TimeUs, prompt: u32, output: u32) -> RequestSpec {
    RequestSpec {
        arrival_us: at,
        ..requests(1, 0, |_| prompt, |_| output)[0]
    }
}

fn keys(runs: &[(u64, u32, u32)]) -> Vec<u64> {
    run_keys(runs, BS)
}

/// The executor's side of generated keys: after each event, the keys of `id`'s stream (stream
/// 7: its prompt, then its output) that filled since, as the server derives them from tokens.
fn extend_as_tokens_arrive(
    id: RequestId,
    prompt: u32,
    known: &mut usize,
) -> impl FnMut(&mut Scheduler) + '_ {
    move |s: &mut Scheduler| {
        let Some(r) = s.request(id) else { return };
        let all = keys(&[(7, 0, prompt + r.generated)]);
        // Never more than the tokens known: the prompt and the tokens sampled so far.
        assert!(all.len() as u32 * BS <= prompt + r.generated);
        let kv_tokens = r.kv_tokens;
        if all.len() > *known {
            s.extend_block_keys(id, &all[*known..]);
            *known = all.len();
        }
        // A block is offered only once the KV of all its tokens exists.
        let inst = s.request(id).map_or(0, |r| r.instance);
        let found = s.instance(inst).kv.lookup(&all);
        assert!(
            found * BS <= kv_tokens,
            "{found} blocks offered with the KV of {kv_tokens} tokens computed"
        );
    }
}

#[test]
fn a_follow_up_that_resends_the_answer_hits_the_answer() {
    let mut s = sched("round-robin", "vllm", 1);
    let prompt = keys(&[(7, 0, 100)]);
    let first = s.submit_keyed(0, spec(0, 100, 60), Some(BlockKeys::from(prompt.clone())));
    let mut known = prompt.len();
    let now = drive(
        &mut s,
        0,
        &mut extend_as_tokens_arrive(first, 100, &mut known),
        &|s| s.request(first).is_none(),
    );
    assert!(s.request(first).is_none());
    // Keys of 144 tokens at least: the last block filled with the last token, in the
    // iteration that ended the request.
    assert!(known >= 9, "{known} keys");
    // The next turn: the prompt, the answer, a new question (200 tokens).
    let next = keys(&[(7, 0, 160), (8, 0, 40)]);
    let before = s.counters().prefix_hit_tokens;
    let second = s.submit_keyed(now + 1, spec(now + 1, 200, 2), Some(BlockKeys::from(next)));
    drive(&mut s, now + 1, &mut |_| {}, &|s| {
        s.request(second).is_none()
    });
    // The last answer token's KV was never computed: 159 tokens, 9 full blocks (the prompt
    // alone fills 6).
    assert_eq!(s.counters().prefix_hit_tokens - before, 9 * 16);
    s.check_invariants().unwrap();
}

#[test]
fn keys_given_up_front_are_offered_only_once_computed() {
    // The simulator knows a chat answer's content at submission: the same blocks hit as when
    // the keys arrive token by token.
    let mut s = sched("round-robin", "sarathi", 1);
    let whole = keys(&[(7, 0, 160)]);
    let first = s.submit_keyed(0, spec(0, 100, 60), Some(BlockKeys::from(whole.clone())));
    let mut seen = 0;
    let now = drive(
        &mut s,
        0,
        &mut |s: &mut Scheduler| {
            if let Some(r) = s.request(first) {
                let found = s.instance(0).kv.lookup(&whole);
                assert!(found * BS <= r.kv_tokens);
                seen = seen.max(found);
            }
        },
        &|s| s.request(first).is_none(),
    );
    assert_eq!(seen, 9);
    let before = s.counters().prefix_hit_tokens;
    let next = keys(&[(7, 0, 160), (8, 0, 40)]);
    let second = s.submit_keyed(now + 1, spec(now + 1, 200, 2), Some(BlockKeys::from(next)));
    drive(&mut s, now + 1, &mut |_| {}, &|s| {
        s.request(second).is_none()
    });
    assert_eq!(s.counters().prefix_hit_tokens - before, 9 * 16);
}

/// Full blocks of `keys` cached on each instance of `s`.
fn cached_on(s: &Scheduler, keys: &[u64]) -> Vec<u32> {
    s.instances().iter().map(|i| i.kv.lookup(keys)).collect()
}

#[test]
fn a_request_cancelled_at_its_first_token_stays_cached_on_both_partners() {
    // The default AcceLLM pair: the prompt is prefilled on one partner with a replica on the
    // other. Its client goes away at the first token; whichever partner prefills the next
    // request with that prompt (the other may be busy) must find it.
    let mut s = sched("accellm", "accelgen", 2);
    let prompt = keys(&[(1, 0, 500)]);
    let k = Some(BlockKeys::from(prompt.clone()));
    let first = s.submit_keyed(0, spec(0, 500, 50), k.clone());
    let now = drive(&mut s, 0, &mut |_| {}, &|s| {
        s.request(first).is_some_and(|r| r.generated >= 1)
    });
    s.cancel(now, first);
    let now = drive(&mut s, now, &mut |_| {}, &|s| s.request(first).is_none());
    assert!(s.request(first).is_none());
    // 500 tokens: 31 full blocks.
    let cached = cached_on(&s, &prompt);
    assert!(
        cached.iter().all(|&c| c * 10 >= 31 * 9),
        "full blocks of the prompt cached per instance: {cached:?}"
    );
    s.check_invariants().unwrap();
    // Two more with the same prompt, the second while the first still decodes.
    let before = s.counters().prefix_hit_tokens;
    let second = s.submit_keyed(now + 1, spec(now + 1, 500, 400), k.clone());
    let now = drive(&mut s, now + 1, &mut |_| {}, &|s| {
        s.request(second).is_some_and(|r| r.generated >= 2)
    });
    let hit2 = s.counters().prefix_hit_tokens - before;
    let third = s.submit_keyed(now + 1, spec(now + 1, 500, 2), k);
    drive(&mut s, now + 1, &mut |_| {}, &|s| {
        s.request(third).is_none()
    });
    let hit3 = s.counters().prefix_hit_tokens - before - hit2;
    assert!(
        hit2 >= 31 * 16 * 9 / 10 && hit3 >= 31 * 16 * 9 / 10,
        "hits after the cancelled request: {hit2} and {hit3} of 496 tokens"
    );
}

#[test]
fn a_request_recovered_on_its_replica_and_then_cancelled_stays_cached_there() {
    // The instance running a decode is lost; its partner's replica takes over (it becomes the
    // primary), and the client goes away before it runs there: the partner keeps the prompt.
    let mut s = sched("accellm", "accelgen", 2);
    let prompt = keys(&[(1, 0, 500)]);
    let first = s.submit_keyed(0, spec(0, 500, 400), Some(BlockKeys::from(prompt.clone())));
    let now = drive(&mut s, 0, &mut |_| {}, &|s| {
        s.request(first)
            .is_some_and(|r| r.generated >= 3 && r.replica_current())
    });
    let r = s.request(first).expect("still running");
    let (on, replica) = (r.instance, r.replica_on().expect("a replica"));
    let recovered = s.instance_down(now, on);
    assert_eq!(recovered.len(), 1);
    s.cancel(now, first);
    drive(&mut s, now, &mut |_| {}, &|s| s.request(first).is_none());
    assert!(s.request(first).is_none());
    let cached = s.instance(replica).kv.lookup(&prompt);
    assert!(
        cached >= 31 * 9 / 10,
        "{cached} of 31 prompt blocks cached on the survivor"
    );
    s.check_invariants().unwrap();
}

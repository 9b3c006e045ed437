//! Generated workloads whose requests share prefixes, as real traffic does:
//!
//! - [`ChatSpec`]: multi-turn conversations. Each turn resends the whole history (an optional
//!   shared system prompt, every earlier user message and answer) plus a new user message; the
//!   next turn arrives after this turn's answer (`output` tokens at an assumed `tpot_ms`) plus
//!   a think time.
//! - [`SystemPromptSpec`]: `prompts` system prompts shared by many requests, each followed by a
//!   request's own text (SGLang's "generated shared prefix" benchmark).
//! - [`FewShotSpec`]: few-shot templates: per task an instruction, then `templates` different
//!   sets of `shots` examples; a request is one template plus its own query.
//!
//! Each request gets [`Segment`]s naming its content (see [`crate::prefix`]); everything is
//! deterministic for a seed.

use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::arrivals::{ArrivalClock, Arrivals};
use crate::lengths::LengthDist;
use crate::prefix::{stream_id, Segment, StreamKind};
use crate::rng::Rng;
use crate::{RequestSpec, WorkloadError};

/// Multi-turn conversations.
///
/// Short form: `chat` or `chat:turns=uniform(2,6),user=lognormal(128,0.6),
/// output=lognormal(128,0.6),think_ms=lognormal(4000,0.5),tpot_ms=50,system=512,systems=4`
/// (every key optional). The arrival rate is the rate of requests: conversations start at
/// `rate / mean turns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSpec {
    /// Turns per conversation.
    pub turns: LengthDist,
    /// Tokens of each new user message.
    pub user: LengthDist,
    /// Tokens of each answer.
    pub output: LengthDist,
    /// The user's think time after an answer, ms.
    pub think_ms: LengthDist,
    /// Time per answer token assumed when placing the next turn after the answer, ms.
    pub tpot_ms: f64,
    /// Tokens of the system prompt that starts every conversation (none if absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<LengthDist>,
    /// Distinct system prompts (each conversation picks one uniformly).
    pub systems: u32,
}

impl Default for ChatSpec {
    fn default() -> Self {
        ChatSpec {
            turns: LengthDist::Uniform { min: 2, max: 6 },
            user: lognormal(128.0, 0.6),
            output: lognormal(128.0, 0.6),
            think_ms: lognormal(4000.0, 0.5),
            tpot_ms: 50.0,
            system: None,
            systems: 1,
        }
    }
}

/// Requests sharing one of a few system prompts.
///
/// Short form: `system-prompts` or `system-prompts:prompts=8,prefix=1024,
/// suffix=lognormal(128,0.6),output=lognormal(128,0.6),zipf=1.0` (every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemPromptSpec {
    /// Number of distinct system prompts.
    pub prompts: u32,
    /// Tokens of each system prompt (drawn once per prompt).
    pub prefix: LengthDist,
    /// Tokens of each request's own text after its system prompt.
    pub suffix: LengthDist,
    /// Output tokens.
    pub output: LengthDist,
    /// Popularity skew: prompt `k` is picked with weight `1 / (k + 1)^zipf` (0: uniform).
    pub zipf: f64,
}

impl Default for SystemPromptSpec {
    fn default() -> Self {
        SystemPromptSpec {
            prompts: 8,
            prefix: LengthDist::Fixed { tokens: 1024 },
            suffix: lognormal(128.0, 0.6),
            output: lognormal(128.0, 0.6),
            zipf: 0.0,
        }
    }
}

/// Requests built from few-shot templates.
///
/// Short form: `few-shot` or `few-shot:tasks=4,instruction=128,templates=4,shots=4,
/// shot=lognormal(128,0.3),query=lognormal(64,0.5),output=lognormal(64,0.5)` (every key
/// optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FewShotSpec {
    /// Tasks; each has its own instruction.
    pub tasks: u32,
    /// Tokens of a task's instruction.
    pub instruction: LengthDist,
    /// Templates per task: different example sets after the same instruction.
    pub templates: u32,
    /// Examples per template.
    pub shots: u32,
    /// Tokens of each example.
    pub shot: LengthDist,
    /// Tokens of each request's own query.
    pub query: LengthDist,
    /// Output tokens.
    pub output: LengthDist,
}

impl Default for FewShotSpec {
    fn default() -> Self {
        FewShotSpec {
            tasks: 4,
            instruction: LengthDist::Fixed { tokens: 128 },
            templates: 4,
            shots: 4,
            shot: lognormal(128.0, 0.3),
            query: lognormal(64.0, 0.5),
            output: lognormal(64.0, 0.5),
        }
    }
}

fn lognormal(median: f64, sigma: f64) -> LengthDist {
    LengthDist::LogNormal {
        median: Some(median),
        mean: None,
        sigma,
    }
}

fn invalid(m: String) -> WorkloadError {
    WorkloadError::Invalid(m)
}

impl ChatSpec {
    pub(crate) fn validate(&self) -> Result<(), WorkloadError> {
        for d in [&self.turns, &self.user, &self.output, &self.think_ms] {
            d.validate()?;
        }
        if let Some(s) = &self.system {
            s.validate()?;
        }
        if !(self.tpot_ms >= 0.0 && self.tpot_ms.is_finite()) {
            return Err(invalid(format!(
                "chat: tpot_ms must be non-negative, got {}",
                self.tpot_ms
            )));
        }
        if self.system.is_some() && self.systems == 0 {
            return Err(invalid("chat: systems must be at least 1".into()));
        }
        Ok(())
    }

    /// Generates conversations until `limit` requests (the first `limit` by arrival) or until
    /// `duration_s`; turns whose prompt and answer would exceed `max_context` end their
    /// conversation (a first turn is kept and fitted later).
    pub(crate) fn generate(
        &self,
        arrivals: Arrivals,
        limit: Option<usize>,
        duration_s: Option<f64>,
        max_context: Option<u32>,
        seed: u64,
    ) -> Result<(Vec<RequestSpec>, Vec<Vec<Segment>>), WorkloadError> {
        self.validate()?;
        let mean_turns = self.turns.mean().max(1.0);
        let starts = match arrivals {
            Arrivals::Poisson { rate } => Arrivals::Poisson {
                rate: rate / mean_turns,
            },
            Arrivals::Gamma { rate, cv } => Arrivals::Gamma {
                rate: rate / mean_turns,
                cv,
            },
            Arrivals::AllAtOnce => Arrivals::AllAtOnce,
            Arrivals::Trace | Arrivals::Retime { .. } => {
                return Err(invalid(format!(
                    "chat conversations need generated arrivals (poisson, gamma, all-at-once), \
                     not `{}`",
                    arrivals.describe()
                )))
            }
        };
        let all_at_once = starts == Arrivals::AllAtOnce;
        if limit.is_none() && (duration_s.is_none() || all_at_once) {
            return Err(invalid(
                "give max_requests (or a duration with a finite rate) for chat conversations"
                    .into(),
            ));
        }
        let limit = limit.unwrap_or(usize::MAX);
        let mut clock = ArrivalClock::new(starts, Rng::stream(seed, STREAM_STARTS));
        let mut rng = Rng::stream(seed, STREAM_TURNS);
        let mut sys_rng = Rng::stream(seed, STREAM_PREFIXES);
        let systems: Vec<(u64, u32)> = match &self.system {
            Some(d) => (0..self.systems)
                .map(|k| {
                    (
                        stream_id(StreamKind::System, seed, 0, u64::from(k)),
                        d.sample(&mut sys_rng),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let mut out: Vec<(RequestSpec, Vec<Segment>)> = Vec::new();
        // The `limit` earliest arrivals so far (a max-heap of their bit patterns: non-negative
        // floats order like their bits); once full, a conversation starting after its top
        // cannot change the first `limit` requests.
        let mut earliest: BinaryHeap<u64> = BinaryHeap::new();
        for conv in 0u64.. {
            let start = clock.next_arrival();
            if duration_s.is_some_and(|d| start >= d) {
                break;
            }
            if earliest.len() >= limit {
                let bound = earliest
                    .peek()
                    .map_or(f64::INFINITY, |b| f64::from_bits(*b));
                if all_at_once || start >= bound {
                    break;
                }
            }
            let system = match systems.len() {
                0 => None,
                n => Some(systems[rng.below(n as u64) as usize]),
            };
            let turns = self.turns.sample(&mut rng);
            let stream = stream_id(StreamKind::Conversation, seed, 0, conv);
            let mut history = 0u32;
            let mut at = start;
            for turn in 0..turns {
                let user = self.user.sample(&mut rng);
                let output = self.output.sample(&mut rng);
                let think_s = f64::from(self.think_ms.sample(&mut rng)) / 1e3;
                let sys = system.map_or(0, |s| s.1);
                let prompt = sys.saturating_add(history).saturating_add(user);
                let total = u64::from(prompt) + u64::from(output);
                if turn > 0 && max_context.is_some_and(|m| total > u64::from(m)) {
                    break;
                }
                if duration_s.is_some_and(|d| at >= d) {
                    break;
                }
                let mut segments = Vec::with_capacity(2);
                if let Some((s, n)) = system {
                    segments.push(Segment::start(s, n));
                }
                segments.push(Segment::start(
                    stream,
                    history.saturating_add(user).saturating_add(output),
                ));
                out.push((request(at, prompt, output), segments));
                earliest.push(at.to_bits());
                if earliest.len() > limit {
                    earliest.pop();
                }
                history = history.saturating_add(user).saturating_add(output);
                at += f64::from(output) * self.tpot_ms / 1e3 + think_s;
            }
        }
        out.sort_by(|a, b| a.0.arrival_s.total_cmp(&b.0.arrival_s));
        out.truncate(limit);
        Ok(out.into_iter().unzip())
    }
}

/// Most shared prefixes a pool holds (they are built up front).
const MAX_PREFIXES: u32 = 1_000_000;

/// Random streams of the generators (disjoint from `spec`'s).
const STREAM_STARTS: u64 = 101;
const STREAM_TURNS: u64 = 102;
const STREAM_PREFIXES: u64 = 103;

/// Shared prefixes that requests pick from, each followed by a request's own text.
#[derive(Debug, Clone)]
pub(crate) struct PrefixPool {
    /// The shared prefixes.
    prefixes: Vec<Vec<Segment>>,
    /// Cumulative pick weights, parallel to `prefixes`.
    cumulative: Vec<f64>,
    /// Tokens of a request's own text.
    suffix: LengthDist,
    /// Output tokens.
    output: LengthDist,
    /// Names the requests' own streams.
    seed: u64,
    part: u64,
    drawn: u64,
}

impl PrefixPool {
    /// The pool of `spec`, for mixture part `part`.
    pub(crate) fn system_prompts(
        spec: &SystemPromptSpec,
        seed: u64,
        part: u64,
    ) -> Result<Self, WorkloadError> {
        for d in [&spec.prefix, &spec.suffix, &spec.output] {
            d.validate()?;
        }
        if !(1..=MAX_PREFIXES).contains(&spec.prompts) {
            return Err(invalid(format!(
                "system-prompts: prompts must be within 1..={MAX_PREFIXES}, got {}",
                spec.prompts
            )));
        }
        if !(spec.zipf >= 0.0 && spec.zipf.is_finite()) {
            return Err(invalid(format!(
                "system-prompts: zipf must be non-negative, got {}",
                spec.zipf
            )));
        }
        let mut rng = Rng::stream(seed, STREAM_PREFIXES ^ (part << 8));
        let prefixes = (0..spec.prompts)
            .map(|k| {
                let s = stream_id(StreamKind::System, seed, part, u64::from(k));
                vec![Segment::start(s, spec.prefix.sample(&mut rng))]
            })
            .collect();
        let cumulative = (0..spec.prompts)
            .scan(0.0, |acc, k| {
                *acc += 1.0 / f64::from(k + 1).powf(spec.zipf);
                Some(*acc)
            })
            .collect();
        Ok(PrefixPool {
            prefixes,
            cumulative,
            suffix: spec.suffix.clone(),
            output: spec.output.clone(),
            seed,
            part,
            drawn: 0,
        })
    }

    /// The pool of `spec`: one prefix per (task, template), picked uniformly.
    pub(crate) fn few_shot(
        spec: &FewShotSpec,
        seed: u64,
        part: u64,
    ) -> Result<Self, WorkloadError> {
        for d in [&spec.instruction, &spec.shot, &spec.query, &spec.output] {
            d.validate()?;
        }
        let n = u64::from(spec.tasks) * u64::from(spec.templates);
        if spec.tasks == 0 || spec.templates == 0 || n > u64::from(MAX_PREFIXES) {
            return Err(invalid(format!(
                "few-shot: tasks and templates must be at least 1, tasks x templates at most \
                 {MAX_PREFIXES}, got {} x {}",
                spec.tasks, spec.templates
            )));
        }
        let mut rng = Rng::stream(seed, STREAM_PREFIXES ^ (part << 8));
        let mut prefixes = Vec::new();
        for task in 0..u64::from(spec.tasks) {
            let instruction = Segment::start(
                stream_id(StreamKind::Instruction, seed, part, task),
                spec.instruction.sample(&mut rng),
            );
            for t in 0..u64::from(spec.templates) {
                let shots: u32 = (0..spec.shots)
                    .map(|_| spec.shot.sample(&mut rng))
                    .fold(0u32, u32::saturating_add);
                let mut p = vec![instruction];
                if shots > 0 {
                    let id = task * u64::from(spec.templates) + t;
                    p.push(Segment::start(
                        stream_id(StreamKind::Shots, seed, part, id),
                        shots,
                    ));
                }
                prefixes.push(p);
            }
        }
        let cumulative = (1..=prefixes.len()).map(|k| k as f64).collect();
        Ok(PrefixPool {
            prefixes,
            cumulative,
            suffix: spec.query.clone(),
            output: spec.output.clone(),
            seed,
            part,
            drawn: 0,
        })
    }

    /// Draws the next request (arrival 0) and its segments.
    pub(crate) fn draw(&mut self, rng: &mut Rng) -> (RequestSpec, Vec<Segment>) {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.next_f64() * total;
        let k = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.prefixes.len() - 1);
        let own = self.suffix.sample(rng);
        let output = self.output.sample(rng);
        let mut segments = self.prefixes[k].clone();
        let own_stream = stream_id(StreamKind::Unique, self.seed, self.part, self.drawn);
        self.drawn += 1;
        segments.push(Segment::start(own_stream, own));
        let prompt = segments
            .iter()
            .fold(0u32, |acc, s| acc.saturating_add(s.tokens));
        (request(0.0, prompt, output), segments)
    }
}

fn request(arrival_s: f64, prompt: u32, output: u32) -> RequestSpec {
    RequestSpec {
        arrival_s,
        prompt_tokens: prompt.max(1),
        output_tokens: output.max(1),
        ttft_slo_ms: None,
        tbt_slo_ms: None,
        priority: 0,
        class: None,
    }
}

/// The 1-based column where `part` (a slice of `input`) starts in `input`.
fn column(input: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(input.as_ptr() as usize) + 1
}

/// `key=value` pairs of a short form, each with the 1-based column of its key in `input`.
pub(crate) fn key_values<'a>(
    input: &'a str,
    rest: &'a str,
) -> Result<Vec<(&'a str, &'a str, usize)>, WorkloadError> {
    let mut out = Vec::new();
    for part in crate::source::split_top(rest, ',') {
        if part.trim().is_empty() {
            continue;
        }
        let col = column(input, part);
        let (k, v) = part.split_once('=').ok_or_else(|| WorkloadError::Syntax {
            input: input.to_string(),
            message: format!("column {col}: expected KEY=VALUE, got `{part}`"),
        })?;
        out.push((k.trim(), v.trim(), col));
    }
    Ok(out)
}

/// Reads `key=value` pairs into a spec's fields, naming the column of a bad one.
struct Fields<'a> {
    input: &'a str,
    kind: &'a str,
    known: &'a [&'a str],
}

impl Fields<'_> {
    fn err(&self, col: usize, m: String) -> WorkloadError {
        WorkloadError::Syntax {
            input: self.input.to_string(),
            message: format!("column {col}: {m}"),
        }
    }

    fn dist(&self, v: &str, key: &str, col: usize) -> Result<LengthDist, WorkloadError> {
        LengthDist::parse(v).map_err(|e| match e {
            WorkloadError::Syntax { message, .. } => self.err(col, format!("{key}: {message}")),
            other => self.err(col, format!("{key}: {other}")),
        })
    }

    fn count(&self, v: &str, key: &str, col: usize) -> Result<u32, WorkloadError> {
        v.parse()
            .map_err(|_| self.err(col, format!("{key}: expected a whole number, got `{v}`")))
    }

    fn number(&self, v: &str, key: &str, col: usize) -> Result<f64, WorkloadError> {
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| {
                self.err(
                    col,
                    format!("{key}: expected a non-negative number, got `{v}`"),
                )
            })
    }

    fn unknown(&self, key: &str, col: usize) -> WorkloadError {
        self.err(
            col,
            format!(
                "unknown {} key `{key}` (known: {})",
                self.kind,
                self.known.join(", ")
            ),
        )
    }
}

/// Parses the keys of `chat:...`.
pub(crate) fn parse_chat(input: &str, rest: &str) -> Result<ChatSpec, WorkloadError> {
    let f = Fields {
        input,
        kind: "chat",
        known: &[
            "turns", "user", "output", "think_ms", "tpot_ms", "system", "systems",
        ],
    };
    let mut s = ChatSpec::default();
    for (k, v, col) in key_values(input, rest)? {
        match k {
            "turns" => s.turns = f.dist(v, k, col)?,
            "user" => s.user = f.dist(v, k, col)?,
            "output" => s.output = f.dist(v, k, col)?,
            "think_ms" | "think" => s.think_ms = f.dist(v, k, col)?,
            "tpot_ms" => s.tpot_ms = f.number(v, k, col)?,
            "system" => s.system = Some(f.dist(v, k, col)?),
            "systems" => s.systems = f.count(v, k, col)?,
            _ => return Err(f.unknown(k, col)),
        }
    }
    s.validate()
        .map_err(|e| f.err(column(input, rest), e.to_string()))?;
    Ok(s)
}

/// Parses the keys of `system-prompts:...`.
pub(crate) fn parse_system_prompts(
    input: &str,
    rest: &str,
) -> Result<SystemPromptSpec, WorkloadError> {
    let f = Fields {
        input,
        kind: "system-prompts",
        known: &["prompts", "prefix", "suffix", "output", "zipf"],
    };
    let mut s = SystemPromptSpec::default();
    for (k, v, col) in key_values(input, rest)? {
        match k {
            "prompts" => s.prompts = f.count(v, k, col)?,
            "prefix" => s.prefix = f.dist(v, k, col)?,
            "suffix" => s.suffix = f.dist(v, k, col)?,
            "output" => s.output = f.dist(v, k, col)?,
            "zipf" => s.zipf = f.number(v, k, col)?,
            _ => return Err(f.unknown(k, col)),
        }
    }
    PrefixPool::system_prompts(&s, 0, 0).map_err(|e| f.err(column(input, rest), e.to_string()))?;
    Ok(s)
}

/// Parses the keys of `few-shot:...`.
pub(crate) fn parse_few_shot(input: &str, rest: &str) -> Result<FewShotSpec, WorkloadError> {
    let f = Fields {
        input,
        kind: "few-shot",
        known: &[
            "tasks",
            "instruction",
            "templates",
            "shots",
            "shot",
            "query",
            "output",
        ],
    };
    let mut s = FewShotSpec::default();
    for (k, v, col) in key_values(input, rest)? {
        match k {
            "tasks" => s.tasks = f.count(v, k, col)?,
            "instruction" => s.instruction = f.dist(v, k, col)?,
            "templates" => s.templates = f.count(v, k, col)?,
            "shots" => s.shots = f.count(v, k, col)?,
            "shot" => s.shot = f.dist(v, k, col)?,
            "query" => s.query = f.dist(v, k, col)?,
            "output" => s.output = f.dist(v, k, col)?,
            _ => return Err(f.unknown(k, col)),
        }
    }
    PrefixPool::few_shot(&s, 0, 0).map_err(|e| f.err(column(input, rest), e.to_string()))?;
    Ok(s)
}

impl std::fmt::Display for ChatSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chat:turns={},user={},output={},think_ms={},tpot_ms={}",
            self.turns, self.user, self.output, self.think_ms, self.tpot_ms
        )?;
        if let Some(s) = &self.system {
            write!(f, ",system={s},systems={}", self.systems)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for SystemPromptSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "system-prompts:prompts={},prefix={},suffix={},output={},zipf={}",
            self.prompts, self.prefix, self.suffix, self.output, self.zipf
        )
    }
}

impl std::fmt::Display for FewShotSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "few-shot:tasks={},instruction={},templates={},shots={},shot={},query={},output={}",
            self.tasks,
            self.instruction,
            self.templates,
            self.shots,
            self.shot,
            self.query,
            self.output
        )
    }
}

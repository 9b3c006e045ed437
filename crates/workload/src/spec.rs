//! A complete workload description and its expansion into a request list.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::arrivals::{retime_factor, ArrivalClock, Arrivals};
use crate::lengths::LengthDist;
use crate::prefix::{self, Segment};
use crate::rng::Rng;
use crate::shared::PrefixPool;
use crate::slo::{SloClass, SloPolicy};
use crate::source::{Sampling, WorkloadSource};
use crate::trace::TraceFile;
use crate::{RequestSpec, Workload, WorkloadError};

/// How requests longer than `max_context` (prompt + output) are made to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextFit {
    /// Truncate: the output keeps up to half the context (more if the prompt is short), the
    /// prompt gets the rest.
    #[default]
    Cap,
    /// Shrink prompt and output of each too-long request by the same factor.
    Scale,
    /// Scale every request by one factor, `max_context / (longest prompt + output)`, keeping
    /// the shape of the length distribution (only when something is too long).
    ScaleAll,
    /// Drop requests that do not fit.
    Drop,
}

impl std::str::FromStr for ContextFit {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "cap" => Ok(ContextFit::Cap),
            "scale" => Ok(ContextFit::Scale),
            "scale-all" | "scale_all" => Ok(ContextFit::ScaleAll),
            "drop" => Ok(ContextFit::Drop),
            _ => Err(WorkloadError::Syntax {
                input: s.to_string(),
                message: "expected cap, scale, scale-all or drop".into(),
            }),
        }
    }
}

/// Everything needed to produce a [`Workload`]; deserialisable from TOML.
///
/// ```toml
/// source = "sharegpt"                          # or a table, see WorkloadSource
/// arrivals = { kind = "gamma", rate = 4.0, cv = 2.0 }
/// max_requests = 1000
/// max_context = 4096
/// slo = { kind = "classes" }
/// seed = 42
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Where lengths (and maybe times) come from.
    pub source: WorkloadSource,
    /// Arrival process. Default: the trace's timestamps for a single timed trace, otherwise
    /// all at once.
    #[serde(default)]
    pub arrivals: Option<Arrivals>,
    /// At most this many requests. Default: one pass over a single trace; required (or
    /// `duration_s`) for synthetic sources and mixtures.
    #[serde(default)]
    pub max_requests: Option<usize>,
    /// Only requests arriving before this many seconds.
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// Longest prompt + output the target model accepts.
    #[serde(default)]
    pub max_context: Option<u32>,
    /// How to fit requests into `max_context`.
    #[serde(default)]
    pub context_fit: ContextFit,
    /// SLO assignment.
    #[serde(default)]
    pub slo: SloPolicy,
    /// Seed of every random draw (arrivals, row order, synthetic lengths, SLO classes use
    /// independent streams of it, so changing one does not move the others).
    #[serde(default)]
    pub seed: u64,
}

/// Independent random streams of one seed.
const STREAM_ARRIVALS: u64 = 1;
const STREAM_LENGTHS: u64 = 2;
const STREAM_MIX: u64 = 3;
const STREAM_SLO: u64 = 4;
const STREAM_SHUFFLE: u64 = 5;

/// A resolved source of lengths.
enum Lengths {
    Rows {
        trace: Arc<TraceFile>,
        order: Vec<u32>,
        sampling: Sampling,
        next: usize,
    },
    Synthetic {
        prompt: LengthDist,
        output: LengthDist,
    },
    /// Shared prefixes plus each request's own text.
    Pool(PrefixPool),
}

impl Lengths {
    /// Draws the next request's (prompt, output, row SLOs) and, if this source knows them, the
    /// segments of its content.
    fn draw(
        &mut self,
        rng: &mut Rng,
        shuffle_rng: &mut Rng,
    ) -> (RequestSpec, Option<Vec<Segment>>) {
        match self {
            Lengths::Synthetic { prompt, output } => (
                RequestSpec {
                    arrival_s: 0.0,
                    prompt_tokens: prompt.sample(rng),
                    output_tokens: output.sample(rng),
                    ttft_slo_ms: None,
                    tbt_slo_ms: None,
                    priority: 0,
                    class: None,
                },
                None,
            ),
            Lengths::Pool(pool) => {
                let (r, s) = pool.draw(rng);
                (r, Some(s))
            }
            Lengths::Rows {
                trace,
                order,
                sampling,
                next,
            } => {
                let n = trace.rows.len();
                let i = match sampling {
                    Sampling::Sequential => *next % n,
                    Sampling::Shuffle => {
                        // Lazy Fisher-Yates over `order`; reshuffle on each new pass.
                        let k = *next % n;
                        let j = k + shuffle_rng.below((n - k) as u64) as usize;
                        order.swap(k, j);
                        order[k] as usize
                    }
                };
                *next += 1;
                (row_request(&trace.rows[i]), row_segments(trace, i))
            }
        }
    }
}

/// The segments of row `i` of a trace with Mooncake hash ids.
fn row_segments(trace: &TraceFile, i: usize) -> Option<Vec<Segment>> {
    let ids = trace.hash_ids.get(i)?;
    let prompt = trace.rows[i].prompt_tokens.max(1);
    Some(prefix::mooncake_segments(ids, prompt, i as u64))
}

fn row_request(r: &crate::trace::TraceRow) -> RequestSpec {
    RequestSpec {
        arrival_s: r.arrival_s,
        prompt_tokens: r.prompt_tokens.max(1),
        output_tokens: r.output_tokens.max(1),
        ttft_slo_ms: r.ttft_slo_ms,
        tbt_slo_ms: r.tbt_slo_ms,
        priority: r.priority.unwrap_or(0),
        class: None,
    }
}

fn load(path: PathBuf) -> Result<Arc<TraceFile>, WorkloadError> {
    let t = TraceFile::load(&path)?;
    if t.rows.is_empty() {
        return Err(WorkloadError::Invalid(format!(
            "{} has no requests",
            path.display()
        )));
    }
    Ok(Arc::new(t))
}

/// The lengths of `source`, part `part` of a mixture (0 otherwise) under `seed`.
fn resolve(source: &WorkloadSource, seed: u64, part: u64) -> Result<Lengths, WorkloadError> {
    let (trace, sampling) = match source {
        WorkloadSource::SystemPrompts(p) => {
            return PrefixPool::system_prompts(p, seed, part).map(Lengths::Pool)
        }
        WorkloadSource::FewShot(f) => {
            return PrefixPool::few_shot(f, seed, part).map(Lengths::Pool)
        }
        WorkloadSource::Chat(_) => {
            return Err(WorkloadError::Invalid(
                "chat conversations cannot be part of a mixture".to_string(),
            ))
        }
        WorkloadSource::Builtin { name, sampling } => (load(name.path()?)?, *sampling),
        WorkloadSource::File { path, sampling } => (load(path.clone())?, *sampling),
        WorkloadSource::Synthetic { prompt, output } => {
            prompt.validate()?;
            output.validate()?;
            return Ok(Lengths::Synthetic {
                prompt: prompt.clone(),
                output: output.clone(),
            });
        }
        WorkloadSource::Mixture { .. } => {
            return Err(WorkloadError::Invalid(
                "mixtures cannot be nested".to_string(),
            ))
        }
    };
    let sampling = sampling.unwrap_or(if trace.timed {
        Sampling::Sequential
    } else {
        Sampling::Shuffle
    });
    let order = match sampling {
        Sampling::Shuffle => (0..trace.rows.len() as u32).collect(),
        Sampling::Sequential => Vec::new(),
    };
    Ok(Lengths::Rows {
        trace,
        order,
        sampling,
        next: 0,
    })
}

impl WorkloadSpec {
    /// A spec with defaults for everything but the source.
    pub fn new(source: WorkloadSource) -> Self {
        WorkloadSpec {
            source,
            arrivals: None,
            max_requests: None,
            duration_s: None,
            max_context: None,
            context_fit: ContextFit::default(),
            slo: SloPolicy::default(),
            seed: 0,
        }
    }

    /// Expands the description into requests sorted by arrival.
    pub fn generate(&self) -> Result<Workload, WorkloadError> {
        if let Some(a) = self.arrivals {
            a.validate()?;
        }
        self.slo.validate()?;
        if let Some(d) = self.duration_s {
            if d.is_nan() || d <= 0.0 {
                return Err(WorkloadError::Invalid(format!(
                    "duration must be positive, got {d}"
                )));
            }
        }
        if self.max_context == Some(0) {
            return Err(WorkloadError::Invalid(
                "max_context must be positive".into(),
            ));
        }

        // Resolve components: (lengths, weight, class name).
        let mut parts: Vec<(Lengths, f64, Option<String>)> = match &self.source {
            WorkloadSource::Mixture { components } => {
                if components.is_empty() {
                    return Err(WorkloadError::Invalid("empty mixture".into()));
                }
                let mut v = Vec::with_capacity(components.len());
                for (part, c) in components.iter().enumerate() {
                    if !(c.weight >= 0.0 && c.weight.is_finite()) {
                        return Err(WorkloadError::Invalid(format!(
                            "mixture weight must be non-negative, got {}",
                            c.weight
                        )));
                    }
                    v.push((
                        resolve(&c.source, self.seed, part as u64)?,
                        c.weight,
                        c.class.clone(),
                    ));
                }
                if v.iter().map(|p| p.1).sum::<f64>() <= 0.0 {
                    return Err(WorkloadError::Invalid("mixture weights sum to 0".into()));
                }
                v
            }
            WorkloadSource::Chat(chat) => {
                return self.conversations(chat);
            }
            single => vec![(resolve(single, self.seed, 0)?, 1.0, None)],
        };

        let single_trace = match (&self.source, &parts[0].0) {
            (WorkloadSource::Mixture { .. }, _) => None,
            (_, Lengths::Rows { trace, .. }) => Some(trace.clone()),
            _ => None,
        };
        let arrivals = self.arrivals.unwrap_or(match &single_trace {
            Some(t) if t.timed => Arrivals::Trace,
            _ => Arrivals::AllAtOnce,
        });

        let mut requests;
        // Index of the mixture component of each request (for per-source SLOs).
        let mut part_of: Vec<u16> = Vec::new();
        // Content of each request, if any source knows it.
        let mut segments: Vec<Option<Vec<Segment>>> = Vec::new();
        if arrivals.uses_trace_times() {
            let trace = match &single_trace {
                Some(t) if t.timed => t,
                _ => {
                    return Err(WorkloadError::Invalid(format!(
                        "arrivals `{}` need a single trace file with timestamps",
                        arrivals.describe()
                    )))
                }
            };
            let n = self
                .max_requests
                .unwrap_or(usize::MAX)
                .min(trace.rows.len());
            let rows = &trace.rows[..n];
            let t0 = rows.first().map_or(0.0, |r| r.arrival_s);
            let factor = match arrivals {
                Arrivals::Retime { rate } => {
                    retime_factor(rows.iter().map(|r| r.arrival_s), rate).unwrap_or(1.0)
                }
                _ => 1.0,
            };
            requests = Vec::with_capacity(n);
            for (i, r) in rows.iter().enumerate() {
                let mut req = row_request(r);
                req.arrival_s = (r.arrival_s - t0) * factor;
                if self.duration_s.is_some_and(|d| req.arrival_s >= d) {
                    break;
                }
                requests.push(req);
                segments.push(row_segments(trace, i));
            }
        } else {
            let limit = match (self.max_requests, self.duration_s, &single_trace) {
                (Some(n), _, _) => n,
                (None, Some(_), _) if arrivals != Arrivals::AllAtOnce => usize::MAX,
                (None, _, Some(t)) => t.rows.len(),
                _ => {
                    return Err(WorkloadError::Invalid(
                        "give max_requests (or a duration with a finite rate) for synthetic \
                         sources and mixtures"
                            .into(),
                    ))
                }
            };
            let mut clock = ArrivalClock::new(arrivals, Rng::stream(self.seed, STREAM_ARRIVALS));
            let mut len_rng = Rng::stream(self.seed, STREAM_LENGTHS);
            let mut mix_rng = Rng::stream(self.seed, STREAM_MIX);
            let mut shuffle_rng = Rng::stream(self.seed, STREAM_SHUFFLE);
            let cumulative: Vec<f64> = parts
                .iter()
                .scan(0.0, |acc, p| {
                    *acc += p.1;
                    Some(*acc)
                })
                .collect();
            let total = cumulative.last().copied().unwrap_or(1.0);
            requests = Vec::with_capacity(limit.min(1 << 24));
            while requests.len() < limit {
                let t = clock.next_arrival();
                if self.duration_s.is_some_and(|d| t >= d) {
                    break;
                }
                let k = if parts.len() == 1 {
                    0
                } else {
                    let u = mix_rng.next_f64() * total;
                    cumulative
                        .iter()
                        .position(|&c| u < c)
                        .unwrap_or(parts.len() - 1)
                };
                let (mut req, seg) = parts[k].0.draw(&mut len_rng, &mut shuffle_rng);
                req.arrival_s = t;
                requests.push(req);
                segments.push(seg);
                if parts.len() > 1 {
                    part_of.push(k as u16);
                }
            }
        }

        // Requests of parts without prefix structure get content of their own.
        let prefixes: Vec<Vec<Segment>> = if segments.iter().any(Option::is_some) {
            segments
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    s.unwrap_or_else(|| {
                        vec![Segment::start(
                            prefix::own_stream(self.seed, i as u64),
                            requests[i].prompt_tokens,
                        )]
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let part_classes: Vec<Option<String>> = parts.iter().map(|p| p.2.clone()).collect();
        parts.clear();
        self.finish(requests, prefixes, part_of, &part_classes, arrivals)
    }

    /// Fits the context, describes the workload and assembles it.
    fn finish(
        &self,
        mut requests: Vec<RequestSpec>,
        mut prefixes: Vec<Vec<Segment>>,
        mut part_of: Vec<u16>,
        part_classes: &[Option<String>],
        arrivals: Arrivals,
    ) -> Result<Workload, WorkloadError> {
        if let Some(max_ctx) = self.max_context {
            fit_context(
                &mut requests,
                &mut part_of,
                &mut prefixes,
                max_ctx,
                self.context_fit,
            );
        }
        let classes = self.assign_slos(&mut requests, &part_of, part_classes)?;
        let mut description = format!(
            "{}, {}, {} requests",
            self.source.describe(),
            arrivals.describe(),
            requests.len()
        );
        if let Some(c) = self.max_context {
            description.push_str(&format!(", max context {c} ({:?})", self.context_fit));
        }
        description.push_str(&format!(", seed {}", self.seed));
        Ok(Workload {
            requests,
            classes,
            description,
            prefixes,
        })
    }

    /// Expands a [`WorkloadSource::Chat`] source.
    fn conversations(&self, chat: &crate::shared::ChatSpec) -> Result<Workload, WorkloadError> {
        let arrivals = self.arrivals.unwrap_or(Arrivals::AllAtOnce);
        let (requests, prefixes) = chat.generate(
            arrivals,
            self.max_requests,
            self.duration_s,
            self.max_context,
            self.seed,
        )?;
        self.finish(requests, prefixes, Vec::new(), &[None], arrivals)
    }

    fn assign_slos(
        &self,
        requests: &mut [RequestSpec],
        part_of: &[u16],
        part_classes: &[Option<String>],
    ) -> Result<Vec<SloClass>, WorkloadError> {
        let apply = |r: &mut RequestSpec, c: &SloClass, idx: usize| {
            r.ttft_slo_ms = c.ttft_ms;
            r.tbt_slo_ms = c.tbt_ms;
            r.priority = c.priority;
            r.class = Some(idx as u16);
        };
        match &self.slo {
            SloPolicy::None => {
                for r in requests.iter_mut() {
                    r.ttft_slo_ms = None;
                    r.tbt_slo_ms = None;
                    r.priority = 0;
                    r.class = None;
                }
                Ok(Vec::new())
            }
            SloPolicy::FromFile => Ok(Vec::new()),
            SloPolicy::Fixed {
                ttft_ms,
                tbt_ms,
                priority,
            } => {
                for r in requests.iter_mut() {
                    r.ttft_slo_ms = *ttft_ms;
                    r.tbt_slo_ms = *tbt_ms;
                    r.priority = *priority;
                    r.class = None;
                }
                Ok(Vec::new())
            }
            SloPolicy::Classes { classes } => {
                let mut rng = Rng::stream(self.seed, STREAM_SLO);
                let total: f64 = classes.iter().map(|c| c.weight).sum();
                for r in requests.iter_mut() {
                    let u = rng.next_f64() * total;
                    let mut acc = 0.0;
                    let mut idx = classes.len() - 1;
                    for (i, c) in classes.iter().enumerate() {
                        acc += c.weight;
                        if u < acc {
                            idx = i;
                            break;
                        }
                    }
                    apply(r, &classes[idx], idx);
                }
                Ok(classes.clone())
            }
            SloPolicy::PerSource { classes } => {
                let class_of_part: Vec<Option<usize>> = part_classes
                    .iter()
                    .map(|name| match name {
                        None => Ok(None),
                        Some(n) => classes
                            .iter()
                            .position(|c| &c.name == n)
                            .map(Some)
                            .ok_or_else(|| {
                                WorkloadError::Invalid(format!(
                                    "mixture names unknown SLO class `{n}`"
                                ))
                            }),
                    })
                    .collect::<Result<_, _>>()?;
                for (i, r) in requests.iter_mut().enumerate() {
                    let k = part_of.get(i).copied().unwrap_or(0) as usize;
                    match class_of_part.get(k).copied().flatten() {
                        Some(idx) => apply(r, &classes[idx], idx),
                        None => {
                            r.ttft_slo_ms = None;
                            r.tbt_slo_ms = None;
                            r.priority = 0;
                            r.class = None;
                        }
                    }
                }
                Ok(classes.clone())
            }
        }
    }
}

/// Makes every request fit `max_ctx` tokens (prompt + output); a shortened request's segments
/// (`prefixes`, parallel or empty) keep their start.
fn fit_context(
    requests: &mut Vec<RequestSpec>,
    part_of: &mut Vec<u16>,
    prefixes: &mut Vec<Vec<Segment>>,
    max_ctx: u32,
    fit: ContextFit,
) {
    let total = |r: &RequestSpec| u64::from(r.prompt_tokens) + u64::from(r.output_tokens);
    let max_ctx64 = u64::from(max_ctx.max(2));
    if !prefixes.is_empty() {
        let before: Vec<(u32, u32)> = requests
            .iter()
            .map(|r| (r.prompt_tokens, r.output_tokens))
            .collect();
        let keep: Vec<bool> = requests.iter().map(|r| total(r) <= max_ctx64).collect();
        fit_context(requests, part_of, &mut Vec::new(), max_ctx, fit);
        if fit == ContextFit::Drop {
            let mut k = keep.into_iter();
            prefixes.retain(|_| k.next().unwrap_or(false));
            return;
        }
        for ((r, seg), (p0, o0)) in requests.iter().zip(prefixes.iter_mut()).zip(before) {
            if (r.prompt_tokens, r.output_tokens) != (p0, o0) {
                // Segments that went on over the output keep doing so.
                let n = if prefix::covered(seg) <= u64::from(p0) {
                    r.prompt_tokens
                } else {
                    r.prompt_tokens.saturating_add(r.output_tokens)
                };
                *seg = prefix::truncate(seg, n);
            }
        }
        return;
    }
    let scale = |r: &mut RequestSpec, f: f64| {
        r.prompt_tokens = ((r.prompt_tokens as f64 * f).floor() as u32).max(1);
        r.output_tokens = ((r.output_tokens as f64 * f).floor() as u32).max(1);
    };
    let cap = |r: &mut RequestSpec| {
        let max_ctx = max_ctx.max(2);
        let reserved = r.output_tokens.min(max_ctx / 2);
        r.prompt_tokens = r.prompt_tokens.min(max_ctx - reserved);
        r.output_tokens = r.output_tokens.min(max_ctx - r.prompt_tokens);
    };
    match fit {
        ContextFit::Cap => requests
            .iter_mut()
            .filter(|r| total(r) > max_ctx64)
            .for_each(cap),
        ContextFit::Scale => {
            for r in requests.iter_mut().filter(|r| total(r) > max_ctx64) {
                scale(r, max_ctx64 as f64 / total(r) as f64);
                cap(r);
            }
        }
        ContextFit::ScaleAll => {
            let longest = requests.iter().map(total).max().unwrap_or(0);
            if longest > max_ctx64 {
                let f = max_ctx64 as f64 / longest as f64;
                for r in requests.iter_mut() {
                    scale(r, f);
                    cap(r);
                }
            }
        }
        ContextFit::Drop => {
            if part_of.is_empty() {
                requests.retain(|r| total(r) <= max_ctx64);
            } else {
                let mut keep = requests.iter().map(|r| total(r) <= max_ctx64);
                part_of.retain(|_| keep.next().unwrap_or(false));
                requests.retain(|r| total(r) <= max_ctx64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(p: u32, o: u32) -> RequestSpec {
        RequestSpec {
            arrival_s: 0.0,
            prompt_tokens: p,
            output_tokens: o,
            ttft_slo_ms: None,
            tbt_slo_ms: None,
            priority: 0,
            class: None,
        }
    }

    fn lens(v: &[RequestSpec]) -> Vec<(u32, u32)> {
        v.iter()
            .map(|r| (r.prompt_tokens, r.output_tokens))
            .collect()
    }

    #[test]
    fn context_fit_modes() {
        let base = vec![req(100, 10), req(3000, 2000), req(10, 5000)];
        let run = |fit| {
            let mut v = base.clone();
            fit_context(&mut v, &mut Vec::new(), &mut Vec::new(), 1000, fit);
            lens(&v)
        };
        assert_eq!(run(ContextFit::Cap), vec![(100, 10), (500, 500), (10, 990)]);
        assert_eq!(
            run(ContextFit::Scale),
            vec![(100, 10), (600, 400), (1, 998)]
        );
        assert_eq!(
            run(ContextFit::ScaleAll),
            vec![(19, 1), (598, 399), (1, 998)]
        );
        assert_eq!(run(ContextFit::Drop), vec![(100, 10)]);
        for fit in [ContextFit::Cap, ContextFit::Scale, ContextFit::ScaleAll] {
            assert!(run(fit)
                .iter()
                .all(|&(p, o)| p + o <= 1000 && p >= 1 && o >= 1));
        }
    }
}

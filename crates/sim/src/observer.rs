//! Time series of a run for reports, in bounded memory.
//!
//! [`TimeSeriesObserver`] records, per instance, timeline segments (start, end, what ran:
//! prefill, decode or mixed), and cluster samples at a fixed interval (finished requests,
//! output tokens, KV utilisation, busy instances, queue length). When a run is huge, adjacent
//! segments are merged and the sample interval doubles, so memory stays below a fixed cap
//! whatever the run length.

use accellm_core::{
    batch::BatchKind,
    replay::Observer,
    scheduler::{Action, Scheduler},
    TimeUs,
};
use serde::{Deserialize, Serialize};

/// What an instance did during a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// Prefill chunks only.
    Prefill,
    /// Decodes only.
    Decode,
    /// Both (or, after merging, a mixture of kinds).
    Mixed,
}

/// A busy stretch of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start (µs).
    pub start_us: TimeUs,
    /// End (µs).
    pub end_us: TimeUs,
    /// What ran.
    pub kind: SegmentKind,
}

/// One cluster-wide sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Time (µs).
    pub t_us: TimeUs,
    /// Requests finished so far.
    pub finished: u64,
    /// Output tokens produced so far.
    pub tokens_out: u64,
    /// KV blocks in use over all KV blocks.
    pub kv_utilization: f64,
    /// Instances running an iteration.
    pub busy_instances: u32,
    /// Requests waiting for prefill.
    pub waiting: u64,
    /// Live requests.
    pub live: u64,
}

/// The recorded series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeSeries {
    /// Segments per instance, in time order.
    pub segments: Vec<Vec<Segment>>,
    /// Samples in time order.
    pub samples: Vec<Sample>,
    /// Final sample interval (µs).
    pub sample_interval_us: TimeUs,
    /// Segments closer than this (µs) were merged.
    pub merge_gap_us: TimeUs,
}

impl TimeSeries {
    /// Requests per second and output tokens per second between consecutive samples, with
    /// the time of the interval's end (s).
    pub fn throughput(&self) -> Vec<(f64, f64, f64)> {
        self.samples
            .windows(2)
            .map(|w| {
                let dt = (w[1].t_us - w[0].t_us).max(1) as f64 / 1e6;
                (
                    w[1].t_us as f64 / 1e6,
                    (w[1].finished - w[0].finished) as f64 / dt,
                    (w[1].tokens_out - w[0].tokens_out) as f64 / dt,
                )
            })
            .collect()
    }
}

/// Records a [`TimeSeries`] during a replay.
#[derive(Debug)]
pub struct TimeSeriesObserver {
    series: TimeSeries,
    next_sample: TimeUs,
    finished: u64,
    max_segments: usize,
    max_samples: usize,
}

impl TimeSeriesObserver {
    /// Records `instances` timelines and a sample every `interval_us`, keeping at most
    /// `max_segments` segments per instance and `max_samples` samples.
    pub fn new(
        instances: usize,
        interval_us: TimeUs,
        max_segments: usize,
        max_samples: usize,
    ) -> Self {
        Self {
            series: TimeSeries {
                segments: vec![Vec::new(); instances],
                samples: Vec::new(),
                sample_interval_us: interval_us.max(1),
                merge_gap_us: 0,
            },
            next_sample: 0,
            finished: 0,
            max_segments: max_segments.max(16),
            max_samples: max_samples.max(16),
        }
    }

    /// The series recorded.
    pub fn finish(self) -> TimeSeries {
        self.series
    }

    fn push_segment(&mut self, inst: usize, seg: Segment) {
        let gap = self.series.merge_gap_us;
        let segs = &mut self.series.segments[inst];
        if let Some(last) = segs.last_mut() {
            if seg.start_us <= last.end_us + gap && (gap > 0 || last.kind == seg.kind) {
                if last.kind != seg.kind {
                    last.kind = SegmentKind::Mixed;
                }
                last.end_us = last.end_us.max(seg.end_us);
                return;
            }
        }
        segs.push(seg);
        if segs.len() > self.max_segments {
            self.coarsen();
        }
    }

    /// Doubles the merge gap and merges every instance's segments with it.
    fn coarsen(&mut self) {
        let span = self
            .series
            .segments
            .iter()
            .filter_map(|s| s.last().map(|l| l.end_us))
            .max()
            .unwrap_or(0);
        let gap = (self.series.merge_gap_us * 2)
            .max(span / self.max_segments as u64)
            .max(1);
        self.series.merge_gap_us = gap;
        for segs in &mut self.series.segments {
            let mut out: Vec<Segment> = Vec::with_capacity(segs.len() / 2 + 1);
            for s in segs.drain(..) {
                match out.last_mut() {
                    Some(l) if s.start_us <= l.end_us + gap => {
                        if l.kind != s.kind {
                            l.kind = SegmentKind::Mixed;
                        }
                        l.end_us = l.end_us.max(s.end_us);
                    }
                    _ => out.push(s),
                }
            }
            *segs = out;
        }
    }

    fn sample(&mut self, now: TimeUs, sched: &Scheduler) {
        let (mut used, mut total, mut busy) = (0u64, 0u64, 0u32);
        for i in sched.instances() {
            used += (i.kv.num_blocks() - i.kv.free_blocks()) as u64;
            total += i.kv.num_blocks() as u64;
            busy += i.busy as u32;
        }
        self.series.samples.push(Sample {
            t_us: now,
            finished: self.finished,
            tokens_out: sched.metrics().tokens_out,
            kv_utilization: if total == 0 {
                0.0
            } else {
                used as f64 / total as f64
            },
            busy_instances: busy,
            waiting: sched.waiting_requests() as u64,
            live: sched.live_requests() as u64,
        });
        if self.series.samples.len() > self.max_samples {
            // Keep every other sample and sample half as often from now on.
            let kept: Vec<Sample> = self.series.samples.iter().step_by(2).copied().collect();
            self.series.samples = kept;
            self.series.sample_interval_us *= 2;
        }
    }
}

impl Observer for TimeSeriesObserver {
    fn on_action(&mut self, now: TimeUs, action: &Action, _sched: &Scheduler) {
        match *action {
            Action::Run(ref plan) => {
                let kind = match plan.kind() {
                    BatchKind::Prefill => SegmentKind::Prefill,
                    BatchKind::Decode => SegmentKind::Decode,
                    BatchKind::Mixed | BatchKind::Empty => SegmentKind::Mixed,
                };
                let instance = plan.instance;
                let dur = plan.predicted_us.max(1);
                self.push_segment(
                    instance as usize,
                    Segment {
                        start_us: now,
                        end_us: now + dur,
                        kind,
                    },
                );
            }
            Action::Finished { .. } => self.finished += 1,
            _ => {}
        }
    }

    fn after_event(&mut self, now: TimeUs, sched: &Scheduler) {
        if now >= self.next_sample {
            self.sample(now, sched);
            let iv = self.series.sample_interval_us;
            self.next_sample = (now / iv + 1) * iv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_merge_and_stay_bounded() {
        let mut o = TimeSeriesObserver::new(1, 10, 16, 16);
        for k in 0..1000u64 {
            let kind = if k % 3 == 0 {
                SegmentKind::Prefill
            } else {
                SegmentKind::Decode
            };
            o.push_segment(
                0,
                Segment {
                    start_us: k * 10,
                    end_us: k * 10 + 5,
                    kind,
                },
            );
        }
        let s = o.finish();
        assert!(s.segments[0].len() <= 17, "{}", s.segments[0].len());
        assert_eq!(s.segments[0].first().unwrap().start_us, 0);
        assert_eq!(s.segments[0].last().unwrap().end_us, 9995);
        assert!(s.merge_gap_us > 0);
    }
}

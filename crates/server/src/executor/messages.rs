//! What reaches the scheduler thread (submissions, cancellations, worker and link reports) and
//! what a request's client is told.

use std::sync::mpsc::Sender;

use accellm_core::request::{RejectReason, Slo};
use accellm_engine::{SamplingParams, TokenLogprob};
use tokio::sync::mpsc::UnboundedSender;

use crate::constraint::Constraint;
use crate::worker::RunReport;

/// A request handed to the scheduler thread by an HTTP handler.
pub(crate) struct Submission {
    /// The handler's id for it (never reused, unlike core ids).
    pub handle: u64,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Output tokens at most.
    pub max_tokens: u32,
    /// Output tokens before EOS or stop strings may end it.
    pub min_tokens: u32,
    /// Sampling options.
    pub params: SamplingParams,
    /// SLOs.
    pub slo: Slo,
    /// Priority (lower first).
    pub priority: i32,
    /// The output starts a text of its own (a chat reply) rather than continuing the prompt, so a
    /// SentencePiece space prefix on its first token is dropped.
    pub starts_text: bool,
    /// Index of the choice this request answers (its events are tagged with it).
    pub choice: u32,
    /// Log-probabilities of output tokens, with this many alternatives.
    pub logprobs: Option<u8>,
    /// Log-probabilities of prompt tokens (echo), with this many alternatives.
    pub prompt_logprobs: Option<u8>,
    /// Only the prompt is wanted (`max_tokens: 0` with echo): the core runs one token, which
    /// is dropped.
    pub discard_output: bool,
    /// Constrained decoding (`response_format`).
    pub constraint: Option<Box<Constraint>>,
    /// Where its output goes, tagged with `choice`.
    pub events: UnboundedSender<(u32, ToClient)>,
}

/// How a request ended, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled (client gone, or shutdown).
    Abort,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Abort => "abort",
        }
    }
}

/// What a request's client is told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToClient {
    /// Admitted by the core.
    Accepted,
    /// Refused.
    Rejected(RejectReason),
    /// Refused because the server is shutting down.
    ShuttingDown,
    /// One more output token: the text it completes (possibly empty) and, when asked for, its
    /// log-probability. Text held back until the end comes without one.
    Token {
        /// Text.
        text: String,
        /// Log-probability of the token.
        logprob: Option<Box<TokenLogprob>>,
    },
    /// Log-probabilities of prompt tokens 1.. (token 0 has none), once the prompt is prefilled
    /// (`None` only where the prompt's logits were not computed, which should not happen).
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// The end.
    Done {
        /// Why.
        finish: Finish,
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Output tokens.
        completion_tokens: u32,
        /// Instances that ran it (bit mask).
        instances: u64,
    },
    /// The engine failed while running it.
    Failed(String),
    /// The output's grammar (`response_format`) allowed no continuation: the choice ends
    /// here, a normal `Done` follows with the tokens so far.
    GrammarFailed(String),
}

/// Events for the scheduler thread.
pub(crate) enum Input {
    /// A new request.
    Submit(Box<Submission>),
    /// The client of `handle` went away.
    Cancel(u64),
    /// A worker finished an iteration.
    Worker(Box<RunReport>),
    /// A link finished a transfer.
    TransferDone {
        /// Transfer id.
        id: u32,
        /// Failure, if any.
        error: Option<String>,
    },
    /// Stop admitting; cancel everything live; exit when idle.
    Shutdown,
    /// A remote worker failed (connection lost or deadline missed).
    InstanceDown(usize),
    /// A restarted remote worker accepted the front again.
    InstanceUp(usize, Box<crate::remote::front::Connected>),
    /// The next probe of the link from `from` to its cut-off partner `to` is due.
    ProbeLink {
        /// The worker that probes.
        from: usize,
        /// The partner it tries to reach.
        to: usize,
    },
    /// Forget every cached prefix (`POST /reset_prefix_cache`); answers whether it was done
    /// (not while requests hold KV blocks).
    ResetPrefixCache(tokio::sync::oneshot::Sender<bool>),
}

/// Keeps a [`Sender`] and tells the scheduler when a client goes away.
pub(crate) struct CancelGuard {
    /// The request's handle.
    pub handle: u64,
    /// The scheduler thread.
    pub tx: Sender<Input>,
    /// Set once the request ended normally.
    pub done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Input::Cancel(self.handle));
        }
    }
}

//! Where request lengths (and maybe arrival times) come from: shipped traces, trace files,
//! synthetic distributions and weighted mixtures of these.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::lengths::LengthDist;
use crate::shared::{self, ChatSpec, FewShotSpec, SystemPromptSpec};
use crate::WorkloadError;

/// Traces shipped in the repository's `data/traces` directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinTrace {
    /// Azure LLM inference 2023, conversation service (1 h, 19,366 requests, timed).
    AzureConv,
    /// Azure LLM inference 2023, code service (1 h, 8,819 requests, timed, bursty).
    AzureCode,
    /// ShareGPT prompt/answer lengths (30,731 rows, untimed).
    Sharegpt,
    /// arXiv summarisation lengths (28,257 rows, untimed).
    Arxiv,
}

impl BuiltinTrace {
    /// All shipped traces.
    pub const ALL: [BuiltinTrace; 4] = [
        BuiltinTrace::AzureConv,
        BuiltinTrace::AzureCode,
        BuiltinTrace::Sharegpt,
        BuiltinTrace::Arxiv,
    ];

    /// The short name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BuiltinTrace::AzureConv => "azure-conv",
            BuiltinTrace::AzureCode => "azure-code",
            BuiltinTrace::Sharegpt => "sharegpt",
            BuiltinTrace::Arxiv => "arxiv",
        }
    }

    /// Path of the file relative to the data directory.
    pub fn relative_path(self) -> &'static str {
        match self {
            BuiltinTrace::AzureConv => "traces/azure-llm-2023/AzureLLMInferenceTrace_conv.csv",
            BuiltinTrace::AzureCode => "traces/azure-llm-2023/AzureLLMInferenceTrace_code.csv",
            BuiltinTrace::Sharegpt => {
                "traces/sharegpt-lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
            }
            BuiltinTrace::Arxiv => {
                "traces/arxiv-summarization-lengths/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
            }
        }
    }

    /// The trace with this short name, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Finds the file in the data directory (see [`find_data_file`]).
    pub fn path(self) -> Result<PathBuf, WorkloadError> {
        find_data_file(self.relative_path()).map_err(|e| match e {
            WorkloadError::TraceNotFound {
                looked_for,
                searched,
                ..
            } => WorkloadError::TraceNotFound {
                name: self.name().to_string(),
                looked_for,
                searched,
            },
            other => other,
        })
    }
}

/// Candidate data directories, in search order: `$ACCELLM_DATA_DIR`, then `data/` in each
/// ancestor of the running executable, then in each ancestor of the current directory, then the
/// repository this crate was compiled from.
pub fn data_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("ACCELLM_DATA_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let mut ancestors_of = |start: &Path| {
        for a in start.ancestors() {
            dirs.push(a.join("data"));
        }
    };
    if let Ok(exe) = std::env::current_exe() {
        if let Some(parent) = exe.parent() {
            ancestors_of(parent);
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        ancestors_of(&cwd);
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"));
    dirs
}

/// Finds `relative` (e.g. `traces/sharegpt-lengths/...csv`) in the first data directory of
/// [`data_dirs`] that has it.
pub fn find_data_file(relative: &str) -> Result<PathBuf, WorkloadError> {
    let dirs = data_dirs();
    for d in &dirs {
        let p = d.join(relative);
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    searched.dedup();
    Err(WorkloadError::TraceNotFound {
        name: relative.to_string(),
        looked_for: relative.to_string(),
        searched: searched.join(", "),
    })
}

/// How rows of a trace are picked when they are used as a length source (generated arrivals or
/// a mixture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// In file order, wrapping around at the end (default for timed traces).
    Sequential,
    /// In a seeded random order without replacement; reshuffled after each full pass (default
    /// for untimed length datasets).
    Shuffle,
}

/// One weighted part of a [`WorkloadSource::Mixture`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureComponent {
    /// Where this part's lengths come from (not itself a mixture).
    pub source: WorkloadSource,
    /// Relative share of requests.
    pub weight: f64,
    /// Name of the SLO class its requests get under [`crate::SloPolicy::PerSource`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// Where request lengths (and, for timed traces, arrival times) come from.
///
/// In TOML either a short string (`source = "sharegpt"`, see [`std::str::FromStr`]) or a table
/// tagged by `kind`: `builtin` (`name`), `file` (`path`), `synthetic` (`prompt`, `output`),
/// `mixture` (`components`), and the shared-prefix generators `chat`, `system_prompts`,
/// `few_shot` (the fields of [`ChatSpec`], [`SystemPromptSpec`], [`FewShotSpec`]).
///
/// Short forms: `azure-conv`, `azure-code`, `sharegpt`, `arxiv`;
/// `synthetic:prompt=lognormal(1024,0.8),output=uniform(16,256)` (see [`LengthDist::parse`]);
/// `mix:sharegpt*0.7@chat+arxiv*0.3@summarisation` (`SOURCE[*WEIGHT][@CLASS]` joined by `+`);
/// `chat[:KEY=VALUE,...]`, `system-prompts[:...]`, `few-shot[:...]` (see [`crate::shared`]);
/// anything else is a file path (`.jsonl`: Mooncake JSONL, whose `hash_ids` become shared
/// prefixes; otherwise CSV; see [`crate::trace`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkloadSource {
    /// A trace shipped in `data/traces`.
    Builtin {
        /// Which one.
        name: BuiltinTrace,
        /// Row order when used as a length source; default by timed/untimed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sampling: Option<Sampling>,
    },
    /// A trace file (CSV or JSONL).
    File {
        /// The file.
        path: PathBuf,
        /// Row order when used as a length source; default by timed/untimed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sampling: Option<Sampling>,
    },
    /// Independent synthetic prompt and output lengths.
    Synthetic {
        /// Prompt-length distribution.
        prompt: LengthDist,
        /// Output-length distribution.
        output: LengthDist,
    },
    /// A weighted mix: each request comes from one component, drawn by weight.
    Mixture {
        /// The parts.
        components: Vec<MixtureComponent>,
    },
    /// Multi-turn conversations that resend their history (shared prefixes).
    Chat(ChatSpec),
    /// Requests sharing a few system prompts (shared prefixes).
    SystemPrompts(SystemPromptSpec),
    /// Requests built from few-shot templates (shared prefixes).
    FewShot(FewShotSpec),
}

impl Serialize for WorkloadSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WorkloadSource::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for WorkloadSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Short(String),
            Full(#[serde(deserialize_with = "WorkloadSource::deserialize")] WorkloadSource),
        }
        match Repr::deserialize(d)? {
            Repr::Short(s) => s.parse().map_err(serde::de::Error::custom),
            Repr::Full(src) => Ok(src),
        }
    }
}

impl WorkloadSource {
    /// A shipped trace with default sampling.
    pub fn builtin(name: BuiltinTrace) -> Self {
        WorkloadSource::Builtin {
            name,
            sampling: None,
        }
    }

    /// A trace file with default sampling.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        WorkloadSource::File {
            path: path.into(),
            sampling: None,
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            WorkloadSource::Builtin { name, .. } => name.name().to_string(),
            WorkloadSource::File { path, .. } => path.display().to_string(),
            WorkloadSource::Synthetic { prompt, output } => {
                format!("synthetic:prompt={prompt},output={output}")
            }
            WorkloadSource::Mixture { components } => {
                let parts: Vec<String> = components
                    .iter()
                    .map(|c| {
                        let class = c
                            .class
                            .as_deref()
                            .map(|c| format!(" @{c}"))
                            .unwrap_or_default();
                        format!("{} x{}{class}", c.source.describe(), c.weight)
                    })
                    .collect();
                format!("mix of {}", parts.join(" + "))
            }
            WorkloadSource::Chat(c) => c.to_string(),
            WorkloadSource::SystemPrompts(p) => p.to_string(),
            WorkloadSource::FewShot(f) => f.to_string(),
        }
    }
}

/// A shared-prefix generator's short name and parser of its `KEY=VALUE` list.
type SharedCtor = fn(&str, &str) -> Result<WorkloadSource, WorkloadError>;

const SHARED: &[(&str, SharedCtor)] = &[
    ("chat", |i, r| {
        shared::parse_chat(i, r).map(WorkloadSource::Chat)
    }),
    ("system-prompts", |i, r| {
        shared::parse_system_prompts(i, r).map(WorkloadSource::SystemPrompts)
    }),
    ("few-shot", |i, r| {
        shared::parse_few_shot(i, r).map(WorkloadSource::FewShot)
    }),
];

/// Splits on `sep` outside parentheses.
pub(crate) fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl std::str::FromStr for WorkloadSource {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let err = |m: String| WorkloadError::Syntax {
            input: s.to_string(),
            message: m,
        };
        if s.is_empty() {
            return Err(err("empty workload source".into()));
        }
        if let Some(t) = BuiltinTrace::from_name(s) {
            return Ok(WorkloadSource::builtin(t));
        }
        if let Some(rest) = s.strip_prefix("synthetic:") {
            let mut prompt = None;
            let mut output = None;
            for part in split_top(rest, ',') {
                let (k, v) = part.split_once('=').ok_or_else(|| {
                    err(format!("expected prompt=DIST or output=DIST, got `{part}`"))
                })?;
                let d = Some(LengthDist::parse(v)?);
                match k.trim() {
                    "prompt" | "input" => prompt = d,
                    "output" => output = d,
                    other => return Err(err(format!("unknown key `{other}`"))),
                }
            }
            return match (prompt, output) {
                (Some(prompt), Some(output)) => Ok(WorkloadSource::Synthetic { prompt, output }),
                _ => Err(err("synthetic needs both prompt=... and output=...".into())),
            };
        }
        for (name, ctor) in SHARED {
            if s == *name {
                return ctor(s, &s[s.len()..]);
            }
            if let Some(rest) = s.strip_prefix(name).and_then(|r| r.strip_prefix(':')) {
                return ctor(s, rest);
            }
        }
        if let Some(rest) = s.strip_prefix("mix:") {
            let mut components = Vec::new();
            for part in split_top(rest, '+') {
                let (part, class) = match part.rsplit_once('@') {
                    Some((p, c)) => (p, Some(c.trim().to_string())),
                    None => (part, None),
                };
                let (src, weight) = match part.rsplit_once('*') {
                    Some((p, w)) => (
                        p,
                        w.trim()
                            .parse::<f64>()
                            .map_err(|_| err(format!("bad weight `{w}`")))?,
                    ),
                    None => (part, 1.0),
                };
                let source: WorkloadSource = src.parse()?;
                if matches!(source, WorkloadSource::Mixture { .. }) {
                    return Err(err("mixtures cannot be nested".into()));
                }
                components.push(MixtureComponent {
                    source,
                    weight,
                    class,
                });
            }
            return Ok(WorkloadSource::Mixture { components });
        }
        if !s.contains(['/', '.', '\\']) {
            let known: Vec<&str> = BuiltinTrace::ALL.iter().map(|t| t.name()).collect();
            return Err(err(format!(
                "unknown trace name (known: {}, synthetic:..., mix:..., chat, system-prompts, \
                 few-shot, or a file path)",
                known.join(", ")
            )));
        }
        Ok(WorkloadSource::file(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_paths() {
        assert_eq!(
            "azure-code".parse::<WorkloadSource>().unwrap(),
            WorkloadSource::builtin(BuiltinTrace::AzureCode)
        );
        assert_eq!(
            "./x.jsonl".parse::<WorkloadSource>().unwrap(),
            WorkloadSource::file("./x.jsonl")
        );
        assert!("sharegtp".parse::<WorkloadSource>().is_err());
    }

    #[test]
    fn synthetic_and_mixture_short_forms() {
        let s: WorkloadSource = "synthetic:prompt=lognormal(1024,0.8),output=uniform(16,256)"
            .parse()
            .unwrap();
        assert!(matches!(s, WorkloadSource::Synthetic { .. }));
        let m: WorkloadSource =
            "mix:sharegpt*0.7@chat+synthetic:prompt=10,output=uniform(1,5)*0.3@batch"
                .parse()
                .unwrap();
        let WorkloadSource::Mixture { components } = m else {
            panic!("not a mixture")
        };
        assert_eq!(components.len(), 2);
        assert_eq!(components[0].weight, 0.7);
        assert_eq!(components[0].class.as_deref(), Some("chat"));
        assert_eq!(components[1].class.as_deref(), Some("batch"));
        assert!(matches!(
            components[1].source,
            WorkloadSource::Synthetic { .. }
        ));
        assert!("synthetic:prompt=10".parse::<WorkloadSource>().is_err());
        assert!("mix:sharegpt*x".parse::<WorkloadSource>().is_err());
    }

    #[test]
    fn shipped_traces_are_found() {
        for t in BuiltinTrace::ALL {
            let p = t.path().unwrap();
            assert!(p.is_file(), "{}", p.display());
        }
    }
}

//! Errors of this crate.

use std::path::PathBuf;

/// Why a workload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A trace file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a trace file is malformed (`line` is 1-based; the header is line 1).
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A short trace name (`sharegpt`, ...) whose files are not found in any data directory.
    #[error("trace `{name}` not found: looked for {looked_for} in {searched}; set ACCELLM_DATA_DIR to the repository's `data` directory")]
    TraceNotFound {
        /// The short name.
        name: String,
        /// The relative path looked for.
        looked_for: String,
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// A workload description that cannot be parsed (short CLI form).
    #[error("bad workload `{input}`: {message}")]
    Syntax {
        /// The text given.
        input: String,
        /// What is wrong with it.
        message: String,
    },
    /// A description that parses but is inconsistent (e.g. trace timing for a synthetic source).
    #[error("invalid workload: {0}")]
    Invalid(String),
}

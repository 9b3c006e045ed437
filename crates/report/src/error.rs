//! Errors of the report crate.

use std::path::PathBuf;

/// What can go wrong when writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The HTML file could not be written.
    #[error("cannot write report to {path}")]
    Write {
        /// Destination path.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

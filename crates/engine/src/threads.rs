//! Per-instance thread pools, and how candle's own threads fit in.
//!
//! What candle 0.11 does on the CPU (read from its source):
//! - Quantized matmuls (the `Native` and `Q8Padded` formats) run on one **process-wide**
//!   "barrier pool" of `CANDLE_NUM_THREADS - 1` worker threads (default: `RAYON_NUM_THREADS`, else
//!   the number of physical cores), created on first use and fixed afterwards. The calling thread
//!   takes part as the last worker. Concurrent callers are serialised by a lock, and idle workers
//!   spin for a while before parking. With `CANDLE_NUM_THREADS=1` the pool has no workers and every
//!   matmul runs inline on the calling thread, without the lock — so two instances with one thread
//!   each really run in parallel.
//! - Dense f32 matmuls (the `F32` format) use `gemm` with rayon, i.e. the rayon pool that is
//!   current on the calling thread (so [`Threads::install`] controls them).
//! - The engine's own parallel loops (attention) use the current rayon pool as well.
//!
//! So: an instance owns a [`Threads`] (a rayon pool of its size) and runs its forward passes inside
//! [`Threads::install`]; the process sets the quantized-matmul thread count once, before loading
//! anything, with [`set_matmul_threads`] — 1 when several single-threaded instances share the
//! machine, N for one instance with N threads.

use crate::error::{EngineError, Result};

/// A rayon thread pool owned by one engine instance.
pub struct Threads {
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("num_threads", &self.pool.current_num_threads())
            .finish()
    }
}

impl Threads {
    /// Creates a pool of `n` threads (at least one) named `{name}-{i}`.
    pub fn new(n: usize, name: &str) -> Result<Self> {
        let name = name.to_string();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
            .map_err(|e| EngineError::Threads(e.to_string()))?;
        Ok(Self { pool })
    }

    /// Number of threads.
    pub fn num_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on this pool; parallel loops inside it use this pool's threads.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// Sets the number of threads candle uses for quantized matmuls, process-wide. Call it once at
/// start-up, before any model is loaded or run and before other threads are spawned; an explicit
/// `CANDLE_NUM_THREADS` in the environment wins. Returns the count in force.
pub fn set_matmul_threads(n: usize) -> usize {
    if let Some(v) = std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&v| v > 0)
    {
        return v;
    }
    let n = n.max(1);
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    n
}

/// The quantized-matmul thread count candle will use (or is using).
pub fn matmul_threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .or_else(|| std::env::var("RAYON_NUM_THREADS").ok())
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&v| v > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

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

    /// Creates a pool of `n` threads named `{name}-{i}`, thread `i` pinned to CPU
    /// `cpus[i % cpus.len()]` (Linux `sched_setaffinity`; where that fails or elsewhere, the
    /// thread runs unpinned). With one matmul thread per instance ([`set_matmul_threads`]) the
    /// forward pass runs on these threads, so two instances stop sharing a core by chance.
    pub fn pinned(n: usize, name: &str, cpus: Vec<usize>) -> Result<Self> {
        let name = name.to_string();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .start_handler(move |i| {
                if let Some(&cpu) = cpus.get(i % cpus.len().max(1)) {
                    pin_current_thread(cpu);
                }
            })
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

/// The CPUs this process may run on (Linux `sched_getaffinity`), ascending; empty where unknown.
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `set` is a plain bit set, zeroed, and its size is passed; pid 0 is this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

/// Pins the calling thread to `cpu`; returns whether the OS accepted it.
pub fn pin_current_thread(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        // SAFETY: `set` is a zeroed bit set with one in-range bit set; pid 0 is this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_pool_runs_on_its_cpu() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let last = *cpus.last().unwrap();
        let pool = Threads::pinned(1, "pin-test", vec![last]).unwrap();
        let now = pool.install(|| {
            // SAFETY: sched_getcpu has no preconditions.
            unsafe { libc::sched_getcpu() }
        });
        assert_eq!(now, last as i32);
        // The pool's own affinity is that one CPU.
        assert_eq!(pool.install(allowed_cpus), vec![last]);
    }
}

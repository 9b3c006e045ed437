//! Per-instance thread pools: every parallel loop of the engine runs on the rayon pool current on
//! the calling thread, so the pool an iteration is installed in decides how many cores it gets.
//!
//! - Quantized matmuls (`Native`, `Q8Padded`) are split by output rows into slices at load time
//!   ([`crate::linear`]) and the slices run in parallel on the current pool; candle's own
//!   process-wide "barrier pool" is kept at one thread (`CANDLE_NUM_THREADS=1`,
//!   [`inline_candle_matmuls`]), so each slice runs inline on the thread that takes it. (Candle's
//!   pool is fixed per process and serialises concurrent callers with a lock: it cannot give one
//!   instance two cores for one iteration and one core for the next.)
//! - The `Blocks` kernel and its dequantization split their columns over the current pool.
//! - Dense f32 matmuls use `gemm` with rayon, i.e. the current pool; so does attention.
//!
//! So: an instance owns a [`Threads`] of its size, and, where it may borrow an idle partner's
//! cores, a second one spanning both instances' CPUs; each iteration runs inside
//! [`Threads::install`] of the pool the scheduler chose for it.

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
    /// thread runs unpinned). The forward pass runs on these threads, so two instances stop sharing a core by chance.
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

    /// Runs `f` on this pool; parallel loops inside it use this pool's threads. With more than
    /// one thread, the others spin for the whole of `f`, taking each parallel loop's work the
    /// moment it is split off: a forward pass splits ~150 loops per token, and waking a parked
    /// rayon worker for each cost a batch-1 decode step more than the split gained (candle's
    /// own pool spins for the same reason). The cores are the iteration's anyway; a spinner with
    /// nothing to take yields the core to any other runnable thread.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let n = self.pool.current_num_threads();
        if n <= 1 || self.pool.current_thread_index().is_some() {
            return self.pool.install(f);
        }
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        self.pool.install(|| {
            let done = AtomicBool::new(false);
            let spinning = AtomicUsize::new(0);
            rayon::scope(|s| {
                for _ in 1..n {
                    s.spawn(|_| {
                        spinning.fetch_add(1, Ordering::AcqRel);
                        while !done.load(Ordering::Acquire) {
                            // Nothing to take: give the core to any other runnable thread (on an
                            // idle core this returns at once, so the spinner stays hot).
                            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                                std::thread::yield_now();
                            }
                        }
                    });
                }
                // Start only once every spinner runs on another worker: this thread must not
                // pick one up itself while `f` waits in a parallel loop.
                while spinning.load(Ordering::Acquire) < n - 1 {
                    std::thread::yield_now();
                }
                let r = f();
                done.store(true, Ordering::Release);
                r
            })
        })
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

/// Keeps candle's quantized-matmul pool at one thread (the engine parallelises on rayon instead:
/// see the module docs). Call it once at start-up, before any model is loaded or run. An explicit
/// `CANDLE_NUM_THREADS` other than 1 in the environment is an error: it would run a second set of
/// threads under each instance's own.
pub fn inline_candle_matmuls() -> Result<()> {
    match std::env::var("CANDLE_NUM_THREADS") {
        Ok(v) if v.trim() != "1" => Err(EngineError::Threads(format!(
            "CANDLE_NUM_THREADS={v} in the environment: accellm runs candle's matmuls inline and \
             sets threads with its own flags (--threads, --threads-per-instance); unset it"
        ))),
        Ok(_) => Ok(()),
        Err(_) => {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
            Ok(())
        }
    }
}

/// Calls `f` on consecutive ranges that cover `0..n`, in parallel on the current rayon pool (a
/// few ranges per thread, to balance), or once with `0..n` on a one-thread pool.
pub(crate) fn for_each_range(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if threads <= 1 || n <= 1 {
        f(0..n);
        return;
    }
    let pieces = (threads * 4).min(n);
    (0..pieces).into_par_iter().for_each(|p| {
        f(p * n / pieces..(p + 1) * n / pieces);
    });
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

//! A persistent pool of worker threads for fork-join kernels with microsecond overhead.
//!
//! A decode step is ~300 small operations, so per-operation synchronisation must cost far less
//! than the ~5 µs each op takes. [`ThreadPool::run`] publishes a closure by bumping a generation
//! counter; workers spin on it briefly (then yield, then sleep on a condvar when idle for long),
//! run `f(thread_idx)`, and count themselves done. The caller runs `f(0)` itself and spins until
//! every worker has finished, so no thread is woken through the kernel on the hot path.
//!
//! Work is split statically by the caller from `thread_idx` and [`ThreadPool::n_threads`], so
//! results never depend on timing (batch invariance and reproducibility).

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it starts yielding, and yields before it sleeps.
const SPIN_ITERS: u32 = 20_000;
const YIELD_FOR: Duration = Duration::from_millis(20);

type Job<'a> = dyn Fn(usize) + Sync + 'a;

#[repr(align(128))]
struct Padded<T>(T);

struct Shared {
    /// Bumped once per published job; workers run a job when they see a new value.
    generation: Padded<AtomicU64>,
    /// Workers that finished the current job.
    n_done: Padded<AtomicUsize>,
    /// The current job, valid while `run` has not returned.
    job: UnsafeCell<Option<*const Job<'static>>>,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `run` while no worker reads it (all workers have finished the
// previous generation and the new one is not yet published); the Release store of `generation`
// publishes it and workers read it after an Acquire load. The pointee is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed set of threads that run fork-join jobs; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises `run` calls from different threads.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads in all: the caller plus `n_threads - 1` workers.
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: Padded(AtomicU64::new(0)),
            n_done: Padded(AtomicUsize::new(0)),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|thread_idx| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("peregrine-worker-{thread_idx}"))
                    .spawn(move || worker_loop(&shared, thread_idx))
                    .expect("spawning a worker thread succeeds")
            })
            .collect();
        Self {
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    /// Number of threads that run each job, the caller included.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(thread_idx)` once on every thread (`0..n_threads`) and returns when all are done.
    ///
    /// # Panics
    /// Re-raises a panic from any thread's `f` after all threads have finished.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        let job: &Job<'_> = &f;
        // SAFETY: the lifetime is erased only for the duration of this call: we do not return
        // before every worker has incremented `n_done` for this generation, after which no
        // worker touches the pointer again.
        let job: *const Job<'static> =
            unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
        // SAFETY: all workers finished the previous job (we waited for them), so none reads `job`.
        unsafe { *shared.job.get() = Some(job) };
        shared.n_done.0.store(0, Ordering::Relaxed);
        shared.generation.0.fetch_add(1, Ordering::Release);
        self.wake_sleepers();

        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let n_workers = self.workers.len();
        let mut spins = 0u32;
        while shared.n_done.0.load(Ordering::Acquire) < n_workers {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread panicked while running a pool job");
        }
    }

    fn wake_sleepers(&self) {
        // Taking the lock orders this notify after any worker's check-then-wait.
        let _lock = self
            .shared
            .sleep_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.0.fetch_add(1, Ordering::Release);
        self.wake_sleepers();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn worker_loop(shared: &Shared, thread_idx: usize) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_new_generation(shared, seen);
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the Acquire load in `wait_for_new_generation` saw the generation that `run`
        // published after writing `job`; `run` keeps the closure alive until we report done.
        let job = unsafe { (*shared.job.get()).expect("a published generation has a job") };
        // SAFETY: see above; the pointee outlives this call.
        let job = unsafe { &*job };
        if catch_unwind(AssertUnwindSafe(|| job(thread_idx))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.n_done.0.fetch_add(1, Ordering::Release);
    }
}

/// Spins, then yields, then sleeps until `generation` moves past `seen`; returns the new value.
fn wait_for_new_generation(shared: &Shared, seen: u64) -> u64 {
    for _ in 0..SPIN_ITERS {
        let g = shared.generation.0.load(Ordering::Acquire);
        if g != seen {
            return g;
        }
        std::hint::spin_loop();
    }
    let yield_start = Instant::now();
    while yield_start.elapsed() < YIELD_FOR {
        let g = shared.generation.0.load(Ordering::Acquire);
        if g != seen {
            return g;
        }
        std::thread::yield_now();
    }
    let mut lock = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let g = shared.generation.0.load(Ordering::Acquire);
        if g != seen {
            return g;
        }
        lock = shared.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
    }
}

/// The contiguous share of `0..n` that thread `thread_idx` of `n_threads` handles, in units of
/// `align` (the last share takes the remainder). Deterministic, so results never depend on timing.
pub fn split_range(
    n: usize,
    align: usize,
    thread_idx: usize,
    n_threads: usize,
) -> std::ops::Range<usize> {
    let align = align.max(1);
    let n_units = n.div_ceil(align);
    let per = n_units / n_threads;
    let extra = n_units % n_threads;
    let start_unit = thread_idx * per + thread_idx.min(extra);
    let end_unit = start_unit + per + usize::from(thread_idx < extra);
    (start_unit * align).min(n)..(end_unit * align).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = ThreadPool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicU32> = (0..3).map(|_| AtomicU32::new(0)).collect();
            pool.run(|t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn worker_panic_is_reported_not_hung() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(|t| assert!(t == 0, "boom"))));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicU32::new(0);
        pool.run(|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn split_range_covers_everything_once() {
        for n in [0, 1, 7, 64, 575, 576, 49152] {
            for threads in 1..5 {
                for align in [1, 4, 16] {
                    let mut next = 0;
                    for t in 0..threads {
                        let r = split_range(n, align, t, threads);
                        assert_eq!(r.start, next, "n={n} threads={threads} align={align}");
                        next = r.end;
                    }
                    assert_eq!(next, n);
                }
            }
        }
    }
}

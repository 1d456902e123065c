//! A persistent pool of worker threads for fork-join kernels with microsecond overhead.
//!
//! A decode step is ~300 small operations, so per-operation synchronisation must cost far less
//! than the few microseconds each op takes. [`ThreadPool::run_chunks`] publishes a job of
//! `n_chunks` independent chunks by bumping a generation counter; every thread (the caller
//! included) claims chunks from a shared atomic counter until none are left.
//!
//! Claiming, not a fixed split, is what keeps the pool fast on a busy machine: a worker that the
//! OS has not scheduled simply claims nothing, and the caller does its share instead of waiting
//! for it. Results never depend on who computes a chunk (each chunk's work is fixed by its index),
//! so outputs stay bit-identical whatever the timing, thread count or load.
//!
//! Lifetime protocol: the job closure lives on the caller's stack. A worker may only touch it
//! after "entering" the job (incrementing an `active` count tagged with the job's generation,
//! while the job is open); the caller closes the job once every chunk is done and then waits
//! for `active` to drain before returning.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it starts yielding, and yields before it sleeps.
const SPIN_ITERS: u32 = 4_000;
const YIELD_FOR: Duration = Duration::from_millis(5);

/// `entry` layout: generation (low 32 bits) in the high half, a closed flag, an active count.
const CLOSED: u64 = 1 << 31;
const ACTIVE_MASK: u64 = CLOSED - 1;

type Job<'a> = dyn Fn(usize, usize) + Sync + 'a;

#[repr(align(128))]
struct Padded<T>(T);

struct Shared {
    /// Bumped once per published job; workers look for a job when they see a new value.
    generation: Padded<AtomicU64>,
    /// `(generation as u32) << 32 | closed | active workers`.
    entry: Padded<AtomicU64>,
    next_chunk: Padded<AtomicUsize>,
    chunks_done: Padded<AtomicUsize>,
    n_chunks: AtomicUsize,
    /// The current job, valid while it is open or has active workers.
    job: UnsafeCell<Option<*const Job<'static>>>,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers blocked (or about to block) on `wake`; publishing a job notifies only if any.
    n_sleeping: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `run_chunks` while no worker can read it (the previous job is
// closed with no active workers, and the new generation is not yet published); workers read it
// only after entering the job, which the Acquire/Release pairs on `generation` and `entry` order
// after the write. The pointee is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed set of threads that run fork-join jobs; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises jobs from different calling threads.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads in all: the caller plus `n_threads - 1` workers.
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: Padded(AtomicU64::new(0)),
            entry: Padded(AtomicU64::new(CLOSED)),
            next_chunk: Padded(AtomicUsize::new(0)),
            chunks_done: Padded(AtomicUsize::new(0)),
            n_chunks: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            n_sleeping: AtomicUsize::new(0),
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

    /// Number of threads that may run chunks of a job, the caller included.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(chunk_idx, thread_idx)` for every chunk in `0..n_chunks`, spread over the
    /// threads, and returns when all are done. `thread_idx < n_threads()` names the executing
    /// thread (for per-thread scratch); a chunk's result must depend only on `chunk_idx`.
    ///
    /// # Panics
    /// Re-raises a panic from any chunk after the job has drained.
    pub fn run_chunks<F: Fn(usize, usize) + Sync>(&self, n_chunks: usize, f: F) {
        if self.workers.is_empty() || n_chunks <= 1 {
            (0..n_chunks).for_each(|c| f(c, 0));
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        let job: &Job<'_> = &f;
        // SAFETY: the lifetime is erased only while the job is open or has active workers; we
        // close it and wait for `active == 0` before returning, after which no worker touches it.
        let job: *const Job<'static> =
            unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
        // SAFETY: the previous job is closed with no active workers, so nobody reads `job` now.
        unsafe { *shared.job.get() = Some(job) };
        shared.n_chunks.store(n_chunks, Ordering::Relaxed);
        shared.next_chunk.0.store(0, Ordering::Relaxed);
        shared.chunks_done.0.store(0, Ordering::Relaxed);
        let generation = shared.generation.0.load(Ordering::Relaxed).wrapping_add(1);
        shared
            .entry
            .0
            .store((generation & 0xFFFF_FFFF) << 32, Ordering::Relaxed);
        shared.generation.0.store(generation, Ordering::Release);
        self.wake_sleepers();

        let mine = catch_unwind(AssertUnwindSafe(|| claim_chunks(shared, &f, n_chunks, 0)));
        let mut spins = 0u32;
        while shared.chunks_done.0.load(Ordering::Acquire) < n_chunks {
            backoff(&mut spins);
        }
        shared.entry.0.fetch_or(CLOSED, Ordering::AcqRel);
        while shared.entry.0.load(Ordering::Acquire) & ACTIVE_MASK != 0 {
            backoff(&mut spins);
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread panicked while running a pool job");
        }
    }

    /// Runs `f(thread_idx)` once per thread index `0..n_threads()` (each index exactly once,
    /// on whichever thread claims it).
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        self.run_chunks(self.n_threads(), |chunk, _| f(chunk));
    }

    fn wake_sleepers(&self) {
        // Dekker-style with the worker (which counts itself, fences, then re-reads the
        // generation): either we see it counted, or it sees the generation we just published.
        // A notify is a system call, too slow to make for every job while workers spin.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.shared.n_sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
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

/// Spin a little, then yield the CPU (so a descheduled peer can run on a busy machine).
fn backoff(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(64) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Claims and runs chunks until none are left; counts each finished chunk.
fn claim_chunks(shared: &Shared, job: &Job<'_>, n_chunks: usize, thread_idx: usize) {
    loop {
        let chunk = shared.next_chunk.0.fetch_add(1, Ordering::Relaxed);
        if chunk >= n_chunks {
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| job(chunk, thread_idx)));
        if result.is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.chunks_done.0.fetch_add(1, Ordering::Release);
    }
}

fn worker_loop(shared: &Shared, thread_idx: usize) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_new_generation(shared, seen);
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        if !try_enter(shared, seen) {
            continue;
        }
        // SAFETY: we entered the open job of generation `seen`: `run_chunks` wrote `job` before
        // publishing that generation and keeps the closure alive until we leave.
        let job = unsafe { (*shared.job.get()).expect("an open job has a closure") };
        // SAFETY: see above.
        let job = unsafe { &*job };
        let n_chunks = shared.n_chunks.load(Ordering::Relaxed);
        claim_chunks(shared, job, n_chunks, thread_idx);
        shared.entry.0.fetch_sub(1, Ordering::Release);
    }
}

/// Joins the job of `generation` if it is still open; false if it closed or was replaced.
fn try_enter(shared: &Shared, generation: u64) -> bool {
    let tag = (generation & 0xFFFF_FFFF) << 32;
    let mut entry = shared.entry.0.load(Ordering::Acquire);
    loop {
        if entry & !(CLOSED | ACTIVE_MASK) != tag || entry & CLOSED != 0 {
            return false;
        }
        match shared.entry.0.compare_exchange_weak(
            entry,
            entry + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(now) => entry = now,
        }
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
    shared.n_sleeping.fetch_add(1, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    let g = loop {
        let g = shared.generation.0.load(Ordering::Acquire);
        if g != seen {
            break g;
        }
        lock = shared.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
    };
    shared.n_sleeping.fetch_sub(1, Ordering::SeqCst);
    drop(lock);
    g
}

/// Chunk `chunk_idx` of `0..n` cut into pieces of `chunk_len` (the last may be shorter).
pub fn chunk_range(n: usize, chunk_len: usize, chunk_idx: usize) -> std::ops::Range<usize> {
    let start = (chunk_idx * chunk_len).min(n);
    start..(start + chunk_len).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            pool.run_chunks(n, |c, t| {
                assert!(t < 3);
                hits[c].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn many_small_jobs_from_two_callers() {
        let pool = ThreadPool::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let sum = AtomicUsize::new(0);
                        pool.run_chunks(5, |c, _| {
                            sum.fetch_add(c, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 10);
                    }
                });
            }
        });
    }

    #[test]
    fn sleeping_worker_wakes_for_the_next_job() {
        let pool = ThreadPool::new(2);
        for _ in 0..3 {
            // Long enough idle for the worker to spin, yield and block on the condvar.
            std::thread::sleep(Duration::from_millis(30));
            // The caller claims chunk 0 and waits there for chunk 1, which only the worker can
            // run: this finishes only if the worker woke up.
            let done = AtomicBool::new(false);
            let ok = AtomicBool::new(false);
            pool.run_chunks(2, |c, _| {
                if c == 1 {
                    done.store(true, Ordering::Release);
                    return;
                }
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(5) {
                    if done.load(Ordering::Acquire) {
                        ok.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::hint::spin_loop();
                }
            });
            assert!(ok.load(Ordering::Relaxed), "the sleeping worker never woke");
        }
    }

    #[test]
    fn chunk_panic_is_reported_not_hung() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run_chunks(8, |c, _| assert!(c != 5, "boom"))
        }));
        assert!(r.is_err());
        let n = AtomicU32::new(0);
        pool.run_chunks(4, |_, _| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(
            n.load(Ordering::Relaxed),
            4,
            "the pool still works after a panic"
        );
    }

    #[test]
    fn chunk_ranges_cover_everything_once() {
        for n in [0usize, 1, 63, 64, 65, 49152] {
            let len = 64;
            let mut next = 0;
            for c in 0..n.div_ceil(len) {
                let r = chunk_range(n, len, c);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }
}

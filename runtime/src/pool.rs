//! A persistent thread pool for the forward pass.
//!
//! Decode runs hundreds of small matmuls per token, so a dispatch must cost about a
//! microsecond, not a thread spawn or a trip through a general-purpose scheduler. The
//! workers are started once and, between jobs, wait on a generation counter: they spin
//! for a short while (the next matmul usually follows within microseconds), then park so
//! that an idle model does not burn CPU. A dispatch is one atomic increment, plus one
//! `unpark` per worker only when some are parked; completion is one atomic counter that
//! the caller spins on (yielding after a while, since the machine may be shared).
//!
//! The pool owns only the mechanics of running a closure on every thread. How work is
//! split is up to the callers: `run` hands out thread indices, `for_each_chunk` hands
//! out disjoint pieces of an output slice.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker waits for the next job before it parks. Long enough to bridge
/// the gap between two matmuls of one token (the ops between them take microseconds),
/// short enough that a pool waiting for user input sleeps almost at once.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(200);

/// Busy-wait iterations (a `pause` each, a few µs in all) before a waiting thread starts
/// yielding its time slice in between looks. Pure spinning answers fastest; yielding
/// keeps a waiting thread from starving the ones it waits for when there are more
/// threads than free cores (a shared machine, or an oversized pool).
const SPINS_BEFORE_YIELD: u32 = 1 << 10;

/// A job as the workers see it: the caller's closure with its lifetime erased.
type Job = *const (dyn Fn(usize, usize) + Sync + 'static);

/// State shared between the caller and the workers.
struct Shared {
    n_threads: usize,
    /// Bumped once per dispatch (and once at shutdown); a worker runs the job when the
    /// generation it sees differs from the last one it ran.
    generation: AtomicU64,
    /// The current job. Written by `run` only while no worker is inside a job (after the
    /// previous dispatch completed) and before the generation bump that publishes it.
    job: UnsafeCell<Option<Job>>,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    /// Workers parked, or about to park; a dispatch unparks them only when this is > 0.
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    /// Set by a worker whose job panicked; `run` re-raises it in the caller.
    worker_panicked: AtomicBool,
}

// SAFETY: `job` is the only non-Sync field. It is written by the dispatching thread only
// while every worker is idle, and read by workers only after they observe (Acquire) the
// generation bump (SeqCst) that follows the write; `run` does not return, and so does not
// write again, until every worker has released (`pending`) its use of the job.
unsafe impl Sync for Shared {}
// SAFETY: the raw job pointer is only dereferenced under the protocol above.
unsafe impl Send for Shared {}

/// A fixed set of threads (the caller plus `n_threads - 1` workers) that run one job at
/// a time.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<(Thread, JoinHandle<()>)>,
    /// Held while a dispatch is in flight, so that a second concurrent or nested `run`
    /// falls back to running serially instead of corrupting the first.
    busy: AtomicBool,
}

impl Pool {
    /// Starts `n_threads - 1` workers (`n_threads` counts the calling thread; 0 is taken
    /// as 1). If the OS refuses to start a thread, the pool keeps the ones it has:
    /// `n_threads()` says how many there are.
    pub fn new(n_threads: usize) -> Pool {
        let wanted = n_threads.max(1);
        let shared = Arc::new(Shared {
            n_threads: wanted,
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            worker_panicked: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(wanted - 1);
        for index in 1..wanted {
            let s = Arc::clone(&shared);
            match thread::Builder::new()
                .name(format!("mcc-pool-{index}"))
                .spawn(move || worker(&s, index))
            {
                Ok(handle) => workers.push((handle.thread().clone(), handle)),
                Err(_) => break,
            }
        }
        if workers.len() + 1 < wanted {
            // Fewer threads than asked: stop the ones that started (they are waiting for
            // generation 1 and have not read n_threads yet) and start over with that many.
            let got = workers.len() + 1;
            shutdown(&shared, &mut workers);
            return Pool::new(got);
        }
        Pool {
            shared,
            workers,
            busy: AtomicBool::new(false),
        }
    }

    /// Threads that run each job, the caller included.
    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `f(thread_index, n_threads)` on every thread of the pool (the caller is thread
    /// 0) and returns when all are done. A panic in any of them is re-raised here after
    /// all have finished. A `run` issued while another is in flight (from inside a job,
    /// or from another thread) runs all indices serially on its own thread instead.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.shared.n_threads;
        if n == 1 || self.busy.swap(true, Ordering::Acquire) {
            for index in 0..n {
                f(index, n);
            }
            return;
        }
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased. `Completion` below waits for every worker
        // to finish with the job before this function returns or unwinds, so the closure
        // outlives every use of the pointer.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), Job>(f) };
        // SAFETY: `busy` is ours and the previous dispatch completed, so no worker reads
        // `job` now (see `Shared`).
        unsafe { *shared.job.get() = Some(job) };
        shared.pending.store(n - 1, Ordering::Relaxed);
        // publishes job and pending to the workers that observe the new generation
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            for (t, _) in &self.workers {
                t.unpark();
            }
        }
        let completion = Completion {
            shared,
            busy: &self.busy,
        };
        f(0, n);
        drop(completion);
        if shared.worker_panicked.swap(false, Ordering::Relaxed) {
            panic!("a thread-pool worker panicked (its message was printed above)");
        }
    }

    /// Splits `out` into consecutive chunks of `chunk` elements (the last may be shorter)
    /// and calls `f(start, chunk_slice)` once per chunk, `start` being the chunk's offset
    /// in `out`. Threads claim chunks from a shared counter, so a thread that was
    /// descheduled or got slower chunks does not hold the others up. Each element is
    /// handed to exactly one call.
    pub fn for_each_chunk<T, F>(&self, out: &mut [T], chunk: usize, f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync,
    {
        let len = out.len();
        let chunk = chunk.max(1);
        let n_chunks = len.div_ceil(chunk);
        if n_chunks <= 1 || self.n_threads() == 1 {
            for (i, piece) in out.chunks_mut(chunk).enumerate() {
                f(i * chunk, piece);
            }
            return;
        }
        let base = SyncPtr(out.as_mut_ptr());
        let next = AtomicUsize::new(0);
        self.run(&|_, _| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let start = c * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: chunk `c` is claimed by exactly one thread (fetch_add), chunks are
            // disjoint and inside `out`, and `out` is mutably borrowed for the whole call,
            // which returns only after every thread is done.
            let piece =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(start, piece);
        });
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        shutdown(&self.shared, &mut self.workers);
    }
}

/// Stops and joins the workers.
fn shutdown(shared: &Shared, workers: &mut Vec<(Thread, JoinHandle<()>)>) {
    shared.shutdown.store(true, Ordering::SeqCst);
    shared.generation.fetch_add(1, Ordering::SeqCst);
    for (t, _) in workers.iter() {
        t.unpark();
    }
    for (_, handle) in workers.drain(..) {
        // A worker catches its jobs' panics, so join fails only if the loop itself
        // panicked; there is nothing left to clean up in that case.
        let _ = handle.join();
    }
}

/// Waits (on drop, so also while unwinding from a panicking job on thread 0) until every
/// worker has finished the current job, then releases the pool for the next dispatch.
struct Completion<'a> {
    shared: &'a Shared,
    busy: &'a AtomicBool,
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        let mut spins = 0u32;
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        self.busy.store(false, Ordering::Release);
    }
}

/// A worker's life: wait for a new generation, run the job, report, repeat.
fn worker(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_generation(shared, seen);
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the generation was loaded with Acquire after `run` wrote the job, and
        // `run` waits for our `pending` decrement before it touches `job` again.
        let job = unsafe { (*shared.job.get()).expect("a dispatched job") };
        // SAFETY: the closure behind `job` lives until `pending` reaches 0 (see `run`).
        let f = unsafe { &*job };
        if catch_unwind(AssertUnwindSafe(|| f(index, shared.n_threads))).is_err() {
            shared.worker_panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Returns the first generation different from `seen`: spinning first, then parked.
fn wait_for_generation(shared: &Shared, seen: u64) -> u64 {
    let mut spins = 0u32;
    let mut yield_start = None;
    loop {
        let g = shared.generation.load(Ordering::Acquire);
        if g != seen {
            return g;
        }
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
            continue;
        }
        let start = *yield_start.get_or_insert_with(Instant::now);
        if start.elapsed() > SPIN_BEFORE_PARK {
            break;
        }
        thread::yield_now();
    }
    loop {
        // Announce the sleep before the last look at the generation. `run` bumps the
        // generation before it reads `sleepers` (both SeqCst), so either we see the new
        // generation here or `run` sees us and unparks us; an unpark that arrives before
        // `park` makes `park` return at once.
        shared.sleepers.fetch_add(1, Ordering::SeqCst);
        let g = shared.generation.load(Ordering::SeqCst);
        if g == seen {
            thread::park();
        }
        shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        let g = if g == seen {
            shared.generation.load(Ordering::Acquire)
        } else {
            g
        };
        if g != seen {
            return g;
        }
    }
}

/// A raw pointer that may cross threads; the code that dereferences it guarantees that
/// the pointees each thread touches are disjoint.
struct SyncPtr<T>(*mut T);

impl<T> SyncPtr<T> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper rather
    /// than the raw field).
    fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: see the type's doc; sending `T`s between threads must itself be allowed.
unsafe impl<T: Send> Sync for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SyncPtr<T> {}

/// An output buffer that several threads write at disjoint indices, for strided outputs
/// such as a token-major matmul result split by rows, which `for_each_chunk` cannot
/// express as contiguous chunks.
pub(crate) struct DisjointOut<'a> {
    ptr: SyncPtr<f32>,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> DisjointOut<'a> {
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        DisjointOut {
            ptr: SyncPtr(out.as_mut_ptr()),
            len: out.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Writes `out[i] = v`.
    ///
    /// # Safety
    /// No other thread may access index `i` while the buffer is shared.
    #[inline(always)]
    pub(crate) unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len, "DisjointOut: index {i} out of {}", self.len);
        // SAFETY: in bounds (checked); exclusive per the caller's contract.
        unsafe { self.ptr.get().add(i).write(v) }
    }

    /// `out[range]`, for a kernel that writes its results in place.
    ///
    /// # Safety
    /// No other thread may access those indices while the returned slice lives.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [f32] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "DisjointOut: {range:?} out of {}",
            self.len
        );
        // SAFETY: in bounds (checked); exclusive per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.get().add(range.start), range.len()) }
    }

    /// Writes `out[at..at + src.len()] = src`.
    ///
    /// # Safety
    /// No other thread may access those indices while the buffer is shared.
    #[inline(always)]
    pub(crate) unsafe fn write_slice(&self, at: usize, src: &[f32]) {
        assert!(
            at <= self.len && src.len() <= self.len - at,
            "DisjointOut: {} values at {at} out of {}",
            src.len(),
            self.len
        );
        // SAFETY: in bounds (checked); exclusive per the caller's contract; `src` is a
        // different buffer (it is borrowed while `out` is written through the pointer).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.get().add(at), src.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_index_runs_once_per_dispatch() {
        for n in 1..=4 {
            let pool = Pool::new(n);
            assert_eq!(pool.n_threads(), n);
            let counts: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            // more threads than this machine's 2 cores make every dispatch wait for the
            // scheduler; fewer rounds keep the test quick there
            let dispatches = if n <= 2 { 20_000 } else { 3_000 };
            for _ in 0..dispatches {
                pool.run(&|i, nt| {
                    assert_eq!(nt, n);
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            for (i, c) in counts.iter().enumerate() {
                assert_eq!(
                    c.load(Ordering::Relaxed),
                    dispatches,
                    "{n} threads: index {i}"
                );
            }
        }
    }

    #[test]
    fn results_are_visible_after_run() {
        // Plain (non-atomic) writes from the workers must be visible to the caller once
        // run returns; the same slots are rewritten every round.
        let pool = Pool::new(3);
        let mut data = vec![0u64; 3 * 64];
        for round in 1..2000u64 {
            pool.for_each_chunk(&mut data, 64, |start, piece| {
                for (k, v) in piece.iter_mut().enumerate() {
                    *v = round * 1000 + (start + k) as u64;
                }
            });
            assert!(
                data.iter()
                    .enumerate()
                    .all(|(k, &v)| v == round * 1000 + k as u64),
                "round {round}"
            );
        }
    }

    #[test]
    fn chunks_cover_the_slice_exactly_once() {
        let pool = Pool::new(3);
        for (len, chunk) in [
            (0, 4),
            (1, 4),
            (10, 3),
            (1000, 7),
            (64, 64),
            (65, 64),
            (5, 0),
        ] {
            let mut out = vec![0u32; len];
            pool.for_each_chunk(&mut out, chunk, |start, piece| {
                assert!(piece.len() <= chunk.max(1));
                for (k, v) in piece.iter_mut().enumerate() {
                    *v += (start + k) as u32 + 1;
                }
            });
            assert!(
                out.iter().enumerate().all(|(k, &v)| v == k as u32 + 1),
                "len {len} chunk {chunk}"
            );
        }
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = Pool::new(3);
        let hits = AtomicU32::new(0);
        for _ in 0..3 {
            // long enough for every worker to give up spinning and park
            thread::sleep(SPIN_BEFORE_PARK * 5);
            pool.run(&|_, _| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i, _| {
                if i == 1 {
                    panic!("job failed on purpose");
                }
            })
        }));
        assert!(result.is_err());
        // thread 0 panicking must also wait for the workers and leave the pool usable
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i, _| {
                if i == 0 {
                    panic!("job failed on purpose");
                }
            })
        }));
        assert!(result.is_err());
        let hits = AtomicU32::new(0);
        pool.run(&|_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn nested_run_falls_back_to_serial() {
        let pool = Pool::new(2);
        let hits = AtomicU32::new(0);
        pool.run(&|_, _| {
            pool.run(&|_, _| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        });
        // each of the 2 outer calls ran the 2 inner indices (in parallel or serially)
        assert_eq!(hits.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn dispatch_overhead() {
        // Not a pass/fail timing test (the machine is shared); prints the figure so that
        // `cargo test -- --nocapture` shows it. The kernel bench reports it too.
        let pool = Pool::new(2);
        let n = 20_000;
        pool.run(&|_, _| {});
        let start = Instant::now();
        for _ in 0..n {
            pool.run(&|_, _| {});
        }
        let per = start.elapsed() / n;
        eprintln!("pool dispatch with 2 threads: {per:?} per run");
        assert!(per < Duration::from_millis(50), "dispatch took {per:?}");
    }
}

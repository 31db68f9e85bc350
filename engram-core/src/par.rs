//! A tiny scoped-thread parallel map: big batches are split into one contiguous chunk per
//! core. Small batches stay on the calling thread (spawning costs more than it saves).

use std::sync::OnceLock;
use std::thread;

/// Below this many items a batch runs on the calling thread.
pub const PAR_THRESHOLD: usize = 512;

/// Worker threads used for big batches: `ENGRAM_CORE_THREADS` or the number of cores.
pub fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("ENGRAM_CORE_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
            .min(64)
    })
}

/// `(0..n).map(f).collect()`, in parallel for large `n`, keeping order.
pub fn par_map<T, F>(n: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    let workers = threads().min(n / (PAR_THRESHOLD / 2).max(1)).max(1);
    if n < PAR_THRESHOLD || workers == 1 {
        return (0..n).map(f).collect();
    }
    let chunk = n.div_ceil(workers);
    let f = &f;
    thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let start = w * chunk;
                let end = ((w + 1) * chunk).min(n);
                s.spawn(move || (start..end).map(f).collect::<Vec<T>>())
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part),
                // The closures used here do not panic; if one ever did, re-raise it here
                // rather than return a short result (py.rs turns panics into exceptions).
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

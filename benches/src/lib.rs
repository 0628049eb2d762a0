//! Shared helpers of the wdmoe criterion benchmarks (`benches/benches/`):
//! deterministic inputs, and a counting global allocator that proves the
//! core's decision path allocates nothing.
//!
//! Run them with `cargo bench -p wdmoe-benches` (all), or one file:
//! `cargo bench -p wdmoe-benches --bench select`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A global allocator that counts every allocation (`alloc`, `alloc_zeroed`,
/// `realloc`) and forwards to [`System`]. Install it in a bench with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;` and read
/// [`allocations`] around the code under test.
pub struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations made so far through [`CountingAlloc`] (all threads).
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Heap allocations made while running `f` (`f` must not spawn threads).
pub fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = allocations();
    let r = f();
    (r, allocations() - before)
}

/// Criterion warm-up per benchmark: short, the benches share small CI
/// machines. Override on the command line (`-- --warm-up-time 3
/// --measurement-time 10`) for publishable figures.
pub const WARM_UP: Duration = Duration::from_secs(1);

/// Criterion measurement time per benchmark (see [`WARM_UP`]).
pub const MEASUREMENT: Duration = Duration::from_secs(2);

/// A small deterministic generator (xorshift64*), so every run and every
/// machine benchmarks the same inputs without a `rand` dependency.
pub struct Xorshift(u64);

impl Xorshift {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }
    /// Next raw value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Approximately standard normal (sum of 4 uniforms, rescaled).
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 3f64.sqrt()
    }
}

/// One routing decision's inputs: router logits and per-expert latencies [s].
#[derive(Debug, Clone)]
pub struct Decision {
    /// Router logits (Mixtral-like spread: σ ≈ 1.5).
    pub logits: Vec<f64>,
    /// Latencies, log-uniform in 1–10 ms; 1 in 32 devices unreachable (`+∞`).
    pub latency_s: Vec<f64>,
}

/// `count` decisions over `n` experts, seeded.
pub fn decisions(n: usize, count: usize, seed: u64) -> Vec<Decision> {
    let mut rng = Xorshift::new(seed);
    (0..count)
        .map(|_| Decision {
            logits: (0..n).map(|_| 1.5 * rng.normal()).collect(),
            latency_s: (0..n)
                .map(|_| {
                    if rng.uniform() < 1.0 / 32.0 {
                        f64::INFINITY
                    } else {
                        1e-3 * 10f64.powf(rng.uniform())
                    }
                })
                .collect(),
        })
        .collect()
}

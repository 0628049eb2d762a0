//! Seeded, injected randomness.
//!
//! Every random draw of the simulator comes from a [`ChaCha8Rng`] whose seed is
//! derived from `(run seed, prompt index, stream)` by [`stream`]. A prompt's
//! draws therefore do not depend on which thread simulates it, nor on how many
//! prompts run before it: results are bit-identical on any thread count.
//! Channel and router draws use separate streams, so swapping the router keeps
//! the channel realisations (and vice versa).
//!
//! The samplers below are written out (not taken from `rand_distr`) so that
//! the numbers a seed produces never change under a dependency upgrade: the
//! value-stability test locks them.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The generator every stream uses.
pub type Rng = ChaCha8Rng;

/// Independent random streams of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Large-scale (LOS, shadowing) and small-scale fading, outages.
    Channel = 1,
    /// Router logits (synthetic router).
    Router = 2,
    /// Per-layer structure of the synthetic router, shared by all prompts.
    RouterLayers = 3,
    /// Decision inputs of the throughput helper.
    Throughput = 4,
    /// Token sampling of `wdmoe generate` (temperature > 0).
    Sampling = 5,
}

/// SplitMix64 step: a bijective 64-bit mixer (Steele et al. 2014).
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of `stream` for prompt `prompt` of a run seeded with `seed`.
///
/// ```
/// use rand_core::RngCore;
/// use wdmoe_sim::rng::{stream, Stream};
/// let a = stream(7, 3, Stream::Channel).next_u64();
/// let b = stream(7, 3, Stream::Channel).next_u64();
/// assert_eq!(a, b);
/// assert_ne!(a, stream(7, 4, Stream::Channel).next_u64());
/// ```
pub fn stream(seed: u64, prompt: u64, stream: Stream) -> Rng {
    let mut s = seed ^ 0x5744_4D6F_4553_494D; // "WDMoESIM"
    let mut key = [0u8; 32];
    let words = [
        splitmix64(&mut s),
        splitmix64(&mut s) ^ prompt.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        splitmix64(&mut s) ^ (stream as u64),
        splitmix64(&mut s),
    ];
    let mut m = words[0] ^ words[1].rotate_left(17) ^ words[2].rotate_left(41);
    for (i, w) in words.iter().enumerate() {
        let v = w ^ splitmix64(&mut m);
        key[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    Rng::from_seed(key)
}

/// Uniform in `[0, 1)` with 53 random bits.
#[inline]
pub fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `(0, 1]` (never 0, so its logarithm is finite).
#[inline]
pub fn uniform_open0(rng: &mut Rng) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Exponential with mean 1: the power `|h|²` of a Rayleigh-faded channel.
#[inline]
pub fn exp1(rng: &mut Rng) -> f64 {
    -uniform_open0(rng).ln()
}

/// A pair of independent standard normals (Box–Muller).
#[inline]
pub fn normal_pair(rng: &mut Rng) -> (f64, f64) {
    let r = (-2.0 * uniform_open0(rng).ln()).sqrt();
    let a = std::f64::consts::TAU * uniform(rng);
    (r * a.cos(), r * a.sin())
}

/// One standard normal (Box–Muller; the second value is discarded so every
/// call consumes the same number of draws).
#[inline]
pub fn normal(rng: &mut Rng) -> f64 {
    normal_pair(rng).0
}

/// `true` with probability `p`.
#[inline]
pub fn bernoulli(rng: &mut Rng, p: f64) -> bool {
    uniform(rng) < p
}

/// The seed of replication `r` of a run seeded with `seed`: `seed` itself
/// for replication 0, an independent-looking seed for each other `r`, so
/// every random draw (router layer structure, channel, placement) is redrawn.
///
/// ```
/// use wdmoe_sim::rng::replication_seed;
/// assert_eq!(replication_seed(7, 0), 7);
/// assert_ne!(replication_seed(7, 1), replication_seed(7, 2));
/// assert_ne!(replication_seed(7, 1), replication_seed(8, 1));
/// ```
pub fn replication_seed(seed: u64, r: u64) -> u64 {
    if r == 0 {
        return seed;
    }
    let mut s = seed ^ 0x5245_504C_4943_4154; // "REPLICAT"
    let a = splitmix64(&mut s);
    let mut m = a ^ r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    splitmix64(&mut m)
}

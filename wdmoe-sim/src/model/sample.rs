//! Choosing the next token from logits: greedy, or temperature with top-p
//! (nucleus) sampling from a seeded stream.

use super::ModelError;
use crate::rng::{self, Rng, Stream};

/// How the next token is chosen.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// The most likely token (ties: the lowest id, like `torch.argmax`).
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of
    /// most likely tokens whose probability reaches `top_p`, sampled.
    Sample {
        /// Temperature > 0.
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// The seeded stream.
        rng: Box<Rng>,
    },
}

impl Sampler {
    /// Greedy for `temperature == 0`, else sampling with `top_p` from
    /// stream [`Stream::Sampling`] of `seed`.
    pub fn new(temperature: f64, top_p: f64, seed: u64) -> Result<Self, ModelError> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(ModelError::Settings(format!(
                "temperature {temperature}: must be finite and >= 0"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ModelError::Settings(format!(
                "top_p {top_p}: must be in (0, 1]"
            )));
        }
        Ok(if temperature == 0.0 {
            Sampler::Greedy
        } else {
            Sampler::Sample {
                temperature,
                top_p,
                rng: Box::new(rng::stream(seed, 0, Stream::Sampling)),
            }
        })
    }

    /// The next token from one row of logits.
    pub fn next_token(&mut self, logits: &[f32]) -> u32 {
        match self {
            Sampler::Greedy => argmax(logits),
            Sampler::Sample {
                temperature,
                top_p,
                rng,
            } => {
                let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let mut p: Vec<(u32, f64)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &z)| (i as u32, ((z as f64 - mx) / *temperature).exp()))
                    .collect();
                let total: f64 = p.iter().map(|x| x.1).sum();
                p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut kept = 0;
                let mut mass = 0.0;
                for (_, w) in &p {
                    mass += w / total;
                    kept += 1;
                    if mass >= *top_p {
                        break;
                    }
                }
                p.truncate(kept);
                let sum: f64 = p.iter().map(|x| x.1).sum();
                let mut u = rng::uniform(rng) * sum;
                for &(id, w) in &p {
                    if u < w {
                        return id;
                    }
                    u -= w;
                }
                p[p.len() - 1].0
            }
        }
    }
}

/// Index of the largest value (ties: the lowest index).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_nucleus() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        assert!(Sampler::new(-1.0, 1.0, 0).is_err());
        assert!(Sampler::new(1.0, 0.0, 0).is_err());
        assert!(matches!(Sampler::new(0.0, 0.9, 0), Ok(Sampler::Greedy)));
        // top_p = 0.5 keeps only the 0.6-probability token.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(1.0, 0.5, 3).unwrap();
        assert!((0..50).all(|_| s.next_token(&logits) == 0));
        // top_p = 1: all three tokens appear, in about their proportions.
        let mut s = Sampler::new(1.0, 1.0, 3).unwrap();
        let mut n = [0usize; 3];
        (0..3000).for_each(|_| n[s.next_token(&logits) as usize] += 1);
        assert!(
            n[0] > 1600 && n[0] < 2000 && n[2] > 200 && n[2] < 400,
            "{n:?}"
        );
    }
}

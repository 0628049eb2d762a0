//! The exact per-token selector: for one token at one layer, every
//! reachable subset of at most `k` experts is a point (latency \[s\], kept
//! weight); the ones not dominated by another (no other is at least as fast
//! *and* keeps at least as much weight) form a [`Staircase`]. Every exact
//! question is a scan of it:
//!
//! * **primal** ([`Staircase::min_latency`]): the fastest subset keeping at
//!   least a fraction ρ of the plain top-k router weight;
//! * **dual** ([`Staircase::max_weight`]): the subset keeping the most weight
//!   within a latency budget;
//! * **Lagrangian** ([`Staircase::min_lagrangian`]): the subset minimising
//!   `latency − λ · kept`; summed over tokens, sweeping λ traces the exact
//!   frontier of *mean* latency against *mean* kept weight (no per-token
//!   policy can lie below it, see [`super`]).
//!
//! Kept weight of a subset `S` is `Σ_{q∈S} p_q / Σ_{q∈top-k} p_q` (router
//! probabilities `p`), in `[0, 1]` since `|S| ≤ k`: an expert outside the
//! top-k may replace a slow one and keeps its own weight.
//!
//! Two exact ways to build the staircase:
//!
//! * [`Staircase::from_max_latency`] when a subset's latency is the slowest
//!   member's (eq. 7 with fixed per-device bandwidth): for each latency
//!   threshold `T` (ascending) the best subset within `T` is the `k`
//!   heaviest experts no slower than `T`, so the staircase has at most `n`
//!   steps and costs `O(n log n + n·k)` for `n` candidates, exact for any `n`.
//! * [`Staircase::from_subsets`] for any other subset latency (the joint
//!   bandwidth allocation, where a set's latency depends on who shares the
//!   band): exhaustive over the subsets of at most `k` of the given
//!   candidates (for 8 experts and k = 2: 36 subsets).
//!
//! The caller picks the candidates: the `k'` heaviest reachable experts
//! ([`super::FrontierConfig::k_prime`]).

/// One reachable expert: index, kept weight (its router probability over the
/// plain top-k's), latency \[s\] (finite).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Expert (= device) index.
    pub expert: usize,
    /// Router probability over the plain top-k's sum.
    pub weight: f64,
    /// Latency of the expert's device for this token \[s\] (eq. 6).
    pub latency_s: f64,
}

/// One non-dominated subset: its latency \[s\], kept weight, and members
/// (a range of [`Staircase::members`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The subset's token latency \[s\].
    pub latency_s: f64,
    /// The subset's kept weight.
    pub weight: f64,
    start: usize,
    len: usize,
}

/// Relative slack on weight comparisons, so that rounding in the sums
/// (ρ = 1 against the top-k's own sum) never flips a decision.
pub const WEIGHT_TOL: f64 = 1e-12;

/// The non-dominated subsets of one token, fastest first: latencies and
/// weights both strictly increase along it. Reused across tokens (no
/// allocation once warm).
#[derive(Debug, Clone, Default)]
pub struct Staircase {
    steps: Vec<Step>,
    members: Vec<usize>,
    scratch: Vec<(f64, f64, usize, usize)>,
    order: Vec<usize>,
    best: Vec<usize>,
}

impl Staircase {
    /// The steps, fastest (and lightest) first.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The experts of `step`, in descending router weight.
    pub fn members(&self, step: &Step) -> &[usize] {
        &self.members[step.start..step.start + step.len]
    }

    fn push_step(&mut self, latency_s: f64, weight: f64, experts: &[usize]) {
        if let Some(last) = self.steps.last() {
            if weight <= last.weight {
                return; // dominated: no more weight for more latency
            }
            if latency_s <= last.latency_s {
                // Same latency (ties), more weight: replaces the last step.
                self.steps.pop();
            }
        }
        let start = self.members.len();
        self.members.extend_from_slice(experts);
        self.steps.push(Step {
            latency_s,
            weight,
            start,
            len: experts.len(),
        });
    }

    /// Builds the staircase for max-type subset latency (eq. 7: the slowest
    /// member). `cands`: the reachable experts in descending weight (ties as
    /// the router ranks them). Exact over every subset of at most `k`.
    pub fn from_max_latency(&mut self, cands: &[Candidate], k: usize) {
        self.steps.clear();
        self.members.clear();
        self.order.clear();
        self.order.extend(0..cands.len());
        // Ascending latency; ties: heavier first (so the threshold's set is
        // complete when its last member arrives).
        self.order.sort_by(|&a, &b| {
            cands[a]
                .latency_s
                .total_cmp(&cands[b].latency_s)
                .then(a.cmp(&b))
        });
        let mut best = std::mem::take(&mut self.best); // candidate indices, by weight rank
        best.clear();
        let mut experts: Vec<usize> = Vec::with_capacity(k);
        let mut i = 0;
        while i < self.order.len() {
            let t = cands[self.order[i]].latency_s;
            // Admit every candidate at this latency.
            while i < self.order.len() && cands[self.order[i]].latency_s == t {
                let c = self.order[i];
                let pos = best.partition_point(|&b| b < c);
                best.insert(pos, c);
                best.truncate(k);
                i += 1;
            }
            let weight: f64 = best.iter().map(|&c| cands[c].weight).sum();
            let lat = best.iter().map(|&c| cands[c].latency_s).fold(0.0, f64::max);
            experts.clear();
            experts.extend(best.iter().map(|&c| cands[c].expert));
            self.push_step(lat, weight, &experts);
        }
        self.best = best;
    }

    /// Builds the staircase exhaustively: every non-empty subset of at most
    /// `k` of `cands` (at most 63 candidates), its latency from
    /// `latency_of(experts)` (experts in `cands` order). Exact over those
    /// subsets for any subset latency.
    pub fn from_subsets<E>(
        &mut self,
        cands: &[Candidate],
        k: usize,
        mut latency_of: impl FnMut(&[usize]) -> Result<f64, E>,
    ) -> Result<(), E> {
        self.steps.clear();
        self.members.clear();
        self.scratch.clear();
        let m = cands.len().min(63);
        let mut experts: Vec<usize> = Vec::with_capacity(k);
        let mut all: Vec<(f64, f64, u64)> = Vec::new();
        for mask in 1u64..(1u64 << m) {
            if mask.count_ones() as usize > k {
                continue;
            }
            experts.clear();
            let mut weight = 0.0;
            for (c, cand) in cands.iter().enumerate().take(m) {
                if mask >> c & 1 == 1 {
                    experts.push(cand.expert);
                    weight += cand.weight;
                }
            }
            all.push((latency_of(&experts)?, weight, mask));
        }
        // Ascending latency; ties: heavier first, then the lower mask.
        all.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(b.1.total_cmp(&a.1))
                .then(a.2.cmp(&b.2))
        });
        for (lat, weight, mask) in all {
            experts.clear();
            for (c, cand) in cands.iter().enumerate().take(m) {
                if mask >> c & 1 == 1 {
                    experts.push(cand.expert);
                }
            }
            self.push_step(lat, weight, &experts);
        }
        Ok(())
    }

    /// Primal: the fastest step keeping at least `need` (kept-weight units);
    /// `(step, true)`. When no subset keeps that much (a top-k device is
    /// down), the heaviest step, `(step, false)`. `None` only when empty.
    pub fn min_latency(&self, need: f64) -> Option<(&Step, bool)> {
        let need = need * (1.0 - WEIGHT_TOL);
        match self.steps.iter().find(|s| s.weight >= need) {
            Some(s) => Some((s, true)),
            None => self.steps.last().map(|s| (s, false)),
        }
    }

    /// Dual: the heaviest step within `budget_s` \[s\]; `(step, true)`. When
    /// even the fastest expert exceeds the budget, the fastest step
    /// `(step, false)` (the token must be served). `None` only when empty.
    pub fn max_weight(&self, budget_s: f64) -> Option<(&Step, bool)> {
        match self.steps.iter().rev().find(|s| s.latency_s <= budget_s) {
            Some(s) => Some((s, true)),
            None => self.steps.first().map(|s| (s, false)),
        }
    }

    /// The step minimising `latency_s − λ·weight` (`λ` in seconds per unit of
    /// kept weight; ties: the faster). `λ = +∞`: the heaviest step.
    pub fn min_lagrangian(&self, lambda_s: f64) -> Option<&Step> {
        if lambda_s == f64::INFINITY {
            return self.steps.last();
        }
        let mut best: Option<(&Step, f64)> = None;
        for s in &self.steps {
            let v = s.latency_s - lambda_s * s.weight;
            if best.is_none_or(|(_, b)| v < b) {
                best = Some((s, v));
            }
        }
        best.map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over every subset of at most `k` candidates (for tests):
    /// the smallest max-latency keeping at least `need`, or `None`.
    fn brute_force_min_latency(cands: &[Candidate], k: usize, need: f64) -> Option<f64> {
        let m = cands.len();
        assert!(m < 64, "brute force is for small cases");
        let need = need * (1.0 - WEIGHT_TOL);
        let mut best: Option<f64> = None;
        for mask in 1u64..(1u64 << m) {
            if mask.count_ones() as usize > k {
                continue;
            }
            let (mut w, mut t) = (0.0, 0.0_f64);
            for (c, cand) in cands.iter().enumerate() {
                if mask >> c & 1 == 1 {
                    w += cand.weight;
                    t = t.max(cand.latency_s);
                }
            }
            if w >= need && best.is_none_or(|b| t < b) {
                best = Some(t);
            }
        }
        best
    }

    fn c(expert: usize, weight: f64, latency_s: f64) -> Candidate {
        Candidate {
            expert,
            weight,
            latency_s,
        }
    }

    #[test]
    fn hand_computed_case() {
        // Top-2 = {0, 1} (0.6 + 0.4 of the top-2 weight); expert 1 is slow,
        // expert 2 (0.3) is fast.
        let cands = [
            c(0, 0.6, 2e-3),
            c(1, 0.4, 9e-3),
            c(2, 0.3, 1e-3),
            c(3, 0.1, 1.5e-3),
        ];
        let mut s = Staircase::default();
        s.from_max_latency(&cands, 2);
        let got: Vec<(f64, f64, Vec<usize>)> = s
            .steps()
            .iter()
            .map(|st| (st.latency_s, st.weight, s.members(st).to_vec()))
            .collect();
        // T = 1 ms: {2}; 1.5 ms: {2, 3} 0.4; 2 ms: {0, 2} 0.9; 9 ms: {0, 1} 1.0.
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (1e-3, 0.3, vec![2]));
        assert_eq!(got[1].0, 1.5e-3);
        assert!((got[1].1 - 0.4).abs() < 1e-15);
        assert_eq!(got[1].2, vec![2, 3]);
        assert_eq!(got[2].0, 2e-3);
        assert!((got[2].1 - 0.9).abs() < 1e-15);
        assert_eq!(got[2].2, vec![0, 2]);
        assert_eq!(got[3], (9e-3, 1.0, vec![0, 1]));
        // ρ = 0.9 → {0, 2} at 2 ms; ρ = 1 → top-2 at 9 ms; ρ = 0.5 → 2 ms too.
        assert_eq!(s.min_latency(0.9).unwrap().0.latency_s, 2e-3);
        assert_eq!(s.min_latency(1.0).unwrap().0.latency_s, 9e-3);
        assert_eq!(s.min_latency(0.5).unwrap().0.latency_s, 2e-3);
        // Budget 5 ms → 0.9 kept; 0.5 ms → infeasible, the fastest.
        let (st, ok) = s.max_weight(5e-3).unwrap();
        assert!(ok && (st.weight - 0.9).abs() < 1e-15);
        let (st, ok) = s.max_weight(0.5e-3).unwrap();
        assert!(!ok && st.latency_s == 1e-3);
        // λ = 10 ms per unit weight: 1 − 3 = −2, 1.5 − 4 = −2.5, 2 − 9 = −7, 9 − 10 = −1 → {0, 2}.
        assert_eq!(s.min_lagrangian(10e-3).unwrap().latency_s, 2e-3);
        assert_eq!(s.min_lagrangian(0.0).unwrap().latency_s, 1e-3);
        assert_eq!(s.min_lagrangian(f64::INFINITY).unwrap().latency_s, 9e-3);
        // The exhaustive builder gives the same staircase.
        let mut e = Staircase::default();
        e.from_subsets(&cands, 2, |ex| -> Result<f64, ()> {
            Ok(ex
                .iter()
                .map(|&q| cands.iter().find(|x| x.expert == q).unwrap().latency_s)
                .fold(0.0, f64::max))
        })
        .unwrap();
        assert_eq!(e.steps().len(), 4);
        for (a, b) in e.steps().iter().zip(s.steps()) {
            assert_eq!(a.latency_s, b.latency_s);
            assert!((a.weight - b.weight).abs() < 1e-15);
        }
    }

    #[test]
    fn unreachable_top_k_makes_rho_one_infeasible() {
        // Expert 1 (weight 0.4) is down, so at most 0.6 + 0.3 can be kept.
        let cands = [c(0, 0.6, 2e-3), c(2, 0.3, 1e-3)];
        let mut s = Staircase::default();
        s.from_max_latency(&cands, 2);
        let (st, ok) = s.min_latency(1.0).unwrap();
        assert!(!ok);
        assert!((st.weight - 0.9).abs() < 1e-15);
        assert_eq!(brute_force_min_latency(&cands, 2, 1.0), None);
    }
}

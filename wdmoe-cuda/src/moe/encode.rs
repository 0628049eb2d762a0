//! Encodings of wdmoe-core's routing for the kernels: the per-token
//! policy and the per-expert token groups ([`route_tokens`]), the grouped
//! prefill's row/slot tables ([`RowTables`]), and the check of a
//! device-built plan against the groups ([`same_plan`]).
//!
//! Groups: `groups[q]` holds expert q's `(token, combine weight)` pairs in
//! token order (weights rounded to fp32, as the kernels use them).

use rayon::prelude::*;
use wdmoe_core::select::{select, Policy, Selection};

use crate::error::{shape, Error, Result};
use crate::plan::{PlanReport, MAX_SLOTS};

/// One token's routing decision (wdmoe-core's, up to [`MAX_SLOTS`] experts).
pub type TokenSelection = Selection<f64, MAX_SLOTS>;

/// Per-expert `(token, combine weight)` lists, tokens in order.
pub type Groups = Vec<Vec<(usize, f32)>>;

/// wdmoe-core's routing of one step.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The policy's decision per token.
    pub selections: Vec<TokenSelection>,
    /// Per-token layer latency (eq. 7) under the given latencies, in seconds.
    pub token_latency_s: Vec<f64>,
    /// The tokens of each expert.
    pub groups: Groups,
}

/// Latencies of token `t`: `latency_s` holds one value per expert (all
/// tokens) or `[tokens][experts]`.
pub fn latencies_for(latency_s: &[f64], t: usize, e: usize) -> &[f64] {
    if latency_s.len() == e {
        latency_s
    } else {
        &latency_s[t * e..(t + 1) * e]
    }
}

/// wdmoe-core's `select` for every token of `logits` (`[tokens][e]`) with
/// `latency_s` (per expert, or `[tokens][e]`), and the per-expert groups.
/// Large steps (>= 256 tokens) run the tokens in parallel; the result does
/// not depend on it. At most [`MAX_SLOTS`] experts.
pub fn route_tokens(
    logits: &[f32],
    tokens: usize,
    e: usize,
    policy: &Policy<f64>,
    latency_s: &[f64],
) -> Result<Routing> {
    const OP: &str = "route_tokens";
    if e == 0 || e > MAX_SLOTS || logits.len() < tokens * e {
        return Err(shape(
            OP,
            format!(
                "{} logits for {tokens} x {e} (1..={MAX_SLOTS} experts)",
                logits.len()
            ),
        ));
    }
    if latency_s.len() != e && latency_s.len() != tokens * e {
        return Err(shape(
            OP,
            format!(
                "latency_s has {} values: expected {e} (per expert) or {tokens} x {e}",
                latency_s.len()
            ),
        ));
    }
    // A TokenSelection holds fixed-capacity arrays for up to 64 experts
    // (about 1.5 KB): each is written once, in place, by the parallel
    // collect, and moved with its Vec afterwards, never copied one by one.
    let one = |t: usize| -> Result<TokenSelection> {
        let mut row = [0.0f64; MAX_SLOTS];
        for (r, &v) in row.iter_mut().zip(&logits[t * e..(t + 1) * e]) {
            *r = v as f64;
        }
        select(policy, &row[..e], latencies_for(latency_s, t, e)).map_err(Error::Policy)
    };
    let latency = |(t, sel): (usize, &TokenSelection)| -> Result<f64> {
        sel.token_latency_s(latencies_for(latency_s, t, e))
            .map_err(Error::Policy)
    };
    let (selections, token_latency_s) = if tokens >= 256 {
        let s: Vec<TokenSelection> = (0..tokens)
            .into_par_iter()
            .with_min_len(64)
            .map(one)
            .collect::<Result<_>>()?;
        let l: Vec<f64> = s
            .par_iter()
            .enumerate()
            .with_min_len(64)
            .map(latency)
            .collect::<Result<_>>()?;
        (s, l)
    } else {
        let s: Vec<TokenSelection> = (0..tokens).map(one).collect::<Result<_>>()?;
        let l: Vec<f64> = s.iter().enumerate().map(latency).collect::<Result<_>>()?;
        (s, l)
    };
    let mut groups: Groups = vec![Vec::new(); e];
    for (t, sel) in selections.iter().enumerate() {
        for (&q, &w) in sel.experts().iter().zip(sel.weights()) {
            groups[q].push((t, w as f32));
        }
    }
    let r = Routing {
        selections,
        token_latency_s,
        groups,
    };
    Ok(r)
}

/// The grouped prefill's encoding of the groups: the token of each gathered
/// row in expert order (`idx`), and per token `t` and its `j`-th expert the
/// row of that expert's output (`slot[t * experts + j]`, -1: none) and its
/// combine weight (`wts`, same index); `counts[q]`: rows of expert q.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowTables {
    /// Token of each row, rows in expert order.
    pub idx: Vec<i32>,
    /// `[tokens][experts]`: row of token t's j-th expert, -1 if none.
    pub slot: Vec<i32>,
    /// `[tokens][experts]`: its combine weight (0 if none).
    pub wts: Vec<f32>,
    /// Rows per expert.
    pub counts: Vec<usize>,
}

impl RowTables {
    /// Encodes `groups` (one per expert) for `tokens` tokens; an error if a
    /// token index is out of range or a token has more entries than experts.
    pub fn new(tokens: usize, groups: &[Vec<(usize, f32)>]) -> Result<RowTables> {
        const OP: &str = "RowTables::new";
        let e = groups.len();
        let rows: usize = groups.iter().map(Vec::len).sum();
        let mut t = RowTables {
            idx: Vec::with_capacity(rows),
            slot: vec![-1; tokens * e],
            wts: vec![0.0; tokens * e],
            counts: groups.iter().map(Vec::len).collect(),
        };
        let mut used = vec![0usize; tokens];
        for (q, group) in groups.iter().enumerate() {
            for &(tok, w) in group {
                if tok >= tokens || used[tok] >= e {
                    return Err(shape(
                        OP,
                        format!("expert {q}: token {tok} of {tokens} (or more than {e} experts)"),
                    ));
                }
                let j = tok * e + used[tok];
                t.slot[j] = t.idx.len() as i32;
                t.wts[j] = w;
                used[tok] += 1;
                t.idx.push(tok as i32);
            }
        }
        Ok(t)
    }

    /// Rows in all.
    pub fn rows(&self) -> usize {
        self.idx.len()
    }
}

/// Whether the device's plan is wdmoe-core's: the same experts in the same
/// (expert) order, the same tokens, bit-identical fp32 weights (the device
/// port computes the same f64 bits as wdmoe-core, see kernels/router.cu).
pub fn same_plan(report: &PlanReport, groups: &[Vec<(usize, f32)>]) -> bool {
    if report.failed_token.is_some() {
        return false;
    }
    let mut slots = report.slots.iter();
    for (q, g) in groups.iter().enumerate() {
        if g.is_empty() {
            continue;
        }
        let Some(s) = slots.next() else {
            return false;
        };
        if s.expert != q || s.tokens.len() != g.len() {
            return false;
        }
        for (&(ta, wa), &(tb, wb)) in s.tokens.iter().zip(g) {
            if ta != tb || wa.to_bits() != wb.to_bits() {
                return false;
            }
        }
    }
    slots.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedSlot;

    #[test]
    fn route_tokens_groups_wdmoe_core_selections_in_token_order() {
        let policy = Policy::new(2, 0.0, 1).unwrap();
        // 3 tokens, 3 experts: top-2 of each row.
        let logits = [2.0f32, 1.0, 0.0, 0.0, 1.0, 2.0, 1.0, 2.0, 0.0];
        let r = route_tokens(&logits, 3, 3, &policy, &[0.01; 3]).unwrap();
        let experts: Vec<Vec<usize>> = r.selections.iter().map(|s| s.experts().to_vec()).collect();
        assert_eq!(experts, vec![vec![0, 1], vec![2, 1], vec![1, 0]]);
        let toks: Vec<Vec<usize>> = r
            .groups
            .iter()
            .map(|g| g.iter().map(|p| p.0).collect())
            .collect();
        assert_eq!(toks, vec![vec![0, 2], vec![0, 1, 2], vec![1]]);
        let w = r.selections[0].weights()[0] as f32;
        assert_eq!(r.groups[0][0].1.to_bits(), w.to_bits());
        assert_eq!(r.token_latency_s.len(), 3);
        // NaN logits: the policy's error, typed.
        assert!(matches!(
            route_tokens(&[f32::NAN, 0.0, 0.0], 1, 3, &policy, &[0.01; 3]),
            Err(Error::Policy(_))
        ));
        assert!(matches!(
            route_tokens(&logits, 3, 3, &policy, &[0.01; 2]),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn row_tables_put_rows_in_expert_order() {
        // 3 tokens, 3 experts: token 0 -> experts 0 and 2, token 1 -> 2,
        // token 2 -> 0 and 1.
        let groups = vec![
            vec![(0, 0.6), (2, 0.5)],
            vec![(2, 0.5)],
            vec![(0, 0.4), (1, 1.0)],
        ];
        let t = RowTables::new(3, &groups).unwrap();
        assert_eq!(t.idx, vec![0, 2, 2, 0, 1]);
        assert_eq!(t.counts, vec![2, 1, 2]);
        assert_eq!(t.slot, vec![0, 3, -1, 4, -1, -1, 1, 2, -1]);
        assert_eq!(t.wts, vec![0.6, 0.4, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0]);
        assert!(RowTables::new(2, &groups).is_err(), "token 2 of 2");
        let too_many = vec![vec![(0, 0.5)], vec![(0, 0.5)], vec![(0, 0.5), (0, 0.1)]];
        assert!(RowTables::new(1, &too_many).is_err());
    }

    #[test]
    fn same_plan_requires_identical_experts_tokens_and_weight_bits() {
        let groups = vec![vec![(0, 0.6f32)], vec![], vec![(0, 0.4f32), (1, 1.0)]];
        let slot = |expert, tokens: &[(usize, f32)]| PlannedSlot {
            expert,
            tokens: tokens.to_vec(),
        };
        let good = PlanReport {
            failed_token: None,
            slots: vec![slot(0, &[(0, 0.6)]), slot(2, &[(0, 0.4), (1, 1.0)])],
        };
        assert!(same_plan(&good, &groups));
        let mut r = good.clone();
        r.slots[1].expert = 1;
        assert!(!same_plan(&r, &groups));
        let mut r = good.clone();
        r.slots[1].tokens[1].0 = 2;
        assert!(!same_plan(&r, &groups));
        let mut r = good.clone();
        r.slots[0].tokens[0].1 = f32::from_bits(0.6f32.to_bits() + 1);
        assert!(!same_plan(&r, &groups), "one ulp is a difference");
        let mut r = good.clone();
        r.slots.push(slot(3, &[(1, 0.5)]));
        assert!(!same_plan(&r, &groups));
        let mut r = good.clone();
        r.slots.pop();
        assert!(!same_plan(&r, &groups));
        let failed = PlanReport {
            failed_token: Some(0),
            slots: Vec::new(),
        };
        assert!(!same_plan(&failed, &groups));
        assert!(!same_plan(&failed, &[vec![], vec![]]));
    }
}

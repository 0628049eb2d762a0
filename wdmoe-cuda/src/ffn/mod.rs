//! Expert FFN for decode, y = W2 (silu(W1 x) * (W3 x)), fp16 weights and
//! activations, fp32 accumulation, on the memory-bound path (any token count;
//! fastest for 1-16 tokens, larger counts run in chunks of 16).

mod config;
mod launch;
mod slots;
mod weights;

pub use config::*;
pub(crate) use launch::*;
pub use slots::{ffn_decode_slot, ffn_decode_slots, gate_up_prefetch_ranges, slots_merge};
pub use weights::*;

use cust::memory::DeviceSlice;
use half::f16;

use crate::error::{check_align, shape, Result};
use crate::plan::TokList;
use crate::runtime::{addr, Gpu};

pub(crate) fn check_weights(op: &'static str, w: &ExpertWeights, ws: &FfnWorkspace) -> Result<()> {
    if ws.m != w.m || ws.m_h != w.m_h {
        return Err(shape(
            op,
            format!(
                "workspace for ({}, {}), expert is ({}, {})",
                ws.m, ws.m_h, w.m, w.m_h
            ),
        ));
    }
    Ok(())
}

/// y = W2 (silu(W1 x) * (W3 x)) for `tokens` rows of x (`[tokens][m]`,
/// row-major fp16), written to `out` (`[tokens][m]`). Any token count;
/// launches cover 16 tokens at a time.
pub fn ffn_decode(
    gpu: &Gpu,
    w: &ExpertWeights,
    x: &DeviceSlice<f16>,
    tokens: usize,
    out: &mut DeviceSlice<f16>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    const OP: &str = "ffn_decode";
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    if tokens == 0 {
        return Err(shape(OP, "tokens = 0".into()));
    }
    if x.len() < tokens * m || out.len() < tokens * m {
        return Err(shape(
            OP,
            format!(
                "x has {} and out {} elements, {tokens} tokens x m={m} need {}",
                x.len(),
                out.len(),
                tokens * m
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out", addr(out), 4)?;
    let mut t0 = 0;
    while t0 < tokens {
        let t = (tokens - t0).min(MAX_DECODE_TOKENS);
        let h = addr(&ws.h);
        let x_t0 = addr(x) + (t0 * m * 2) as u64;
        let gate_up = Gemv::gate_up(w, x_t0, TokList::default(), t, h);
        launch_gemv(gpu, ws, gate_up, cfg.pick(t).0)?;
        let dest = Dest::Plain {
            out: addr(out) + (t0 * m * 2) as u64,
            ldo: m as i32,
        };
        let down = Gemv::down(w, h, TokList::default(), t, dest);
        launch_gemv(gpu, ws, down, cfg.pick(t).1)?;
        t0 += t;
    }
    Ok(())
}

/// Token groups of one MoE step: for each group (expert), the token rows it
/// serves and their combine weights, validated (`token < n_tokens`, at most
/// once per group, finite weights). Host-side only: each decode launch gets
/// its (up to 16) tokens by value in its kernel parameters, so there is no
/// device buffer and no copy on the step's critical path.
#[derive(Debug, Clone, Default)]
pub struct RoutingPlan {
    pub(crate) entries: Vec<(i32, f32)>,
    pub(crate) groups: Vec<(usize, usize)>, // (offset, len)
    pub(crate) n_tokens: usize,
}

impl RoutingPlan {
    /// `groups[g]` lists `(token, weight)` pairs of group g.
    pub fn new(n_tokens: usize, groups: &[Vec<(usize, f32)>]) -> Result<RoutingPlan> {
        let mut p = RoutingPlan::default();
        p.set(n_tokens, groups)?;
        Ok(p)
    }

    /// Replaces the groups (validated as in [`RoutingPlan::new`]); on error
    /// the plan is left empty.
    pub fn set(&mut self, n_tokens: usize, groups: &[Vec<(usize, f32)>]) -> Result<()> {
        const OP: &str = "RoutingPlan::set";
        self.entries.clear();
        self.groups.clear();
        self.n_tokens = 0;
        let mut seen = vec![usize::MAX; n_tokens];
        for (gi, g) in groups.iter().enumerate() {
            self.groups.push((self.entries.len(), g.len()));
            for &(t, wt) in g {
                if t >= n_tokens || t > i32::MAX as usize || !wt.is_finite() {
                    self.groups.clear();
                    return Err(shape(
                        OP,
                        format!("group {gi}: token {t} (of {n_tokens}), weight {wt}"),
                    ));
                }
                // The combine epilogue adds without atomics: a token at most once per group.
                if seen[t] == gi {
                    self.groups.clear();
                    return Err(shape(OP, format!("group {gi}: token {t} listed twice")));
                }
                seen[t] = gi;
                self.entries.push((t as i32, wt));
            }
        }
        self.n_tokens = n_tokens;
        Ok(())
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Tokens in group `g`.
    pub fn group_len(&self, g: usize) -> usize {
        self.groups.get(g).map_or(0, |s| s.1)
    }
}

/// The MoE combine for one expert: for the tokens of group `group` of
/// `plan`, rows of `x` (`[n_tokens][m]`), computes the expert FFN and adds
/// `weight * y` into `out_acc` (`[n_tokens][m]`, fp32) at the same rows.
/// Launches on the stream in order, so experts applied one after another
/// accumulate without races. An empty group launches nothing.
#[allow(clippy::too_many_arguments)]
pub fn ffn_decode_combine(
    gpu: &Gpu,
    w: &ExpertWeights,
    x: &DeviceSlice<f16>,
    plan: &RoutingPlan,
    group: usize,
    out_acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    const OP: &str = "ffn_decode_combine";
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    let n = plan.n_tokens;
    let Some(&(off, len)) = plan.groups.get(group) else {
        return Err(shape(OP, format!("group {group} of {}", plan.groups.len())));
    };
    if x.len() < n * m || out_acc.len() < n * m {
        return Err(shape(
            OP,
            format!(
                "x has {} and out_acc {} elements, plan has {n} tokens x m={m}",
                x.len(),
                out_acc.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out_acc", addr(out_acc), 4)?;
    let mut t0 = 0;
    while t0 < len {
        let t = (len - t0).min(MAX_DECODE_TOKENS);
        let mut toks = TokList {
            gather: 1,
            scatter: 1,
            ..TokList::default()
        };
        for (i, &(tok, wt)) in plan.entries[off + t0..off + t0 + t].iter().enumerate() {
            toks.idx[i] = tok;
            toks.w[i] = wt;
        }
        let h = addr(&ws.h);
        launch_gemv(
            gpu,
            ws,
            Gemv::gate_up(w, addr(x), toks, t, h),
            cfg.pick(t).0,
        )?;
        // h rows are compact (no gather); the combine scatters.
        let dest = Dest::Combine {
            acc: addr(out_acc),
            ldo: m as i32,
        };
        let down = Gemv::down(w, h, TokList { gather: 0, ..toks }, t, dest);
        launch_gemv(gpu, ws, down, cfg.pick(t).1)?;
        t0 += t;
    }
    Ok(())
}

/// Which kernel of the FFN [`ffn_stage`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// h = silu(W1 x) * (W3 x) into the workspace.
    GateUp,
    /// out = W2 h from the workspace.
    Down,
}

/// One kernel of [`ffn_decode`] alone, for up to 16 tokens (benchmarks and
/// tuning): `GateUp` reads x and writes the workspace's h, `Down` reads h and
/// writes `out`.
#[allow(clippy::too_many_arguments)]
pub fn ffn_stage(
    gpu: &Gpu,
    w: &ExpertWeights,
    x: &DeviceSlice<f16>,
    tokens: usize,
    out: &mut DeviceSlice<f16>,
    ws: &mut FfnWorkspace,
    cfg: &KernelConfig,
    stage: Stage,
) -> Result<()> {
    const OP: &str = "ffn_stage";
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    if tokens == 0 || tokens > MAX_DECODE_TOKENS || x.len() < tokens * m || out.len() < tokens * m {
        return Err(shape(
            OP,
            format!(
                "tokens={tokens} (1..=16), x {}, out {}, m={m}",
                x.len(),
                out.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out", addr(out), 4)?;
    let h = addr(&ws.h);
    let g = match stage {
        Stage::GateUp => Gemv::gate_up(w, addr(x), TokList::default(), tokens, h),
        Stage::Down => {
            let dest = Dest::Plain {
                out: addr(out),
                ldo: m as i32,
            };
            Gemv::down(w, h, TokList::default(), tokens, dest)
        }
    };
    launch_gemv(gpu, ws, g, cfg)
}

/// `y[i][r] += Σ_k W[r][k] · x[i][k]` for `t` ≤ [`MAX_DECODE_TOKENS`]
/// rows of `x` (`[t][k]` fp16, 16-byte aligned) through the decode GEMV
/// kernels on a [`PackedMatrix`] (the model's attention projections at
/// decode): fp32 `y` with row stride `ldy` ≥ rows of W, added to (the
/// kernels' combine epilogue without scatter or weights). `ws` any
/// workspace for matrices of at least W's rows; `cfg` a launch shape
/// ([`DecodeConfig::auto_layout`] with [`DownLayout::Tiles16`] gives
/// W's: its `down` and `down_wide`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv_packed_acc(
    gpu: &Gpu,
    w: &PackedMatrix,
    x: &DeviceSlice<f16>,
    t: usize,
    y: &mut DeviceSlice<f32>,
    ldy: usize,
    ws: &mut FfnWorkspace,
    cfg: &KernelConfig,
) -> Result<()> {
    const OP: &str = "gemv_packed_acc";
    cfg.check(OP)?;
    let (n, k) = (w.rows, w.cols);
    if t == 0 || t > MAX_DECODE_TOKENS || ldy < n {
        return Err(shape(
            OP,
            format!("T={t} (1..={MAX_DECODE_TOKENS}), ldy={ldy} >= {n}"),
        ));
    }
    if x.len() < t * k || y.len() < (t - 1) * ldy + n {
        return Err(shape(
            OP,
            format!(
                "W {n} x {k}, T={t}: x has {}, y {} elements",
                x.len(),
                y.len()
            ),
        ));
    }
    if n / 16 > ws.counters.len() {
        return Err(shape(
            OP,
            format!(
                "W has {n} rows, the workspace holds {} row tiles",
                ws.counters.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "y", addr(y), 4)?;
    let g = Gemv {
        w: addr(&w.buf),
        k_major: true,
        kind: Kind::Plain,
        x: addr(x),
        ldx: k as i32,
        toks: TokList::default(),
        t,
        k,
        n,
        dest: Dest::Combine {
            acc: addr(y),
            ldo: ldy as i32,
        },
    };
    let name = with_pre2(gpu, kernel_names(g.kind, g.t, cfg.unroll).0);
    launch_gemv_named(gpu, ws, g, cfg, name)
}

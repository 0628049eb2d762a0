//! Expert FFN for decode, y = W2 (silu(W1 x) * (W3 x)), fp16 weights and
//! activations, fp32 accumulation, on the memory-bound path (any token count;
//! fastest for 1-16 tokens, larger counts run in chunks of 16).

mod config;
mod launch;
mod weights;

pub use config::*;
pub(crate) use launch::*;
pub use weights::*;

use cust::function::GridSize;
use cust::memory::DeviceSlice;
use half::f16;

use crate::error::{check_align, shape, Result};
use crate::launch::Shape;
use crate::plan::{DevicePlan, TokList};
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

/// The launch shapes of the slot kernels for plans of `n_tokens` tokens,
/// and whether they are the dual (one or two n-tiles per slot) kernels.
/// 9-16 tokens: a slot rarely gets more than 8 (top-k spreads them over the
/// experts), so the 1-8-token shapes with a per-slot choice of one or two
/// n-tiles (when those shapes have one row unit per warp).
pub(crate) fn slot_configs(
    cfg: &DecodeConfig,
    n_tokens: usize,
) -> (bool, &KernelConfig, &KernelConfig) {
    let dual = n_tokens > 8 && cfg.gate_up.rows == 1 && cfg.down.rows == 1;
    if dual {
        (true, &cfg.gate_up, &cfg.down)
    } else {
        let (g, d) = cfg.pick(n_tokens);
        (false, g, d)
    }
}

/// The byte ranges `(offset, length)` of an expert's packed W1|W3 that the
/// first slot kernel of a device plan of `n_tokens` tokens reads first: the
/// start of each warp's k range (k-major packing: all row tiles of a k-tile
/// are contiguous), `bytes` split evenly among them (at most 8 ranges, each
/// within its warp's range). Empty for row-major packing or `bytes` 0. For
/// [`crate::Router::route_plan`]'s speculative prefetch.
pub fn gate_up_prefetch_ranges(
    w: &ExpertWeights,
    cfg: &DecodeConfig,
    n_tokens: usize,
    bytes: usize,
) -> Vec<(u64, u64)> {
    if !w.k_major || bytes == 0 || n_tokens == 0 {
        return Vec::new();
    }
    let (_, g, _) = slot_configs(cfg, n_tokens);
    let geo = geometry(Kind::Gated, n_tokens, true, w.m, w.m_h, g);
    warp_start_ranges(
        geo.k_tiles as i64,
        geo.splits as i64,
        g.warps as i64,
        (geo.kt_stride * 16) as u64,
        bytes,
    )
}

/// `bytes` split evenly over the starts of the warps' k ranges (`k_tiles`
/// over `splits` blocks of `warps` warps, as the kernels divide them), as
/// byte ranges of a k-major packing with `tile_bytes` per k-tile (all row
/// tiles), each within its warp's range; at most 8.
pub(crate) fn warp_start_ranges(
    k_tiles: i64,
    splits: i64,
    warps: i64,
    tile_bytes: u64,
    bytes: usize,
) -> Vec<(u64, u64)> {
    let mut starts: Vec<(i64, i64)> = Vec::new();
    for sp in 0..splits {
        let kb0 = k_tiles * sp / splits;
        let kb1 = k_tiles * (sp + 1) / splits;
        for wp in 0..warps {
            let kw0 = kb0 + (kb1 - kb0) * wp / warps;
            let kw1 = kb0 + (kb1 - kb0) * (wp + 1) / warps;
            if kw1 > kw0 {
                starts.push((kw0, kw1));
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts.truncate(crate::plan::MAX_PREFETCH_RANGES);
    let per = (bytes / starts.len().max(1)) as u64 / 16 * 16;
    starts
        .into_iter()
        .map(|(k0, k1)| {
            let off = k0 as u64 * tile_bytes;
            (off, per.min((k1 - k0) as u64 * tile_bytes))
        })
        .filter(|r| r.1 > 0)
        .collect()
}

/// Slot `slot` of a device-built plan ([`crate::Router::route_plan`]): the
/// expert FFN of whichever expert the plan put there, for its tokens (rows
/// of `x`, `[n_tokens][m]`), adding `weight * y` into `out_acc`
/// (`[n_tokens][m]`, fp32). Both kernels are launched whether or not the
/// slot is used (an unused slot's kernels exit at once), so a whole step
/// can be enqueued before the plan exists (each kernel waits for the plan's
/// ready flag of this step before reading its slot). `experts` must be
/// those `plan` was built for; `x` and `out_acc`
/// hold at least the plan's token count of rows, and launch shapes are
/// chosen for that many tokens per slot (the most a slot can get).
#[allow(clippy::too_many_arguments)]
pub fn ffn_decode_slot(
    gpu: &Gpu,
    experts: &[ExpertWeights],
    plan: &DevicePlan,
    slot: usize,
    x: &DeviceSlice<f16>,
    out_acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    launch_slots(gpu, experts, plan, slot..slot + 1, x, out_acc, ws, cfg)
}

/// Every slot of a device-built plan, as [`ffn_decode_slot`] for each, in
/// two launches (gate/up of all slots, then down of all slots: grid z =
/// slot) where [`slots_merge`] allows, else two launches per slot. The
/// slots' down kernels then add into `out_acc` concurrently (atomically:
/// with more than two slots per token the order of the fp32 additions, and
/// so the last bits of a sum, may differ between runs).
#[allow(clippy::too_many_arguments)]
pub fn ffn_decode_slots(
    gpu: &Gpu,
    experts: &[ExpertWeights],
    plan: &DevicePlan,
    x: &DeviceSlice<f16>,
    out_acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    if slots_merge(cfg, plan.tokens, plan.n_slots) {
        return launch_slots(gpu, experts, plan, 0..plan.n_slots, x, out_acc, ws, cfg);
    }
    for s in 0..plan.n_slots {
        launch_slots(gpu, experts, plan, s..s + 1, x, out_acc, ws, cfg)?;
    }
    Ok(())
}

/// The gate/up slot kernel of 1-token plans that streams the slot's
/// candidate expert while the router's policy runs (kernels/ffn_decode.cu,
/// `slot_gated_spec_*`; the router publishes the candidates), for the
/// plain kernel `name`; `WDMOE_SLOT_SPEC=0` (read once: comparisons) keeps
/// the kernel that waits for the plan.
fn spec_gate(kind: Kind, n_tokens: usize, name: &'static str) -> &'static str {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if kind != Kind::Gated
        || n_tokens != 1
        || *OFF.get_or_init(|| std::env::var("WDMOE_SLOT_SPEC").is_ok_and(|v| v == "0"))
    {
        return name;
    }
    match name {
        "slot_gated_nt1_u4" => "slot_gated_spec_u4",
        "slot_gated_nt1_u8" => "slot_gated_spec_u8",
        other => other,
    }
}

/// Whether the `n_slots` slots of a plan of `n_tokens` tokens can share
/// their launches ([`ffn_decode_slots`]): every slot's h rows fit the
/// workspace (`n_tokens · n_slots` ≤ [`MAX_DECODE_TOKENS`]) and neither
/// kernel splits k (the split-K partial sums are per launch).
pub fn slots_merge(cfg: &DecodeConfig, n_tokens: usize, n_slots: usize) -> bool {
    let (dual, g, d) = slot_configs(cfg, n_tokens);
    n_slots > 1
        && !dual
        && n_tokens * n_slots <= MAX_DECODE_TOKENS
        && g.splits == 1
        && d.splits == 1
}

/// The two kernels of slots `slots` (one launch each, grid z = slot).
#[allow(clippy::too_many_arguments)]
fn launch_slots(
    gpu: &Gpu,
    experts: &[ExpertWeights],
    plan: &DevicePlan,
    slots: std::ops::Range<usize>,
    x: &DeviceSlice<f16>,
    out_acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    const OP: &str = "ffn_decode_slot";
    let n_tokens = plan.tokens;
    plan.check_experts(OP, experts)?;
    let w = &experts[0];
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    if slots.is_empty() || slots.end > plan.n_slots {
        return Err(shape(
            OP,
            format!("slots {slots:?} of a plan with {} slots", plan.n_slots),
        ));
    }
    let merged = slots.len() > 1;
    if merged && !slots_merge(cfg, n_tokens, slots.len()) {
        return Err(shape(
            OP,
            format!(
                "{} slots of {n_tokens} tokens cannot share a launch (cfg {cfg:?})",
                slots.len()
            ),
        ));
    }
    if n_tokens == 0
        || n_tokens > MAX_DECODE_TOKENS
        || x.len() < n_tokens * m
        || out_acc.len() < n_tokens * m
    {
        return Err(shape(
            OP,
            format!(
                "plan of {n_tokens} tokens (1..={MAX_DECODE_TOKENS}), x {}, out_acc {}, m={m}",
                x.len(),
                out_acc.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out_acc", addr(out_acc), 4)?;
    let (dual, gate_cfg, down_cfg) = slot_configs(cfg, n_tokens);
    let h = addr(&ws.h);
    for (kind, xin, ldx, k, n, dest, kcfg) in [
        (
            Kind::Gated,
            addr(x),
            m,
            m,
            w.m_h,
            Dest::Plain {
                out: h,
                ldo: w.m_h as i32,
            },
            gate_cfg,
        ),
        (
            w.down_kind(),
            h,
            w.m_h,
            w.m_h,
            m,
            Dest::Combine {
                acc: addr(out_acc),
                ldo: m as i32,
            },
            down_cfg,
        ),
    ] {
        let name = if dual {
            dual_name(kind, kcfg.unroll)
        } else {
            spec_gate(kind, n_tokens, kernel_names(kind, n_tokens, kcfg.unroll).1)
        };
        let geo = geometry(kind, n_tokens, w.k_major, k, n, kcfg);
        let (out, ldo, out_acc) = match dest {
            Dest::Plain { out, ldo } => (out, ldo, 0u64),
            Dest::Combine { acc, ldo } => (0u64, ldo, acc),
        };
        let params = SlotParams {
            plan: addr(&plan.slots),
            slot: slots.start as i32,
            seq: plan.seq,
            x: xin,
            ldx: ldx as i32,
            k_tiles: geo.k_tiles,
            rt_stride: geo.rt_stride,
            kt_stride: geo.kt_stride,
            splits: geo.splits,
            partial: addr(&ws.partial),
            counters: addr(&ws.counters),
            out,
            ldo,
            out_acc,
            n_rows: n as i32,
            zrows: if merged { n_tokens as i32 } else { 0 },
        };
        let grid = GridSize::xyz(geo.grid.x, geo.grid.y, slots.len() as u32);
        // SAFETY: the slot_* kernels take (const Slot* plan, int slot,
        // unsigned seq, const half* x, int ldx, int k_tiles, long long
        // rt_stride, long long kt_stride, int splits, float* partial,
        // unsigned* counters, half* out, int ldo, float* out_acc, int
        // n_rows, int zrows) = SlotParams. plan.slots holds MAX_SLOTS
        // slots, the ready-flag word, a pad word and the SpecPlan
        // (SPEC_WORDS) after them, and slots.end <= n_slots
        // (grid z = slots.len()); a used slot (written only by
        // router_policy) holds the addresses of one of `experts` (checked to
        // be the plan's, all of this geometry: same_packing), at most 16
        // tokens, each < n_tokens (the router's token count, <= the rows of
        // x and out_acc, checked); an unused slot has w13 = 0 and its
        // kernels only wait and exit. x, h and out_acc as in launch_gemv;
        // the workspace (partials, zeroed counters, h of 16 x m_h) is sized
        // for any KernelConfig (a merged launch: z · zrows + n_tokens <= 16
        // rows of h and no split-K, checked by slots_merge); `shared` as launch_gemv's for n_tokens (two
        // n-tiles above 8: enough for the dual kernels' larger branch, which
        // take the rows-1 shapes they were compiled for).
        unsafe {
            gpu.launch(
                &gpu.ffn,
                name,
                Shape::new(grid, geo.block).shared(geo.shared).pdl(true),
                params,
                || format!("slots {slots:?} k={k} n={n} n_tokens={n_tokens} cfg={kcfg:?}"),
            )?;
        }
    }
    Ok(())
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
    launch_gemv(gpu, ws, g, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_ranges_start_at_each_warps_k_range() {
        // Mixtral gate/up, 2 warps, no split: k-tiles 0 and 128.
        let r = warp_start_ranges(256, 1, 2, 1000, 8000);
        assert_eq!(r, vec![(0, 4000), (128_000, 4000)]);
        // Split 2 x 2 warps: starts 0, 64, 128, 192; clamped to a warp's range.
        let r = warp_start_ranges(256, 2, 2, 16, 1 << 20);
        assert_eq!(
            r,
            vec![
                (0, 1024),
                (64 * 16, 1024),
                (128 * 16, 1024),
                (192 * 16, 1024)
            ]
        );
        // More than 8 starts: the first 8; nothing to prefetch: empty.
        assert_eq!(warp_start_ranges(1024, 4, 8, 16, 1 << 20).len(), 8);
        assert!(warp_start_ranges(256, 1, 2, 16, 0).is_empty());
    }

    #[test]
    fn slot_configs_use_dual_kernels_above_8_tokens_with_row_units_of_1() {
        let k = |rows, unroll| KernelConfig {
            warps: 2,
            splits: 1,
            unroll,
            rows,
        };
        let cfg = DecodeConfig {
            gate_up: k(1, 4),
            down: k(1, 8),
            gate_up_wide: k(2, 2),
            down_wide: k(2, 2),
        };
        assert!(!slot_configs(&cfg, 8).0);
        let (dual, g, d) = slot_configs(&cfg, 9);
        assert!(dual);
        assert_eq!((g.rows, d.rows), (1, 1));
        let wide_only = DecodeConfig {
            gate_up: k(2, 2),
            ..cfg
        };
        let (dual, g, _) = slot_configs(&wide_only, 16);
        assert!(!dual);
        assert_eq!(g.rows, 2);
        assert_eq!(dual_name(Kind::Pair, 8), "slot_pair_dual_u8");
        assert_eq!(kernel_names(Kind::Gated, 1, 4).1, "slot_gated_nt1_u4");
    }
}

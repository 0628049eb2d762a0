//! The slot kernels' launches of the device-planned decode step: one plan
//! slot ([`ffn_decode_slot`]) or all of them ([`ffn_decode_slots`], two
//! launches where [`slots_merge`] allows), their launch shapes, the kernel
//! that streams a 1-token plan's candidate expert, and the byte ranges
//! router_policy may prefetch for the first of them.

use cust::function::GridSize;
use cust::memory::DeviceSlice;
use half::f16;

use super::launch::{dual_name, geometry, kernel_names, with_pre2, Dest, Kind, SlotParams};
use super::{
    check_weights, DecodeConfig, ExpertWeights, FfnWorkspace, KernelConfig, MAX_DECODE_TOKENS,
};
use crate::error::{check_align, shape, Result};
use crate::launch::Shape;
use crate::plan::DevicePlan;
use crate::runtime::{addr, Gpu};

/// The launch shapes of the slot kernels for plans of `n_tokens` tokens,
/// launched `n_slots` slots at a time (grid z = slot), and whether they are
/// the dual (one or two n-tiles per slot) kernels. 9-16 tokens: a slot
/// rarely gets more than 8 (top-k spreads them over the experts), so the
/// 1-8-token shapes with a per-slot choice of one or two n-tiles (when
/// those shapes have one row unit per warp).
///
/// Several slots in one launch: the gate/up kernel's warps per block are
/// divided by the slots (at least 1), so that the launch has about the
/// warps of one slot's launch. Its default shape was chosen so that one
/// slot's blocks are resident at once (Mixtral, 2 warps: 1,792 warps); two
/// slots of it took ~1.7 rounds of resident blocks, and in the whole
/// model's decode (top-2: every token's step is one launch of two slots)
/// the gate/up stream then ended ~9 µs a layer later: 1-warp blocks were
/// 0.16-0.23 ms per token faster in each of 6 in-call pairs on H200s
/// (runs H18, H19, H21), the MoE layer step alone 172 µs against 179 (H24);
/// for one expert alone 2 warps stay ~2 % faster (H20).
/// `WDMOE_MERGED_GATE_WARPS=0` (read once: comparisons) keeps the
/// one-slot shape.
pub(crate) fn slot_configs(
    cfg: &DecodeConfig,
    n_tokens: usize,
    n_slots: usize,
) -> (bool, KernelConfig, KernelConfig) {
    let dual = n_tokens > 8 && cfg.gate_up.rows == 1 && cfg.down.rows == 1;
    let (g, d) = if dual {
        (cfg.gate_up, cfg.down)
    } else {
        let (g, d) = cfg.pick(n_tokens);
        (*g, *d)
    };
    static DIVIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let g = if n_slots > 1 && crate::env::switch_once(&DIVIDE, "WDMOE_MERGED_GATE_WARPS", "0") {
        KernelConfig {
            warps: (g.warps / n_slots as u32).max(1),
            ..g
        }
    } else {
        g
    };
    (dual, g, d)
}

/// The byte ranges `(offset, length)` of an expert's packed W1|W3 that the
/// first slot kernel of a device plan of `n_tokens` tokens, launched
/// `n_slots` slots at a time (1: one slot per launch), reads first: the
/// start of each warp's k range (k-major packing: all row tiles of a k-tile
/// are contiguous), `bytes` split evenly among them (at most 8 ranges, each
/// within its warp's range). Empty for row-major packing or `bytes` 0. For
/// [`crate::Router::route_plan`]'s speculative prefetch.
pub fn gate_up_prefetch_ranges(
    w: &ExpertWeights,
    cfg: &DecodeConfig,
    n_tokens: usize,
    n_slots: usize,
    bytes: usize,
) -> Vec<(u64, u64)> {
    if !w.k_major || bytes == 0 || n_tokens == 0 {
        return Vec::new();
    }
    let (_, g, _) = slot_configs(cfg, n_tokens, n_slots);
    let geo = geometry(Kind::Gated, n_tokens, true, w.m, w.m_h, &g);
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
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if kind != Kind::Gated || n_tokens != 1 || !crate::env::switch_once(&ON, "WDMOE_SLOT_SPEC", "0")
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
    let (dual, g, d) = slot_configs(cfg, n_tokens, n_slots);
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
    let (dual, gate_cfg, down_cfg) = slot_configs(cfg, n_tokens, slots.len());
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
            with_pre2(
                gpu,
                spec_gate(kind, n_tokens, kernel_names(kind, n_tokens, kcfg.unroll).1),
            )
        };
        let geo = geometry(kind, n_tokens, w.k_major, k, n, &kcfg);
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

    /// An H200's facts, for the default shapes at Mixtral size.
    fn h200() -> crate::runtime::DeviceInfo {
        crate::runtime::DeviceInfo {
            name: "H200".into(),
            cc: (9, 0),
            sm_count: 132,
            l2_bytes: 60 << 20,
            cubin: true,
            unified_addressing: true,
        }
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
        assert!(!slot_configs(&cfg, 8, 1).0);
        let (dual, g, d) = slot_configs(&cfg, 9, 1);
        assert!(dual);
        assert_eq!((g.rows, d.rows), (1, 1));
        let wide_only = DecodeConfig {
            gate_up: k(2, 2),
            ..cfg
        };
        let (dual, g, _) = slot_configs(&wide_only, 16, 1);
        assert!(!dual);
        assert_eq!(g.rows, 2);
        assert_eq!(dual_name(Kind::Pair, 8), "slot_pair_dual_u8");
        assert_eq!(kernel_names(Kind::Gated, 1, 4).1, "slot_gated_nt1_u4");
    }

    /// The kernels a Mixtral decode step launches by default have their
    /// PRE = 2 variants: the attention projections' GEMV (8 warps, unroll
    /// 8, the model's shape) and the experts' down slot kernel (32-row
    /// tiles, unroll 4); the gate/up kernel streams before any wait and has
    /// none.
    #[test]
    fn default_decode_kernels_have_their_preload_variants() {
        use super::super::launch::pre2_variant;
        let info = h200();
        let cfg = DecodeConfig::auto_layout(&info, 4096, 14336, crate::DownLayout::Pairs32);
        let (_, g, d) = slot_configs(&cfg, 1, 2);
        let down = kernel_names(Kind::Pair, 1, d.unroll).1;
        assert_eq!(pre2_variant(down), Some("slot_pair_nt1_u4_p2"));
        let gate = spec_gate(Kind::Gated, 1, kernel_names(Kind::Gated, 1, g.unroll).1);
        assert_eq!(pre2_variant(gate), None);
        let proj = kernel_names(Kind::Plain, 1, 8).0;
        assert_eq!(pre2_variant(proj), Some("gemv_plain_nt1_u8_p2"));
        assert_eq!(pre2_variant(kernel_names(Kind::Plain, 9, 8).0), None);
    }

    #[test]
    fn slots_share_launches_only_when_their_h_rows_fit_and_nothing_splits_k() {
        let k = |splits| KernelConfig {
            warps: 2,
            splits,
            unroll: 4,
            rows: 1,
        };
        let cfg = DecodeConfig {
            gate_up: k(1),
            down: k(1),
            gate_up_wide: k(1),
            down_wide: k(1),
        };
        // A decode token, top-2: two slots of one row each.
        assert!(slots_merge(&cfg, 1, 2));
        assert!(slots_merge(&cfg, 2, 4));
        // One slot has nothing to share; 4 tokens x 8 slots = 32 h rows > 16.
        assert!(!slots_merge(&cfg, 1, 1));
        assert!(!slots_merge(&cfg, 4, 8));
        // Split-K partial sums are per launch.
        assert!(!slots_merge(&DecodeConfig { down: k(2), ..cfg }, 1, 2));
        assert!(!slots_merge(
            &DecodeConfig {
                gate_up: k(3),
                ..cfg
            },
            1,
            2
        ));
    }

    /// A launch of several slots divides the gate/up kernel's warps per
    /// block by the slots (at least 1) and keeps everything else; one slot
    /// per launch keeps the shape; down is never divided.
    #[test]
    fn merged_launches_divide_gate_up_warps_by_the_slots() {
        if std::env::var("WDMOE_MERGED_GATE_WARPS").is_ok() {
            return; // a comparison run chose the shapes
        }
        let k = |warps| KernelConfig {
            warps,
            splits: 1,
            unroll: 4,
            rows: 1,
        };
        let cfg = DecodeConfig {
            gate_up: k(2),
            down: k(8),
            gate_up_wide: k(4),
            down_wide: k(8),
        };
        assert_eq!(slot_configs(&cfg, 1, 1), (false, k(2), k(8)));
        assert_eq!(slot_configs(&cfg, 1, 2), (false, k(1), k(8)));
        assert_eq!(slot_configs(&cfg, 2, 8), (false, k(1), k(8)));
        // 9-16 tokens: the dual kernels on the 1-8-token shapes.
        assert_eq!(slot_configs(&cfg, 9, 1), (true, k(2), k(8)));
        // The Mixtral default: 2 warps alone, 1 in a top-2 decode step.
        let info = h200();
        let mix = DecodeConfig::auto_layout(&info, 4096, 14336, crate::DownLayout::Pairs32);
        assert_eq!(mix.gate_up.warps, 2);
        assert_eq!(slot_configs(&mix, 1, 2).1.warps, 1);
    }

    #[test]
    fn one_token_gate_up_slots_stream_their_candidate() {
        if std::env::var("WDMOE_SLOT_SPEC").is_ok() {
            return; // a comparison run chose the kernels
        }
        assert_eq!(
            spec_gate(Kind::Gated, 1, "slot_gated_nt1_u4"),
            "slot_gated_spec_u4"
        );
        assert_eq!(
            spec_gate(Kind::Gated, 1, "slot_gated_nt1_u8"),
            "slot_gated_spec_u8"
        );
        // Several tokens, the down kernels, the two-row-unit shapes: as named.
        assert_eq!(
            spec_gate(Kind::Gated, 2, "slot_gated_nt1_u4"),
            "slot_gated_nt1_u4"
        );
        assert_eq!(
            spec_gate(Kind::Pair, 1, "slot_pair_nt1_u8"),
            "slot_pair_nt1_u8"
        );
        assert_eq!(
            spec_gate(Kind::Gated, 1, "slot_gated_r2_nt1_u2"),
            "slot_gated_r2_nt1_u2"
        );
    }
}

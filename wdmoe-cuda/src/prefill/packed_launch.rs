//! The packed GEMM's instantiations and their launch
//! (kernels/gemm_packed.cuh): the kernel table, the parameters the kernels
//! take by value, the tile width for a launch's rows, and the launch itself
//! (one launch; a plain launch, an extended one and one of small tiles for
//! the experts' widest down tiles; or a chain of fitted widths for
//! gate/up). The operations on the packing are in `packed.rs`.

use super::*;
use crate::error::{shape, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::Gpu;
use crate::sys;

/// Mirror of `PackedParams` in kernels/gemm_packed.cuh (same field order
/// and C layout; size asserted below).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct PackedParams {
    w: [u64; MAX_GROUPS],
    unit_stride: i64,
    kt_stride: i64,
    out: u64,
    dev_rows: u64,
    k: i32,
    n_rows: i32,
    groups: i32,
    ldo: i32,
    max_rows: i32,
    kmajor: i32,
    row_start: [i32; MAX_GROUPS + 1],
    splits: i32,
    ext_cols: i32,
    fit_lo: i32,
    fit_hi: i32,
    follower: i32,
    q_out: u64,
    k_cache: u64,
    v_cache: u64,
    rope: u64,
    start: i32,
    heads: i32,
    kv_heads: i32,
    max_seq: i32,
    sk_ws: u64,
    sk_sem: u64,
    sk: i32,
    pair_bn: i32,
    pair_small: i32,
    small_run: i32,
    small_cost4: i32,
}
const _: () = assert!(std::mem::size_of::<PackedParams>() == 936);

kernel_params! {
    /// The packed GEMM kernels' parameters: the tokens' tensor map, the
    /// extended tiles' second map (box of their extra columns; the first
    /// map again where a kernel has none) and the [`PackedParams`], by
    /// value.
    pub(crate) struct PackedLaunch {
        x: sys::CUtensorMap,
        x_ext: sys::CUtensorMap,
        p: PackedParams,
    }
}

/// Which packed matrix a launch multiplies (the kernel's `KIND`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PackedKind {
    /// W1|W3 tiles interleaved; epilogue silu(g)·u.
    Gated,
    /// W2 in 16-row tiles.
    Plain,
    /// W2 in 32-row units of two 16-row tiles.
    Pairs,
}

impl PackedKind {
    /// Packed 16x16 tiles per unit and k tile.
    pub(super) fn nmat(self) -> usize {
        if self == PackedKind::Plain {
            1
        } else {
            2
        }
    }

    /// Rows of W per unit.
    pub(super) fn unit_rows(self) -> usize {
        if self == PackedKind::Pairs {
            32
        } else {
            16
        }
    }

    /// Units per block (128 rows).
    fn units_per_block(self) -> usize {
        128 / self.unit_rows()
    }
}

/// What the epilogue writes (the kernel's `OUT`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PackedOut {
    /// fp16 store.
    H16,
    /// fp32 store.
    F32,
    /// fp32 `out += result`.
    F32Add,
    /// The q|k|v projection with RoPE and the KV-cache write
    /// ([`gemm_packed_qkv_rope`]).
    QkvRope,
}

/// The instantiations of kernels/gemm_packed.cuh: (kind, output, tokens
/// per tile, role, kernel, shared-memory stages). [`Role::Ext`] ones run
/// the extended tiles of a plain/extended pair of launches, [`Role::Fit`]
/// ones (with the one-launch kernel of [`FIT_LO`] tokens) a chain of
/// fitted widths ([`launch_packed`]).
#[rustfmt::skip]
pub(crate) const PACKED_KERNELS: [PackedKernel; 28] = [
    (PackedKind::Gated, PackedOut::H16, 128, Role::One, "packed_gated_n128", 4),
    (PackedKind::Gated, PackedOut::H16, 136, Role::Fit, "packed_gated_n136", 4),
    (PackedKind::Gated, PackedOut::H16, 144, Role::Fit, "packed_gated_n144", 4),
    (PackedKind::Gated, PackedOut::H16, 152, Role::Fit, "packed_gated_n152", 4),
    (PackedKind::Gated, PackedOut::H16, 160, Role::Fit, "packed_gated_n160", 4),
    (PackedKind::Gated, PackedOut::H16, 64, Role::One, "packed_gated_n64", 5),
    (PackedKind::Gated, PackedOut::H16, 32, Role::One, "packed_gated_n32", 5),
    (PackedKind::Plain, PackedOut::H16, 256, Role::One, "packed_plain_n256", 4),
    (PackedKind::Plain, PackedOut::H16, 128, Role::One, "packed_plain_n128", 6),
    (PackedKind::Plain, PackedOut::H16, 64, Role::One, "packed_plain_n64", 8),
    (PackedKind::Plain, PackedOut::H16, 32, Role::One, "packed_plain_n32", 8),
    (PackedKind::Pairs, PackedOut::H16, 256, Role::One, "packed_pairs_n256", 4),
    (PackedKind::Pairs, PackedOut::H16, 128, Role::One, "packed_pairs_n128", 6),
    (PackedKind::Pairs, PackedOut::H16, 64, Role::One, "packed_pairs_n64", 8),
    (PackedKind::Pairs, PackedOut::H16, 32, Role::One, "packed_pairs_n32", 8),
    (PackedKind::Plain, PackedOut::F32, 256, Role::One, "packed_f32_n256", 4),
    (PackedKind::Plain, PackedOut::F32, 128, Role::One, "packed_f32_n128", 6),
    (PackedKind::Plain, PackedOut::F32, 64, Role::One, "packed_f32_n64", 8),
    (PackedKind::Plain, PackedOut::F32, 32, Role::One, "packed_f32_n32", 8),
    (PackedKind::Plain, PackedOut::QkvRope, 256, Role::One, "packed_qkv_n256", 4),
    (PackedKind::Plain, PackedOut::QkvRope, 128, Role::One, "packed_qkv_n128", 6),
    (PackedKind::Plain, PackedOut::QkvRope, 64, Role::One, "packed_qkv_n64", 8),
    (PackedKind::Plain, PackedOut::QkvRope, 32, Role::One, "packed_qkv_n32", 8),
    (PackedKind::Plain, PackedOut::F32Add, 128, Role::One, "packed_f32add_n128", 6),
    (PackedKind::Plain, PackedOut::F32Add, 64, Role::One, "packed_f32add_n64", 8),
    (PackedKind::Plain, PackedOut::F32Add, 32, Role::One, "packed_f32add_n32", 8),
    (PackedKind::Pairs, PackedOut::H16, 256, Role::Ext(32), "packed_pairs_n256x32", 4),
    (PackedKind::Plain, PackedOut::H16, 256, Role::Ext(32), "packed_plain_n256x32", 4),
];

/// One row of [`PACKED_KERNELS`].
pub(crate) type PackedKernel = (PackedKind, PackedOut, u32, Role, &'static str, usize);

/// How an instantiation is launched.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// Alone (every tile of the launch at its width), or as the first
    /// launch of a pair or a chain.
    One,
    /// The extended tiles (this many more columns) of a plain/extended pair.
    Ext(u32),
    /// A later width of a chain of fitted widths.
    Fit,
}

impl Role {
    /// Extension columns (the second token box).
    pub(crate) fn ext_cols(self) -> u32 {
        match self {
            Role::Ext(x) => x,
            _ => 0,
        }
    }
}

/// Dynamic shared memory of a packed instantiation (mirrors the kernel:
/// 1024 bytes of alignment slack, per stage the tokens' box and the block's
/// weight tiles, two mbarriers per stage).
pub(crate) fn packed_smem_bytes(
    kind: PackedKind,
    out: PackedOut,
    bn: u32,
    ext: u32,
    stages: usize,
) -> u32 {
    // PO_QKV_ROPE's exchange: 32 tokens x 132 floats.
    let xch = if out == PackedOut::QkvRope {
        32 * 132 * 4
    } else {
        0
    };
    let x = (bn + ext) as usize * BK * 2;
    let w = (BK / 16) * kind.units_per_block() * kind.nmat() * 512;
    (1024 + stages * (x + w) + stages * 16 + xch) as u32
}

/// The one-launch instantiations of one kind and output, narrowest first.
fn instantiations(kind: PackedKind, out: PackedOut) -> Vec<(u32, &'static str, usize)> {
    let mut v: Vec<_> = PACKED_KERNELS
        .iter()
        .filter(|k| k.0 == kind && k.1 == out && k.3 == Role::One)
        .map(|k| (k.2, k.4, k.5))
        .collect();
    v.sort_by_key(|k| k.0);
    v
}

/// Tokens per tile: for several groups of about `rows_per_group` rows, the
/// narrowest instantiation that holds them (fewer wasted tensor-core
/// columns), else the widest (gated 128, down 256: the least shared-memory
/// and L2 traffic per flop; at 512 rows per expert on an H200 1.2x the
/// 64 / 128-token tiles, tests/gpu_packed.rs `packed_stage_timing_mixtral`);
/// the same for one group whose k is split across blocks (`F32Add`: the
/// splits fill the GPU, and one token tile reads the weights once where
/// four 32-token tiles read them four times from L2: at 128 tokens the
/// 32-token tiles ran a q|k|v projection in 45 µs on an H200, run B2); for
/// one group otherwise, the widest that still gives two waves of tiles over
/// the SMs (the blocks on one row block share its weights in L2), else the
/// narrowest (the q|k|v projection at 2,048 tokens: 256, 1.13x the
/// 128-token tiles, `packed_f32_timing_qkv`), unless the widest tiles'
/// waves, at their lower cost per token ([`NARROW_COST`]), end first.
fn pick_bn(
    kind: PackedKind,
    out: PackedOut,
    groups: usize,
    rows_per_group: usize,
    row_blocks: usize,
    sms: usize,
) -> Result<(u32, &'static str, usize)> {
    let v = instantiations(kind, out);
    let (Some(&narrow), Some(&wide)) = (v.first(), v.last()) else {
        return Err(Error::Unsupported {
            op: "ffn_packed",
            detail: format!("no packed kernel for {kind:?} with {out:?} output"),
        });
    };
    Ok(if groups > 1 || out == PackedOut::F32Add {
        v.iter()
            .copied()
            .find(|k| k.0 as usize >= rows_per_group)
            .unwrap_or(wide)
    } else {
        let two_waves = v
            .iter()
            .rev()
            .copied()
            .find(|k| rows_per_group.div_ceil(k.0 as usize) * row_blocks >= 2 * sms)
            .unwrap_or(narrow);
        // The widest tiles still win where their waves, at their lower cost
        // per token, end first (the o projection at 2,048 tokens: 1.94
        // waves of 256-token tiles against 3.88 of 128).
        let waves = |k: (u32, &str, usize)| {
            (rows_per_group.div_ceil(k.0 as usize) * row_blocks).div_ceil(sms) as f64
        };
        let cost = |k: (u32, &str, usize)| {
            let per_token = if k.0 == wide.0 { 1.0 } else { NARROW_COST };
            waves(k) * k.0 as f64 * per_token
        };
        if one_group_cost_default() && cost(wide) <= cost(two_waves) {
            wide
        } else {
            two_waves
        }
    })
}

/// Time per token column of a tile narrower than the widest, relative to
/// the widest (256 against 128 tokens at Mixtral size: q|k|v 693 against
/// 615 TFLOP/s, down 613 against 507; `packed_f32_timing_qkv`,
/// `packed_stage_timing_mixtral`).
const NARROW_COST: f64 = 1.15;

/// Whether one group's tile width weighs the widest tiles' waves against
/// the two-wave pick (default) or takes the two-wave pick alone
/// (`WDMOE_ONE_GROUP_COST=0`: comparisons).
fn one_group_cost_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_ONE_GROUP_COST", "0")
}

/// Whether [`ffn_packed`] takes experts of `m` x `m_h` on this GPU:
/// compute capability 9.0, both reduction lengths multiples of 64.
pub(crate) fn packed_supported(gpu: &Gpu, m: usize, m_h: usize) -> bool {
    gpu.info().cubin && m % BK == 0 && m_h % BK == 0 && m > 0 && m_h > 0
}

pub(super) struct PackedGemm<'a> {
    pub(super) kind: PackedKind,
    pub(super) out_kind: PackedOut,
    pub(super) ldo: usize,
    pub(super) w: &'a [u64],
    pub(super) unit_stride: i64,
    pub(super) kt_stride: i64,
    pub(super) kmajor: bool,
    pub(super) x: u64,
    pub(super) k: usize,
    pub(super) n_rows: usize,
    pub(super) rows: Rows<'a>,
    pub(super) out: u64,
    /// Tokens per tile instead of [`pick_bn`]'s choice (tests and timings).
    pub(super) force_bn: Option<u32>,
    /// [`PackedOut::QkvRope`]'s outputs.
    pub(super) rope: Option<RopeOut>,
}

/// Where [`gemm_packed_qkv_rope`] writes (device addresses) and the
/// positions it rotates.
#[derive(Clone, Copy, Default)]
pub(crate) struct RopeOut {
    pub(super) q_out: u64,
    pub(super) k_cache: u64,
    pub(super) v_cache: u64,
    pub(super) rope: u64,
    pub(super) start: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) max_seq: usize,
}

/// The extended sibling (extension columns, kernel, stages) of the one-launch
/// instantiation `(kind, out, bn)`, if there is one.
fn ext_sibling(kind: PackedKind, out: PackedOut, bn: u32) -> Option<(u32, &'static str, usize)> {
    PACKED_KERNELS
        .iter()
        .find(|k| k.0 == kind && k.1 == out && k.2 == bn && matches!(k.3, Role::Ext(_)))
        .map(|k| (k.3.ext_cols(), k.4, k.5))
}

/// Whether `(kind, out)` has fitted widths beside its [`FIT_LO`]-token
/// kernel (the table's [`Role::Fit`] rows: gate/up's).
fn has_fitted(kind: PackedKind, out: PackedOut) -> bool {
    PACKED_KERNELS
        .iter()
        .any(|k| k.0 == kind && k.1 == out && k.3 == Role::Fit)
}

/// Waves of tiles the residual-add launches' k slices may fill: 1, or
/// `WDMOE_SPLIT_WAVES` (3: about the rule before run F14, for comparisons).
fn split_waves() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        crate::env::number("WDMOE_SPLIT_WAVES", |&n: &usize| n >= 1, "waves >= 1").unwrap_or(1)
    })
}

/// Whether the FFN's widest tiles run as a plain/extended pair of launches
/// (default) or as one launch of plain tiles (`WDMOE_PACKED_EXT=0`:
/// comparisons).
fn ext_tiles_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_PACKED_EXT", "0")
}

/// Whether the experts' gate/up GEMM fits its token tiles to each expert's
/// rows (default: a chain of launches, [`fit_tiles`]) or runs one launch of
/// 128-token tiles (`WDMOE_PACKED_FIT=0`: comparisons).
fn fit_tiles_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_PACKED_FIT", "0")
}

/// The narrowest and widest fitted tile widths (tokens; every multiple of 8
/// between them is instantiated).
pub(crate) const FIT_LO: u32 = 128;
/// See [`FIT_LO`].
pub(crate) const FIT_HI: u32 = 160;

/// Fitted token tiles of a group of `rows` rows (kernels/gemm_packed.cuh,
/// `fit_tiles`, mirrored): (tiles, tokens per tile). ⌈rows / hi⌉ tiles of
/// the rows' share rounded up to 8 tokens, at least `lo` (then ⌈rows /
/// lo⌉ tiles).
pub(crate) fn fit_tiles(rows: usize, lo: usize, hi: usize) -> (usize, usize) {
    if rows == 0 {
        return (0, lo);
    }
    let t = rows.div_ceil(hi);
    let w = rows.div_ceil(t).next_multiple_of(8);
    if w < lo {
        (rows.div_ceil(lo), lo)
    } else {
        (t, w)
    }
}

/// Token tiles of a group of `rows` rows at `bn` columns extended by up to
/// `ext` (kernels/gemm_packed.cuh, `ext_tiles`): (plain, extended).
fn split_token_tiles(rows: usize, bn: usize, ext: usize) -> (usize, usize) {
    let ntt = rows.div_ceil(bn + ext);
    let extra = rows.saturating_sub(ntt * bn);
    let n_ext = if ext > 0 { extra.div_ceil(ext) } else { 0 };
    (ntt - n_ext, n_ext)
}

/// Columns the tensor cores run for `rows` rows on a pair's plain and
/// extended tiles (kernels/gemm_packed.cuh, `pair_cols`).
fn pair_cols(rows: usize, bn: usize, ext: usize) -> usize {
    let (plain, extended) = split_token_tiles(rows, bn, ext);
    (plain + extended) * bn + extended * ext
}

/// The small tile of a pair (kernels/gemm_packed.cuh, `pair_big_rows`,
/// mirrored): (rows of a group of `rows` that the plain and extended tiles
/// take, whether one `small`-token tile takes the rest). The small tile
/// takes the last min(rows, small) rows where the rest's columns plus
/// `small` at `cost4` / 4 of their cost per column come under the columns
/// of all rows on plain and extended tiles.
pub(crate) fn pair_split(
    rows: usize,
    bn: usize,
    ext: usize,
    small: usize,
    cost4: usize,
) -> (usize, bool) {
    let rest = rows.saturating_sub(small);
    if 4 * pair_cols(rest, bn, ext) + cost4 * small < 4 * pair_cols(rows, bn, ext) {
        (rest, true)
    } else {
        (rows, false)
    }
}

/// Tokens per tile of a pair's small tiles ([`pair_split`]).
pub(crate) const PAIR_SMALL: u32 = 128;

/// A small tile's cost per column in quarters of a plain tile's
/// ([`pair_split`]): 5 (a chosen default, above the 1.15 of
/// [`NARROW_COST`] measured for 128- against 256-token tiles), or
/// `WDMOE_PACKED_SMALL_COST` (1..=16; the sweep in BENCHMARKS.md, runs
/// J1–J9).
fn small_cost4() -> usize {
    static C: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *C.get_or_init(|| {
        crate::env::number(
            "WDMOE_PACKED_SMALL_COST",
            |&c: &usize| (1..=16).contains(&c),
            "quarters 1..=16",
        )
        .unwrap_or(5)
    })
}

/// Whether a pair's small tiles launch before its plain and extended ones
/// (default) or after them (`WDMOE_PACKED_SMALL_FIRST=0`: comparisons).
/// Serialized (ncu, run J7) the small launches ran ~405 TFLOP/s against
/// ~665 for the plain and extended ones: a few tiles, often under a wave;
/// first, the plain tiles fill the SMs they leave instead of the small
/// ones running alone at the end of the chain (J8: 101.56 ± 0.28 ms a
/// 2,048-token prompt against 101.94 ± 0.21 last and 102.22 ± 0.17 off).
fn small_first() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_PACKED_SMALL_FIRST", "0")
}

/// Whether a pair of launches gives the experts' last rows to small tiles
/// where they cost less (default: a third launch, [`pair_split`]) or runs
/// plain and extended tiles alone (`WDMOE_PACKED_SMALL=0`: comparisons).
fn pair_small_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_PACKED_SMALL", "0")
}

/// How a packed GEMM's token tiles are launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schedule {
    /// One launch, every tile `bn` tokens.
    One(u32),
    /// A plain launch of `bn` tokens, then the extended tiles (`bn` + the
    /// sibling's columns); with a small width the small tiles
    /// ([`pair_split`]) in a launch before them ([`small_first`]) or after.
    Pair(u32, Option<u32>),
    /// A chain of launches, one per fitted width ([`fit_tiles`]).
    Fit,
}

/// One launch of a schedule: its instantiation, its tokens per tile (the
/// token box), extension columns, its token tiles (a bound where the rows
/// are on the device), and whether it runs a pair's small tiles.
struct Step {
    name: &'static str,
    stages: usize,
    bn: u32,
    ext: u32,
    token_tiles: usize,
    small: bool,
}

/// The launches of `sched` for `g`'s rows, in order.
fn steps(g: &PackedGemm<'_>, op: &'static str, sched: Schedule) -> Result<Vec<Step>> {
    // (a fitted width alone too: tests and timings)
    let one = |bn: u32| {
        PACKED_KERNELS
            .iter()
            .find(|k| k.0 == g.kind && k.1 == g.out_kind && k.2 == bn && k.3.ext_cols() == 0)
            .map(|k| (k.2, k.4, k.5))
            .ok_or_else(|| Error::Unsupported {
                op,
                detail: format!("no packed {:?} kernel of {bn} tokens per tile", g.kind),
            })
    };
    let (max_rows, groups) = (g.rows.rows(), g.rows.groups());
    // Token tiles over the groups, or the device rows' bound (each group
    // adds at most one partial tile).
    let count = |per_group: &dyn Fn(usize) -> usize, bn: u32| match g.rows {
        Rows::Host(counts) => counts.iter().map(|&c| per_group(c)).sum(),
        Rows::Device { .. } => max_rows.div_ceil(bn as usize) + groups,
    };
    Ok(match sched {
        Schedule::One(bn) => {
            let (bn, name, stages) = one(bn)?;
            let tiles = count(&|c| c.div_ceil(bn as usize), bn);
            vec![Step {
                name,
                stages,
                bn,
                ext: 0,
                token_tiles: tiles,
                small: false,
            }]
        }
        Schedule::Pair(bn, small) => {
            let (bn, name, stages) = one(bn)?;
            let (x, ext_name, ext_stages) =
                ext_sibling(g.kind, g.out_kind, bn).ok_or_else(|| Error::Unsupported {
                    op,
                    detail: format!("no extended packed {:?} kernel beside {name}", g.kind),
                })?;
            let (b, x_us) = (bn as usize, x as usize);
            let (s_us, c4) = (small.unwrap_or(0) as usize, small_cost4());
            // the rows of a group the plain and extended tiles take
            let big = |c: usize| {
                if s_us > 0 {
                    pair_split(c, b, x_us, s_us, c4).0
                } else {
                    c
                }
            };
            let mut v = vec![
                Step {
                    name,
                    stages,
                    bn,
                    ext: 0,
                    token_tiles: count(&|c| split_token_tiles(big(c), b, x_us).0, bn),
                    small: false,
                },
                Step {
                    name: ext_name,
                    stages: ext_stages,
                    bn,
                    ext: x,
                    token_tiles: count(&|c| split_token_tiles(big(c), b, x_us).1, bn + x),
                    small: false,
                },
            ];
            if let Some(s) = small {
                let (s, small_name, small_stages) = one(s)?;
                // (first: its few tiles start the chain, and the plain
                // tiles fill the SMs they leave)
                v.insert(
                    if small_first() { 0 } else { 2 },
                    Step {
                        name: small_name,
                        stages: small_stages,
                        bn: s,
                        ext: 0,
                        // (on the device: at most one a group)
                        token_tiles: match g.rows {
                            Rows::Host(counts) => counts
                                .iter()
                                .filter(|&&c| pair_split(c, b, x_us, s_us, c4).1)
                                .count(),
                            Rows::Device { .. } => groups,
                        },
                        small: true,
                    },
                );
            }
            v
        }
        Schedule::Fit => {
            let (lo, hi) = (FIT_LO as usize, FIT_HI as usize);
            let mut v = Vec::new();
            for bn in (FIT_LO..=FIT_HI).step_by(8) {
                let k = PACKED_KERNELS
                    .iter()
                    .find(|k| {
                        k.0 == g.kind && k.1 == g.out_kind && k.2 == bn && k.3.ext_cols() == 0
                    })
                    .ok_or_else(|| Error::Unsupported {
                        op,
                        detail: format!("no fitted packed {:?} kernel of {bn} tokens", g.kind),
                    })?;
                let b = bn as usize;
                let tiles = count(
                    &|c| {
                        let (t, w) = fit_tiles(c, lo, hi);
                        if w == b {
                            t
                        } else {
                            0
                        }
                    },
                    bn,
                );
                v.push(Step {
                    name: k.4,
                    stages: k.5,
                    bn,
                    ext: 0,
                    token_tiles: tiles,
                    small: false,
                });
            }
            v
        }
    })
}

/// The share of a wave (percent; 0: never) up to which a launch shares out
/// its last partial wave (stream-K, kernels/stream_k.cuh; default
/// [`super::stream_k::DEFAULT_MAX_PCT`]): the GPU's share for fp16 outputs
/// of whole 128-row blocks in one k slice on the sm_90a kernels, else 0.
/// Such launches take one block per multiprocessor, so consecutive ones
/// can alternate between two workspace regions: a launch of a pair or a
/// chain holds every multiprocessor (one block each: 384 threads at 168
/// registers fill the register file) until its predecessor has ended (each
/// later launch waits for it before exiting), so launch k + 2 cannot start
/// while launch k runs.
/// (The kernels index k blocks in 32-bit arithmetic: G² · k / 64 must
/// stay under 2^30, as it does by far at 132 SMs and Mixtral's k.)
fn stream_k_share(gpu: &Gpu, g: &PackedGemm<'_>, splits: i32, sms: usize) -> u32 {
    let fits = gpu.info().cubin
        && g.out_kind == PackedOut::H16
        && g.n_rows % 128 == 0
        && splits == 1
        && sms * sms * (g.k / BK) < 1 << 30;
    if fits {
        gpu.stream_k.max_pct()
    } else {
        0
    }
}

pub(super) fn launch_packed(gpu: &Gpu, op: &'static str, g: PackedGemm<'_>) -> Result<()> {
    let max_rows = g.rows.rows();
    let groups = g.rows.groups();
    if max_rows == 0 {
        return Ok(());
    }
    let model = g.rows.model_counts();
    let per_group = model.iter().copied().max().unwrap_or(1);
    let units = g.n_rows / g.kind.unit_rows();
    let row_blocks = units.div_ceil(g.kind.units_per_block());
    let sms = gpu.info().sm_count as usize;
    let sched = match g.force_bn {
        // (a pair's total width: plain + extension columns)
        Some(want) => PACKED_KERNELS
            .iter()
            .find(|k| {
                k.0 == g.kind
                    && k.1 == g.out_kind
                    && k.3.ext_cols() > 0
                    && k.2 + k.3.ext_cols() == want
            })
            .map_or(Schedule::One(want), |k| Schedule::Pair(k.2, None)),
        None => {
            let pick = pick_bn(g.kind, g.out_kind, groups, per_group, row_blocks, sms)?.0;
            if groups > 1 && ext_tiles_default() && ext_sibling(g.kind, g.out_kind, pick).is_some()
            {
                let small = PACKED_KERNELS.iter().any(|k| {
                    k.0 == g.kind && k.1 == g.out_kind && k.2 == PAIR_SMALL && k.3 == Role::One
                });
                Schedule::Pair(pick, (small && pair_small_default()).then_some(PAIR_SMALL))
            } else if groups > 1
                && pick == FIT_LO
                && has_fitted(g.kind, g.out_kind)
                && fit_tiles_default()
            {
                Schedule::Fit
            } else {
                Schedule::One(pick)
            }
        }
    };
    let steps = steps(&g, op, sched)?;
    // (zeros where the kernel writes no RoPE output)
    let rope = g.rope.unwrap_or_default();
    let mut p = PackedParams {
        w: [0; MAX_GROUPS],
        unit_stride: g.unit_stride,
        kt_stride: g.kt_stride,
        out: g.out,
        dev_rows: 0,
        k: g.k as i32,
        n_rows: g.n_rows as i32,
        groups: groups as i32,
        ldo: g.ldo as i32,
        max_rows: max_rows as i32,
        kmajor: i32::from(g.kmajor),
        row_start: [0; MAX_GROUPS + 1],
        splits: 1,
        ext_cols: steps.iter().map(|s| s.ext).max().unwrap_or(0) as i32,
        fit_lo: 0,
        fit_hi: 0,
        follower: 0,
        q_out: rope.q_out,
        k_cache: rope.k_cache,
        v_cache: rope.v_cache,
        rope: rope.rope,
        start: rope.start as i32,
        heads: rope.heads as i32,
        kv_heads: rope.kv_heads as i32,
        max_seq: rope.max_seq as i32,
        sk_ws: 0,
        sk_sem: 0,
        sk: 0,
        pair_bn: 0,
        pair_small: 0,
        small_run: 0,
        small_cost4: 0,
    };
    if sched == Schedule::Fit {
        (p.fit_lo, p.fit_hi) = (FIT_LO as i32, FIT_HI as i32);
    }
    if let Schedule::Pair(bn, Some(small)) = sched {
        (p.pair_bn, p.pair_small) = (bn as i32, small as i32);
        p.small_cost4 = small_cost4() as i32;
    }
    p.w[..groups].copy_from_slice(g.w);
    match g.rows {
        Rows::Host(counts) => {
            for (i, &c) in counts.iter().enumerate() {
                p.row_start[i + 1] = p.row_start[i] + c as i32;
            }
        }
        Rows::Device { offsets, .. } => p.dev_rows = offsets,
    }
    // Slices of k for the residual-add launches whose tiles alone would
    // leave SMs idle (few tokens: the projections of short chunks): as many
    // as one wave of tiles holds, each slice at least 8 k blocks; their
    // partial sums meet in the output by atomic adds. A slice's tile costs
    // a pipeline fill and an epilogue whatever its length: at 128 tokens
    // the q|k|v projection (48 row blocks) ran 31 µs in 8 slices (384
    // tiles, about 3 waves: the rule before run F14), 23.5 µs in 2 (96
    // tiles), 26 µs in 3 (144: a second wave) on an H200 under ncu.
    if g.out_kind == PackedOut::F32Add {
        let kblocks = g.k / BK;
        let base = (steps[0].token_tiles * row_blocks).max(1);
        let want = (split_waves() * sms / base).max(1);
        p.splits = want.clamp(1, (kblocks / 8).max(1)) as i32;
    }
    let tiles: Vec<usize> = steps
        .iter()
        .map(|s| s.token_tiles * row_blocks * p.splits as usize)
        .collect();
    if tiles.iter().all(|&t| t == 0) {
        return Ok(());
    }
    if let Some(&big) = tiles.iter().find(|&&t| t > i32::MAX as usize) {
        return Err(shape(op, format!("{big} tiles overflow")));
    }
    let (kind, k, n) = (g.kind, g.k, g.n_rows);
    // The first launch runs even with no tile of its own where others
    // follow: they rely on its wait for the inputs. A later one with no
    // tile is skipped.
    let launched = steps
        .iter()
        .zip(&tiles)
        .enumerate()
        .filter(|&(i, (_, &t))| i == 0 || t > 0);
    let sk_share = stream_k_share(gpu, &g, p.splits, sms);
    for (nth, (_, (step, &tiles))) in launched.enumerate() {
        // One block per tile up to a wave; with stream-K every
        // multiprocessor, so that a launch of fewer tiles than that shares
        // their k blocks out over all of them.
        let grid = if sk_share > 0 {
            sms
        } else {
            tiles.clamp(1, sms)
        };
        if sk_share > 0 {
            (p.sk_ws, p.sk_sem) = gpu.stream_k.region(nth, sms)?;
            p.sk = sk_share as i32;
        }
        let tx = tensor_map(op, g.x, max_rows, g.k, step.bn)?;
        let tx_ext = if step.ext > 0 {
            tensor_map(op, g.x, max_rows, g.k, step.ext)?
        } else {
            tx
        };
        p.follower = i32::from(nth > 0);
        p.small_run = i32::from(step.small);
        let params = PackedLaunch {
            x: tx,
            x_ext: tx_ext,
            p,
        };
        let (name, bn, ext) = (step.name, step.bn, step.ext);
        // SAFETY: NAME(TensorMap, TensorMap, PackedParams) by value =
        // PackedLaunch, layouts mirrored (sys::CUtensorMap; PackedParams,
        // size asserted). Both tensor maps cover the token rows
        // [max_rows][k] the caller checked; the kernel reads weights only
        // through the groups' w pointers, whole packed runs of the matrices
        // ffn_packed validated (n_rows x k fp16 each, strides from their
        // packing), and writes out rows < the clamped row offsets <=
        // max_rows, columns < n_rows <= ldo (callers sized out for max_rows
        // x ldo elements of the output type), or (QkvRope) q_out rows <
        // t and cache positions start + token < max_seq of the heads given
        // (gemm_packed_qkv_rope checked every length); the launches of a
        // pair or a chain write disjoint token tiles (a pair's small tile
        // only the group's rows past those of its plain and extended
        // tiles, which store no further: pair_big_rows). With stream-K (sk > 0)
        // block b also writes slot b of its region's workspace and flag b
        // (grid <= sms, the blocks StreamK::region sized them for), and no
        // two launches in flight share a region (stream_k_share). Shared memory was
        // raised to packed_smem_bytes at module load; 384 threads as the
        // launch bounds. PDL: a lone or first launch's producer executes
        // griddepcontrol.wait before its first copy, and every global write
        // comes after data those copies delivered; the first launch of a
        // pair or chain waits before it lets the next one start, and each
        // later one waits for its predecessor before exiting.
        unsafe {
            gpu.launch(
                &gpu.prefill,
                name,
                Shape::new(grid as u32, 384)
                    .shared(packed_smem_bytes(kind, g.out_kind, bn, ext, step.stages))
                    .pdl(true),
                params,
                || {
                    format!(
                        "{kind:?} rows={max_rows} n_rows={n} k={k} groups={groups} bn={bn} ext={ext} {sched:?}"
                    )
                },
            )
        }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fitted widths: values worked by hand, then every row count up
    /// to 4,096: the tiles hold the rows, a width is a multiple of 8
    /// within [lo, hi], and a tile wider than lo wastes under 8 columns
    /// per tile.
    #[test]
    fn fit_tiles_cover_the_rows_with_little_waste() {
        let (lo, hi) = (FIT_LO as usize, FIT_HI as usize);
        assert_eq!(fit_tiles(0, lo, hi), (0, 128));
        assert_eq!(fit_tiles(9, lo, hi), (1, 128));
        assert_eq!(fit_tiles(130, lo, hi), (1, 136));
        assert_eq!(fit_tiles(200, lo, hi), (2, 128));
        assert_eq!(fit_tiles(447, lo, hi), (3, 152));
        assert_eq!(fit_tiles(512, lo, hi), (4, 128));
        assert_eq!(fit_tiles(520, lo, hi), (4, 136));
        assert_eq!(fit_tiles(1705, lo, hi), (11, 160));
        for rows in 1..=4096 {
            let (t, w) = fit_tiles(rows, lo, hi);
            assert!(t * w >= rows, "{rows}: {t} x {w}");
            assert!(w % 8 == 0 && (lo..=hi).contains(&w), "{rows}: width {w}");
            if w > lo {
                assert!(t * w - rows < 8 * t, "{rows}: {t} x {w} wastes too much");
                assert_eq!(t, rows.div_ceil(hi), "{rows}");
            } else {
                assert_eq!(t, rows.div_ceil(lo), "{rows}");
            }
        }
    }

    /// A pair's small tiles (down at 256 + 32 with 128-token small tiles):
    /// values worked by hand (the rows of a skewed layer at random
    /// weights: 1,923 / 105 / 1,221 / 281 / 4 / 55 / 405 / 102 run 4,448
    /// columns instead of 5,056), then every row count up to 4,096: the
    /// tiles hold the rows, the small tile holds at most 128 of them, and a
    /// split is taken exactly where it costs less.
    #[test]
    fn pair_small_tiles_cost_less() {
        let (b, x, s) = (256, 32, PAIR_SMALL as usize);
        assert_eq!(pair_split(0, b, x, s, 5), (0, false));
        assert_eq!(pair_split(4, b, x, s, 5), (0, true));
        assert_eq!(pair_split(128, b, x, s, 5), (0, true));
        // 129 rows: 256 columns either way, the plain tile alone
        assert_eq!(pair_split(129, b, x, s, 5), (129, false));
        assert_eq!(pair_split(281, b, x, s, 5), (281, false));
        assert_eq!(pair_split(288, b, x, s, 5), (288, false));
        assert_eq!(pair_split(289, b, x, s, 5), (161, true));
        assert_eq!(pair_split(311, b, x, s, 5), (183, true));
        assert_eq!(pair_split(405, b, x, s, 5), (277, true));
        assert_eq!(pair_split(512, b, x, s, 5), (512, false));
        assert_eq!(pair_split(576, b, x, s, 5), (576, false));
        // 1,221: 1,280 columns, or 1,120 + 128 at 5/4: a tie, kept whole
        assert_eq!(pair_split(1221, b, x, s, 5), (1221, false));
        assert_eq!(pair_split(1923, b, x, s, 5), (1923, false));
        // the cost per column moves the ties: at 1.0 the 1,221 rows split,
        // at 2.0 nothing does (a small tile costs a plain one: 30 rows,
        // 311 = 256 + 2 x 128 = 512), at 1.75 the 30 rows still do
        assert_eq!(pair_split(1221, b, x, s, 4), (1093, true));
        assert_eq!(pair_split(311, b, x, s, 8), (311, false));
        assert_eq!(pair_split(30, b, x, s, 8), (30, false));
        assert_eq!(pair_split(30, b, x, s, 7), (0, true));
        let layer = [1923, 105, 1221, 281, 4, 55, 405, 102];
        let cols = |r: usize| {
            let (big, small) = pair_split(r, b, x, s, 5);
            pair_cols(big, b, x) + if small { s } else { 0 }
        };
        assert_eq!(
            layer.iter().map(|&r| pair_cols(r, b, x)).sum::<usize>(),
            5056
        );
        assert_eq!(layer.iter().map(|&r| cols(r)).sum::<usize>(), 4448);
        for rows in 0..=4096 {
            let (big, small) = pair_split(rows, b, x, s, 5);
            let whole = pair_cols(rows, b, x);
            assert!(whole >= rows, "{rows}");
            assert!(pair_cols(big, b, x) >= big, "{rows}");
            if small {
                assert_eq!(big, rows.saturating_sub(s), "{rows}");
                assert!(4 * pair_cols(big, b, x) + 5 * s < 4 * whole, "{rows}");
            } else {
                assert_eq!(big, rows, "{rows}");
                let rest = rows.saturating_sub(s);
                assert!(4 * pair_cols(rest, b, x) + 5 * s >= 4 * whole, "{rows}");
            }
        }
    }
}

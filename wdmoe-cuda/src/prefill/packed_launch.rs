//! The packed GEMM's instantiations and their launch
//! (kernels/gemm_packed.cuh): the kernel table, the parameters the kernels
//! take by value, the tile width for a launch's rows, and the launch itself
//! (one launch, or a plain launch and an extended one for the experts'
//! widest down tiles). The operations on the packing are in `packed.rs`.

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
    q_out: u64,
    k_cache: u64,
    v_cache: u64,
    rope: u64,
    start: i32,
    heads: i32,
    kv_heads: i32,
    max_seq: i32,
}
const _: () = assert!(std::mem::size_of::<PackedParams>() == 888);

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
/// per tile, extension columns, kernel, shared-memory stages). Those with
/// extension columns run the extended tiles of a plain/extended pair of
/// launches ([`launch_packed`]).
#[rustfmt::skip]
pub(crate) const PACKED_KERNELS: [PackedKernel; 24] = [
    (PackedKind::Gated, PackedOut::H16, 128, 0, "packed_gated_n128", 4),
    (PackedKind::Gated, PackedOut::H16, 64, 0, "packed_gated_n64", 5),
    (PackedKind::Gated, PackedOut::H16, 32, 0, "packed_gated_n32", 5),
    (PackedKind::Plain, PackedOut::H16, 256, 0, "packed_plain_n256", 4),
    (PackedKind::Plain, PackedOut::H16, 128, 0, "packed_plain_n128", 6),
    (PackedKind::Plain, PackedOut::H16, 64, 0, "packed_plain_n64", 8),
    (PackedKind::Plain, PackedOut::H16, 32, 0, "packed_plain_n32", 8),
    (PackedKind::Pairs, PackedOut::H16, 256, 0, "packed_pairs_n256", 4),
    (PackedKind::Pairs, PackedOut::H16, 128, 0, "packed_pairs_n128", 6),
    (PackedKind::Pairs, PackedOut::H16, 64, 0, "packed_pairs_n64", 8),
    (PackedKind::Pairs, PackedOut::H16, 32, 0, "packed_pairs_n32", 8),
    (PackedKind::Plain, PackedOut::F32, 256, 0, "packed_f32_n256", 4),
    (PackedKind::Plain, PackedOut::F32, 128, 0, "packed_f32_n128", 6),
    (PackedKind::Plain, PackedOut::F32, 64, 0, "packed_f32_n64", 8),
    (PackedKind::Plain, PackedOut::F32, 32, 0, "packed_f32_n32", 8),
    (PackedKind::Plain, PackedOut::QkvRope, 256, 0, "packed_qkv_n256", 4),
    (PackedKind::Plain, PackedOut::QkvRope, 128, 0, "packed_qkv_n128", 6),
    (PackedKind::Plain, PackedOut::QkvRope, 64, 0, "packed_qkv_n64", 8),
    (PackedKind::Plain, PackedOut::QkvRope, 32, 0, "packed_qkv_n32", 8),
    (PackedKind::Plain, PackedOut::F32Add, 128, 0, "packed_f32add_n128", 6),
    (PackedKind::Plain, PackedOut::F32Add, 64, 0, "packed_f32add_n64", 8),
    (PackedKind::Plain, PackedOut::F32Add, 32, 0, "packed_f32add_n32", 8),
    (PackedKind::Pairs, PackedOut::H16, 256, 32, "packed_pairs_n256x32", 4),
    (PackedKind::Plain, PackedOut::H16, 256, 32, "packed_plain_n256x32", 4),
];

/// One row of [`PACKED_KERNELS`].
pub(crate) type PackedKernel = (PackedKind, PackedOut, u32, u32, &'static str, usize);

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
        .filter(|k| k.0 == kind && k.1 == out && k.3 == 0)
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
    crate::model::env_switch(&ON, "WDMOE_ONE_GROUP_COST", "0")
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
        .find(|k| k.0 == kind && k.1 == out && k.2 == bn && k.3 > 0)
        .map(|k| (k.3, k.4, k.5))
}

/// Whether the FFN's widest tiles run as a plain/extended pair of launches
/// (default) or as one launch of plain tiles (`WDMOE_PACKED_EXT=0`:
/// comparisons).
fn ext_tiles_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::model::env_switch(&ON, "WDMOE_PACKED_EXT", "0")
}

/// Token tiles of a group of `rows` rows at `bn` columns extended by up to
/// `ext` (kernels/gemm_packed.cuh, `ext_tiles`): (plain, extended).
fn split_token_tiles(rows: usize, bn: usize, ext: usize) -> (usize, usize) {
    let ntt = rows.div_ceil(bn + ext);
    let extra = rows.saturating_sub(ntt * bn);
    let n_ext = if ext > 0 { extra.div_ceil(ext) } else { 0 };
    (ntt - n_ext, n_ext)
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
    // The plain instantiation and, for a pair of launches, the extended one.
    let forced_ext = g.force_bn.and_then(|want| {
        PACKED_KERNELS
            .iter()
            .find(|k| k.0 == g.kind && k.1 == g.out_kind && k.3 > 0 && k.2 + k.3 == want)
    });
    let ((bn, name, stages), ext) = match (g.force_bn, forced_ext) {
        (_, Some(k)) => {
            let plain = instantiations(g.kind, g.out_kind)
                .into_iter()
                .find(|p| p.0 == k.2)
                .ok_or_else(|| Error::Unsupported {
                    op,
                    detail: format!("no plain packed {:?} kernel beside {}", g.kind, k.4),
                })?;
            (plain, Some((k.3, k.4, k.5)))
        }
        (Some(want), None) => (
            instantiations(g.kind, g.out_kind)
                .into_iter()
                .find(|k| k.0 == want)
                .ok_or_else(|| Error::Unsupported {
                    op,
                    detail: format!("no packed {:?} kernel of {want} tokens per tile", g.kind),
                })?,
            None,
        ),
        (None, None) => {
            let pick = pick_bn(g.kind, g.out_kind, groups, per_group, row_blocks, sms)?;
            let ext = if groups > 1 && ext_tiles_default() {
                ext_sibling(g.kind, g.out_kind, pick.0)
            } else {
                None
            };
            (pick, ext)
        }
    };
    let ext_cols = ext.map_or(0, |e| e.0);
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
        ext_cols: ext_cols as i32,
        q_out: rope.q_out,
        k_cache: rope.k_cache,
        v_cache: rope.v_cache,
        rope: rope.rope,
        start: rope.start as i32,
        heads: rope.heads as i32,
        kv_heads: rope.kv_heads as i32,
        max_seq: rope.max_seq as i32,
    };
    p.w[..groups].copy_from_slice(g.w);
    // Token tiles of the plain launch and of the extended one.
    let (token_tiles, ext_token_tiles) = match g.rows {
        Rows::Host(counts) => {
            let (mut plain, mut extended) = (0, 0);
            for (i, &c) in counts.iter().enumerate() {
                p.row_start[i + 1] = p.row_start[i] + c as i32;
                let (a, b) = split_token_tiles(c, bn as usize, ext_cols as usize);
                plain += a;
                extended += b;
            }
            (plain, extended)
        }
        Rows::Device { offsets, .. } => {
            p.dev_rows = offsets;
            // Worst case: each group adds at most one partial token tile.
            (
                max_rows.div_ceil(bn as usize) + groups,
                max_rows.div_ceil((bn + ext_cols) as usize) + groups,
            )
        }
    };
    // Slices of k for the residual-add launches whose tiles alone would
    // leave SMs idle (few tokens: the projections of short chunks): about 3
    // waves of tiles, each slice at least 8 k blocks; their partial sums
    // meet in the output by atomic adds.
    if g.out_kind == PackedOut::F32Add {
        let kblocks = g.k / BK;
        let base = (token_tiles * row_blocks).max(1);
        let want = (3 * sms).div_ceil(base);
        p.splits = want.clamp(1, (kblocks / 8).max(1)) as i32;
    }
    let tiles = token_tiles * row_blocks * p.splits as usize;
    let ext_tiles = if ext.is_some() {
        ext_token_tiles * row_blocks
    } else {
        0
    };
    if tiles == 0 && ext_tiles == 0 {
        return Ok(());
    }
    if tiles.max(ext_tiles) > i32::MAX as usize {
        return Err(shape(
            op,
            format!("{} tiles overflow", tiles.max(ext_tiles)),
        ));
    }
    let tx = tensor_map(op, g.x, max_rows, g.k, bn)?;
    let (kind, k, n) = (g.kind, g.k, g.n_rows);
    let launch = |name: &'static str, x_ext, kernel_ext: u32, stages, grid: usize| {
        let params = PackedLaunch { x: tx, x_ext, p };
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
        // (gemm_packed_qkv_rope checked every length); the two launches of
        // a pair write disjoint token tiles. Shared memory was raised to
        // packed_smem_bytes at module load; 384 threads as the launch
        // bounds. PDL: a one-launch kernel's producer executes
        // griddepcontrol.wait before its first copy, and every global write
        // comes after data those copies delivered; the plain launch of a
        // pair waits before it lets the extended one start, and the
        // extended one waits for it before exiting.
        unsafe {
            gpu.launch(
                &gpu.prefill,
                name,
                Shape::new(grid.clamp(1, sms) as u32, 384)
                    .shared(packed_smem_bytes(kind, g.out_kind, bn, kernel_ext, stages))
                    .pdl(true),
                params,
                || {
                    format!(
                        "{kind:?} rows={max_rows} n_rows={n} k={k} groups={groups} bn={bn} ext={kernel_ext}"
                    )
                },
            )
        }
    };
    // The plain launch runs even with no plain tile where an extended one
    // follows: the extended launch relies on its wait for the inputs.
    launch(name, tx, 0, stages, tiles)?;
    if let Some((x, ext_name, ext_stages)) = ext {
        if ext_tiles > 0 {
            let tx_ext = tensor_map(op, g.x, max_rows, g.k, x)?;
            launch(ext_name, tx_ext, x, ext_stages, ext_tiles)?;
        }
    }
    Ok(())
}

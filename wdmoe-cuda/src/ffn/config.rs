//! Launch configuration of the decode kernels: launch shapes per token
//! count and the cost-model choice of them.

use super::*;
use crate::error::{Error, Result};
use crate::runtime::DeviceInfo;

/// Default tile order of [`ExpertWeights::pack`] (see
/// [`ExpertWeights::pack_opts`]).
pub const K_MAJOR_DEFAULT: bool = true;

/// Tokens per launch of the decode kernels (two mma n-tiles of 8).
pub const MAX_DECODE_TOKENS: usize = 16;
/// Most blocks along k (split-K across blocks) the workspace is sized for.
pub const MAX_SPLITS: u32 = 16;

/// Launch shape of one decode GEMV kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelConfig {
    /// Warps per block (1..=8); each takes a contiguous part of the block's k range.
    pub warps: u32,
    /// Blocks along k per 16-row tile (1..=MAX_SPLITS): split-K across blocks.
    pub splits: u32,
    /// 16x16 k-tiles loaded per warp before the first mma (4 or 8 with
    /// `rows` 1; 2 with `rows` 2).
    pub unroll: u32,
    /// Packed row units per warp (1 or 2): with 2, each warp computes two
    /// neighbouring row tiles (2 x 16 rows, or 2 x 32 for 32-row W2 tiles)
    /// and loads each token fragment once for both, halving the x/h reads
    /// (9-16 tokens).
    pub rows: u32,
}

impl KernelConfig {
    /// A shape for `row_tiles` x `k_tiles` with `warps` warps per block
    /// (fewer if k is short) that puts about `warps_per_sm` warps on each of
    /// `sm_count` SMs, splitting k across blocks where the row tiles alone
    /// are too few (rounded: a slightly short grid beats a second partial
    /// wave plus split-K reductions; see NOTES.md).
    pub fn auto(
        sm_count: u32,
        row_tiles: usize,
        k_tiles: usize,
        warps: u32,
        unroll: u32,
        warps_per_sm: u32,
    ) -> KernelConfig {
        let warps = warps.min((k_tiles as u32 / unroll).max(1)).clamp(1, 8);
        let per_split = (row_tiles.max(1) * warps as usize) as f64;
        let want = (sm_count * warps_per_sm) as f64 / per_split;
        let max_split_k = (k_tiles / (warps * unroll) as usize).max(1) as u32;
        let splits = (want.round() as u32).clamp(1, MAX_SPLITS.min(max_split_k));
        KernelConfig {
            warps,
            splits,
            unroll,
            rows: 1,
        }
    }

    /// [`KernelConfig::auto`] for `rows` row units per warp (`row_tiles`
    /// counts units; the grid has ceil(row_tiles / rows) blocks along rows).
    pub fn auto_rows(
        sm_count: u32,
        row_tiles: usize,
        k_tiles: usize,
        warps: u32,
        unroll: u32,
        warps_per_sm: u32,
        rows: u32,
    ) -> KernelConfig {
        let blocks = row_tiles.div_ceil(rows.max(1) as usize);
        KernelConfig {
            rows,
            ..Self::auto(sm_count, blocks, k_tiles, warps, unroll, warps_per_sm)
        }
    }

    pub(crate) fn check(&self, op: &'static str) -> Result<()> {
        if !(1..=8).contains(&self.warps)
            || !(1..=MAX_SPLITS).contains(&self.splits)
            || !matches!((self.rows, self.unroll), (1, 4 | 8) | (2, 2))
        {
            return Err(Error::Unsupported {
                op,
                detail: format!(
                    "kernel config {self:?} (warps 1..=8, splits 1..={MAX_SPLITS}, \
                     rows 1 with unroll 4|8, or rows 2 with unroll 2)"
                ),
            });
        }
        Ok(())
    }
}

/// Launch shapes of the two decode kernels of one expert FFN, for launches
/// of 1-8 tokens (one mma n-tile) and of 9-16 tokens (`*_wide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeConfig {
    /// The fused W1/W3 kernel (silu(g)*u epilogue), 1-8 tokens.
    pub gate_up: KernelConfig,
    /// The W2 kernel, 1-8 tokens.
    pub down: KernelConfig,
    /// The fused W1/W3 kernel, 9-16 tokens.
    pub gate_up_wide: KernelConfig,
    /// The W2 kernel, 9-16 tokens.
    pub down_wide: KernelConfig,
}

impl DecodeConfig {
    /// The same shape for every kernel and token count.
    pub fn uniform(k: KernelConfig) -> DecodeConfig {
        DecodeConfig {
            gate_up: k,
            down: k,
            gate_up_wide: k,
            down_wide: k,
        }
    }

    /// Default shapes for an FFN of hidden size `m` and expert size `m_h`
    /// whose W2 is packed in [`DownLayout::default_for`] m (as
    /// [`ExpertWeights::pack`] does).
    pub fn auto(info: &DeviceInfo, m: usize, m_h: usize) -> DecodeConfig {
        Self::auto_layout(info, m, m_h, DownLayout::default_for(m))
    }

    /// Default shapes for a given W2 layout: gate/up 2 warps per block,
    /// unroll 4, about 14 warps per SM; down 8 warps, unroll 8, about 14
    /// (16-row tiles) or 8 (32-row tiles) warps per SM. With 32-row tiles,
    /// 9-16 tokens use two row units per warp (`rows` 2, unroll 2): gate/up
    /// 4 warps per block, down 8 warps, both about 14 warps per SM. From the
    /// H200 sweeps and A/B runs in NOTES.md.
    pub fn auto_layout(
        info: &DeviceInfo,
        m: usize,
        m_h: usize,
        layout: DownLayout,
    ) -> DecodeConfig {
        let sm = info.sm_count;
        let gate_up = KernelConfig::auto(sm, m_h / 16, m / 16, 2, 4, 14);
        let down = |rows: usize, unroll: u32, warps_per_sm: u32| {
            KernelConfig::auto(sm, (m / rows).max(1), m_h / 16, 8, unroll, warps_per_sm)
        };
        match layout {
            DownLayout::Tiles16 => DecodeConfig {
                gate_up,
                down: down(16, 8, 14),
                gate_up_wide: gate_up,
                down_wide: down(16, 8, 14),
            },
            DownLayout::Pairs32 => DecodeConfig {
                gate_up,
                // 32-row tiles with ~8 warps per SM: 1 split at Mixtral size;
                // unroll 4 (8 before run A8: in the whole model's decode
                // 0.01-0.07 ms per token slower in 5 of 5 in-call pairs on
                // an H200; every GPU test passes with 4, run A8; the
                // isolated layer step was not re-timed).
                // `WDMOE_DOWN_SHAPE=warps,unroll,warps_per_sm`, read once:
                // comparisons.
                down: down_shape_env().map_or(down(32, 4, 8), |(w, u, wps)| {
                    KernelConfig::auto(sm, (m / 32).max(1), m_h / 16, w, u, wps)
                }),
                // 9-16 tokens: two row units per warp (one token-fragment
                // load for two tiles), 4 warps per block for gate/up, 8 for
                // down, ~14 warps per SM (NOTES.md, v8).
                gate_up_wide: KernelConfig::auto_rows(sm, m_h / 16, m / 16, 4, 2, 14, 2),
                down_wide: KernelConfig::auto_rows(sm, (m / 32).max(1), m_h / 16, 8, 2, 14, 2),
            },
        }
    }

    pub(crate) fn check(&self, op: &'static str) -> Result<()> {
        self.gate_up.check(op)?;
        self.down.check(op)?;
        self.gate_up_wide.check(op)?;
        self.down_wide.check(op)
    }

    pub(crate) fn pick(&self, tokens: usize) -> (&KernelConfig, &KernelConfig) {
        if tokens > 8 {
            (&self.gate_up_wide, &self.down_wide)
        } else {
            (&self.gate_up, &self.down)
        }
    }
}

/// The W2 decode kernel's shape for 1-8 tokens on 32-row tiles from
/// `WDMOE_DOWN_SHAPE=warps,unroll,warps_per_sm` (comparisons; unset: the
/// default).
fn down_shape_env() -> Option<(u32, u32, u32)> {
    static SHAPE: std::sync::OnceLock<Option<(u32, u32, u32)>> = std::sync::OnceLock::new();
    *SHAPE.get_or_init(|| {
        crate::env::triple(
            "WDMOE_DOWN_SHAPE",
            |(_, u, _)| (4..=8).contains(&u),
            "warps,unroll,warps_per_sm with unroll 4..=8",
        )
    })
}

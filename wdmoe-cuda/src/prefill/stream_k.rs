//! Stream-K for the packed GEMM's last partial wave (kernels/stream_k.cuh):
//! whether it is on, and the device memory its split tiles meet in.
//!
//! A persistent launch of G blocks over T = W·G + R tiles leaves G − R
//! multiprocessors idle for the length of one tile at its end. With
//! stream-K on, the k blocks of the last R tiles are shared out in equal
//! ranges, and the pieces of a tile meet in fp32 through a workspace slot
//! per block and a flag per block ([`StreamK::region`]). That costs each
//! piece a pipeline fill, a round trip of its accumulators through L2, and
//! weights read again from DRAM (the token tiles that share an expert's
//! weights no longer run in step), so a launch splits its last wave only
//! where that wave is sparse: at most [`DEFAULT_MAX_PCT`] % of G tiles
//! (`WDMOE_PACKED_SK=P` for another share, `0` for never; see BENCHMARKS.md
//! for what the share drives). For the fp16-output launches (the experts'
//! gate/up and down GEMMs); [`crate::Gpu::set_packed_stream_k`] turns it
//! off (bitwise tests against whole tiles).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use cust::memory::DeviceBuffer;

use crate::error::{CudaCtx, Result};
use crate::runtime::addr;

/// Float4 chunks of accumulators a slot holds per consumer thread
/// (`SK_CHUNKS` in kernels/stream_k.cuh: gated 160-token tiles, 2 x 80
/// floats).
const CHUNKS: usize = 40;
/// Consumer threads of a packed GEMM block (two warpgroups).
const CONSUMERS: usize = 256;
/// Floats of one block's workspace slot (`SK_SLOT` float4 in the kernel).
const SLOT_FLOATS: usize = CHUNKS * CONSUMERS * 4;
/// Regions: consecutive launches of a pair or a chain overlap (each starts
/// on the multiprocessors its predecessor leaves), so they alternate
/// between two.
const REGIONS: usize = 2;

/// A region's workspace (one slot of [`CHUNKS`] x [`CONSUMERS`] float4 per
/// block) and flags (one i32 per block, zero between launches).
struct Buffers {
    ws: DeviceBuffer<f32>,
    flags: DeviceBuffer<i32>,
    blocks: usize,
}

/// The largest share of a wave (percent of the launch's blocks) that the
/// last partial wave may hold and still be split (the kernels' `sk`).
pub(crate) const DEFAULT_MAX_PCT: u32 = 50;

/// Per-GPU stream-K state: the share (0: off) and the lazily allocated
/// buffers.
pub(crate) struct StreamK {
    max_pct: AtomicU32,
    buffers: Mutex<Option<Buffers>>,
}

impl StreamK {
    /// [`DEFAULT_MAX_PCT`], or `WDMOE_PACKED_SK` (a percentage, 0..=100:
    /// 0 is off); no device memory until first used.
    pub(crate) fn new() -> StreamK {
        let pct = crate::env::number("WDMOE_PACKED_SK", |&p: &u32| p <= 100, "a share 0..=100 %")
            .unwrap_or(DEFAULT_MAX_PCT);
        StreamK {
            max_pct: AtomicU32::new(pct),
            buffers: Mutex::new(None),
        }
    }

    /// The share of a wave up to which a last partial wave is split (0:
    /// off).
    pub(crate) fn max_pct(&self) -> u32 {
        self.max_pct.load(Ordering::Relaxed)
    }

    /// On at [`DEFAULT_MAX_PCT`], or off.
    pub(crate) fn set(&self, on: bool) {
        self.max_pct
            .store(if on { DEFAULT_MAX_PCT } else { 0 }, Ordering::Relaxed);
    }

    /// Device addresses (workspace, flags) of region `r` for launches of at
    /// most `blocks` blocks (the GPU's multiprocessors: the launches'
    /// grids never exceed them, so the buffers are allocated once, on first
    /// use: about 21.6 MB per region at 132 blocks, zeroed; the kernels
    /// leave the flags zero).
    pub(crate) fn region(&self, r: usize, blocks: usize) -> Result<(u64, u64)> {
        let mut guard = self
            .buffers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.as_ref().is_none_or(|b| b.blocks < blocks) {
            // (Never replaced while launches use it: `blocks` is the same
            // for every call on a GPU.)
            let n = REGIONS * blocks * SLOT_FLOATS;
            let ws = DeviceBuffer::<f32>::zeroed(n).ctx("cuMemAlloc", || {
                format!("stream-K workspace: {n} x 4 bytes")
            })?;
            let flags = DeviceBuffer::<i32>::zeroed(REGIONS * blocks).ctx("cuMemAlloc", || {
                format!("stream-K flags: {} x 4 bytes", REGIONS * blocks)
            })?;
            *guard = Some(Buffers { ws, flags, blocks });
        }
        let b = guard.as_ref().expect("allocated above");
        let r = r % REGIONS;
        Ok((
            addr(&b.ws) + (r * b.blocks * SLOT_FLOATS * 4) as u64,
            addr(&b.flags) + (r * b.blocks * 4) as u64,
        ))
    }
}

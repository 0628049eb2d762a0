//! The device side of the expert-parallel MoE step (feature `nccl`): a rank
//! `1..world` loops: receive a header (bounded wait), then its rows, a
//! GPU-side hold of the emulated downlink airtime, its experts in turn, a
//! hold of the uplink airtime, and the output rows back. Every wait is
//! bounded (`Comm::wait`); the rank needs a communicator connected to the BS
//! at setup (`Comm::connect`, see `crate::nccl`).

use std::time::Duration;

use cust::memory::DeviceBuffer;
use half::f16;

use super::exec::{hold_ns, LocalExperts};
use super::placement::{Placement, BS_RANK};
use super::plan::{rank_segments, Command, Header, HEADER_WORDS};
use crate::error::{Error, Result};
use crate::nccl::Comm;
use crate::runtime::Gpu;

/// What a device rank served until told to stop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServeStats {
    /// Steps received.
    pub steps: u64,
    /// Rows computed.
    pub rows: u64,
}

/// A device rank (1..world): serves its experts' rows until the BS sends stop.
pub struct DeviceRank {
    comm: Comm,
    placement: Placement,
    local: LocalExperts,
    header: DeviceBuffer<u32>,
    xs: DeviceBuffer<f16>,
    ys: DeviceBuffer<f16>,
    held: DeviceBuffer<u64>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for DeviceRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRank")
            .field("comm", &self.comm)
            .field("local", &self.local)
            .finish()
    }
}

impl DeviceRank {
    /// The device side of `comm` (rank ≥ 1, connected to the BS by
    /// [`Comm::connect`]) with its experts (`LocalExperts::load` with this
    /// rank), steps of up to `max_tokens` tokens.
    pub fn new(
        gpu: &Gpu,
        comm: Comm,
        placement: Placement,
        local: LocalExperts,
        max_tokens: usize,
    ) -> Result<DeviceRank> {
        if comm.rank() == BS_RANK || comm.world() != placement.world() {
            return Err(Error::Dist {
                op: "DeviceRank::new",
                detail: format!(
                    "communicator rank {} of {}, placement of {} ranks (devices are ranks 1..)",
                    comm.rank(),
                    comm.world(),
                    placement.world()
                ),
            });
        }
        if !comm.is_connected(BS_RANK) {
            return Err(Error::Dist {
                op: "DeviceRank::new",
                detail: format!(
                    "rank {} is not connected to the BS: call Comm::connect(gpu, &[0], ..) at setup \
                     (else a BS that stalls before its first step hangs this rank)",
                    comm.rank()
                ),
            });
        }
        let rows = max_tokens.max(1) * placement.experts_on(comm.rank()).len().max(1);
        let m = local.m();
        Ok(DeviceRank {
            header: gpu.alloc(HEADER_WORDS)?,
            xs: gpu.alloc(rows * m)?,
            ys: gpu.alloc(rows * m)?,
            held: gpu.alloc(2)?,
            idle_timeout: crate::nccl::timeout_from_env(),
            comm,
            placement,
            local,
        })
    }

    /// The longest wait for the BS's next header (default
    /// `WDMOE_DIST_TIMEOUT_S` or 120 s); past it the communicator is
    /// aborted and [`DeviceRank::serve`] fails with [`Error::Timeout`].
    pub fn set_timeout(&mut self, t: Duration) {
        self.idle_timeout = t;
    }

    /// Serves steps until a stop header. Errors (a malformed header, a
    /// timeout, an NCCL error) abort the communicator. A BS that stalls
    /// (alive, sending nothing) ends it with [`Error::Timeout`] "the next
    /// header from the BS (rank r of w; …)" after the timeout; one that
    /// dies, with NCCL's error or the same timeout.
    pub fn serve(&mut self, gpu: &Gpu) -> Result<ServeStats> {
        let r = self.serve_inner(gpu);
        if r.is_err() {
            self.comm.abort();
        }
        r
    }

    fn serve_inner(&mut self, gpu: &Gpu) -> Result<ServeStats> {
        let rank = self.comm.rank();
        let m = self.local.m();
        let mut stats = ServeStats::default();
        loop {
            let header = &mut self.header;
            self.comm.group(|c| c.recv(gpu, header, BS_RANK))?;
            self.comm
                .wait(gpu, "the next header from the BS", self.idle_timeout)?;
            let words = gpu.download(&self.header)?;
            let h = Header::decode(&words, &self.placement, rank)?;
            if h.cmd == Command::Stop {
                return Ok(stats);
            }
            stats.steps += 1;
            let rows = h.rows as usize;
            if rows == 0 {
                continue;
            }
            if rows * m > self.xs.len() {
                return Err(Error::Dist {
                    op: "DeviceRank::serve",
                    detail: format!(
                        "{rows} rows, buffers hold {} (max_tokens too small on this rank)",
                        self.xs.len() / m
                    ),
                });
            }
            let xs = &mut self.xs;
            self.comm.group(|c| {
                let mut dst = xs.index(..rows * m);
                c.recv(gpu, &mut dst, BS_RANK)
            })?;
            hold_ns(gpu, h.hold_down_ns, &mut self.held.index(0..1))?;
            let segs = rank_segments(&self.placement, rank, &h.counts);
            let xs_v = self.xs.index(..rows * m);
            let mut ys_v = self.ys.index(..rows * m);
            self.local
                .run(gpu, h.layer as usize, &segs, &xs_v, &mut ys_v)?;
            hold_ns(gpu, h.hold_up_ns, &mut self.held.index(1..2))?;
            let ys = &self.ys;
            self.comm
                .group(|c| c.send(gpu, &ys.index(..rows * m), BS_RANK))?;
            stats.rows += rows as u64;
        }
    }
}

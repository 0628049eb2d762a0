//! The decode experts on a host-built plan: the path of steps whose
//! policy ran on the host, and the re-run of a device-planned step whose
//! plan differed from wdmoe-core's.

use cust::event::Event;
use cust::memory::DeviceSlice;
use half::f16;

use crate::error::Result;
use crate::ffn::{ffn_decode_combine, DecodeConfig, ExpertWeights, FfnWorkspace, RoutingPlan};
use crate::runtime::Gpu;

/// The decode experts on a host-built plan (`plan`, set from `groups`): for
/// each expert with tokens its two kernels (tokens by value, the combine
/// into `acc`), between events `events[2 + 2q]` and `events[3 + 2q]` when
/// given; returns the experts that ran between events.
#[allow(clippy::too_many_arguments)]
pub fn run_host_plan(
    gpu: &Gpu,
    experts: &[ExpertWeights],
    x: &DeviceSlice<f16>,
    plan: &RoutingPlan,
    groups: &[Vec<(usize, f32)>],
    acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
    events: Option<&[Event]>,
) -> Result<Vec<usize>> {
    let mut ran = Vec::new();
    for (q, group) in groups.iter().enumerate() {
        if group.is_empty() {
            continue;
        }
        if let Some(ev) = events {
            gpu.record_on(&ev[2 + 2 * q])?;
        }
        ffn_decode_combine(gpu, &experts[q], x, plan, q, acc, ws, cfg)?;
        if let Some(ev) = events {
            gpu.record_on(&ev[3 + 2 * q])?;
            ran.push(q);
        }
    }
    Ok(ran)
}

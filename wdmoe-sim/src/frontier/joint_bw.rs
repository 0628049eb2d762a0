//! Joint bandwidth allocation as a policy: per token, the whole band is
//! shared among the *selected* devices by [`wdmoe_core::bandwidth::min_max`]
//! (the allocation minimising the slowest selected device's latency, eq. 6
//! and 7); unselected devices get none. Against it, [`Allocation::Even`]:
//! each device keeps the scenario's bandwidth (the paper's even split) and a
//! subset's latency is its slowest member's.
//!
//! Cost: one `min_max` is a nested bisection (tens of microseconds for two
//! devices), too slow to call for every subset at every token and layer. The
//! channel is constant within a slot (and within a coherence block), and a
//! subset's min–max latency depends only on the channel, so
//! [`JointAllocator`] caches it per subset and clears the cache only when the
//! channel changes: the 36 subsets of at most 2 of 8 devices are solved at
//! most once per slot and reused by every layer (32 for Mixtral) and policy.

use std::collections::HashMap;
use wdmoe_core::bandwidth;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::Error;

/// How the band is shared among devices for one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// The scenario's per-device bandwidth (the paper's even split): a
    /// subset's latency is its slowest member's latency.
    Even,
    /// The whole band among the selected devices, min–max
    /// ([`wdmoe_core::bandwidth::min_max`]); unselected devices get none.
    MinMaxSelected,
}

impl std::fmt::Display for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Allocation::Even => "even",
            Allocation::MinMaxSelected => "min-max over the selected",
        })
    }
}

/// Per-slot subset latencies under an [`Allocation`], cached.
#[derive(Debug)]
pub struct JointAllocator<'a> {
    model: &'a LatencyModel<f64>,
    total_bandwidth_hz: f64,
    allocation: Allocation,
    /// This slot's per-device latency under the scenario's allocation \[s\].
    latency_s: Vec<f64>,
    /// This slot's links, by device (`None`: unreachable).
    links: Vec<Option<DeviceLink<f64>>>,
    cache: HashMap<Vec<usize>, f64>,
    key: Vec<usize>,
    devs: Vec<DeviceLink<f64>>,
    bw: Vec<f64>,
    solves: u64,
}

impl<'a> JointAllocator<'a> {
    /// An allocator of `total_bandwidth_hz` \[Hz\] over `n` devices.
    pub fn new(
        model: &'a LatencyModel<f64>,
        total_bandwidth_hz: f64,
        n: usize,
        allocation: Allocation,
    ) -> Self {
        Self {
            model,
            total_bandwidth_hz,
            allocation,
            latency_s: vec![f64::INFINITY; n],
            links: vec![None; n],
            cache: HashMap::new(),
            key: Vec::new(),
            devs: Vec::new(),
            bw: Vec::new(),
            solves: 0,
        }
    }

    /// The allocation.
    pub fn allocation(&self) -> Allocation {
        self.allocation
    }

    /// `min_max` solves so far (cache misses).
    pub fn solves(&self) -> u64 {
        self.solves
    }

    /// Sets the slot's channel: each device's latency under the scenario's
    /// allocation \[s\] (`+∞`: unreachable) and the links of the reachable
    /// ones. The cache is kept when nothing changed (a coherence block).
    pub fn set_slot<'l>(
        &mut self,
        latency_s: &[f64],
        links: impl Iterator<Item = (usize, &'l DeviceLink<f64>)>,
    ) -> Result<(), Error> {
        if latency_s.len() != self.latency_s.len() {
            return Err(Error::LengthMismatch);
        }
        let mut new_links = vec![None; latency_s.len()];
        for (q, l) in links {
            if let Some(slot) = new_links.get_mut(q) {
                *slot = Some(*l);
            }
        }
        // A device below the SNR floor is unreachable whatever its link.
        for (l, t) in new_links.iter_mut().zip(latency_s) {
            if !t.is_finite() {
                *l = None;
            }
        }
        if new_links != self.links || latency_s != self.latency_s.as_slice() {
            self.cache.clear();
            self.links = new_links;
            self.latency_s.copy_from_slice(latency_s);
        }
        Ok(())
    }

    /// The token latency \[s\] of serving it by `experts` (non-empty,
    /// reachable) under the allocation.
    pub fn latency_s(&mut self, experts: &[usize]) -> Result<f64, Error> {
        match self.allocation {
            Allocation::Even => wdmoe_core::latency::token_latency_s(&self.latency_s, experts),
            Allocation::MinMaxSelected => {
                self.key.clear();
                self.key.extend_from_slice(experts);
                self.key.sort_unstable();
                if let Some(&t) = self.cache.get(self.key.as_slice()) {
                    return Ok(t);
                }
                self.devs.clear();
                for &q in &self.key {
                    let l = self
                        .links
                        .get(q)
                        .ok_or(Error::OutOfRange("expert index"))?
                        .ok_or(Error::NoReachableExpert)?;
                    self.devs.push(l);
                }
                self.bw.clear();
                self.bw.resize(self.devs.len(), 0.0);
                let t = bandwidth::min_max(
                    self.model,
                    &self.devs,
                    self.total_bandwidth_hz,
                    &mut self.bw,
                )?;
                self.solves += 1;
                self.cache.insert(self.key.clone(), t);
                Ok(t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LatencyModel<f64> {
        LatencyModel::new(65_536.0, 352_393_216.0, 3.98e-21).unwrap()
    }

    #[test]
    fn selected_devices_share_the_whole_band() {
        let m = model();
        let near = DeviceLink::new(10.0, 1e-8, 0.2, 1e-8, 2e12).unwrap();
        let far = DeviceLink::new(10.0, 1e-11, 0.2, 1e-11, 2e12).unwrap();
        let total = 100e6;
        let even = [
            m.expert_latency_s(&near, total / 8.0).unwrap(),
            m.expert_latency_s(&far, total / 8.0).unwrap(),
        ];
        let mut a = JointAllocator::new(&m, total, 2, Allocation::MinMaxSelected);
        a.set_slot(&even, [(0, &near), (1, &far)].into_iter())
            .unwrap();
        // One device: the whole band.
        let t0 = a.latency_s(&[0]).unwrap();
        let full = m.expert_latency_s(&near, total).unwrap();
        assert!((t0 - full).abs() <= 1e-9 * full, "{t0} vs {full}");
        assert!(t0 < even[0]);
        // Both: min-max, no worse than half the band each, better than 1/8 each.
        let t01 = a.latency_s(&[1, 0]).unwrap();
        let half = m.expert_latency_s(&far, total / 2.0).unwrap();
        assert!(t01 <= half && t01 < even[1]);
        assert_eq!(a.latency_s(&[0, 1]).unwrap(), t01); // cached, order-free
        assert_eq!(a.solves(), 2);
        // Same channel: the cache survives; a new channel clears it.
        a.set_slot(&even, [(0, &near), (1, &far)].into_iter())
            .unwrap();
        a.latency_s(&[0]).unwrap();
        assert_eq!(a.solves(), 2);
        a.set_slot(&[even[0], f64::INFINITY], [(0, &near)].into_iter())
            .unwrap();
        a.latency_s(&[0]).unwrap();
        assert_eq!(a.solves(), 3);
        assert_eq!(a.latency_s(&[1]), Err(Error::NoReachableExpert));
    }

    #[test]
    fn even_is_the_slowest_member() {
        let m = model();
        let mut a = JointAllocator::new(&m, 100e6, 3, Allocation::Even);
        a.set_slot(&[1e-3, 4e-3, 2e-3], std::iter::empty()).unwrap();
        assert_eq!(a.latency_s(&[0, 2]).unwrap(), 2e-3);
        assert_eq!(a.latency_s(&[1, 0]).unwrap(), 4e-3);
        assert_eq!(a.solves(), 0);
    }
}

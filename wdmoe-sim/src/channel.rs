//! Channel model: per-device latencies (eq. 6) at each channel time slot.
//!
//! Composition of the core's formulas, never a re-implementation:
//! path loss ([`wdmoe_core::link::PathLossModel`]) + log-normal shadowing →
//! channel power gain ([`wdmoe_core::link::channel_power_gain`]) with a
//! small-scale fading power `|h|²` → Shannon rates and eq. (6)
//! ([`wdmoe_core::latency::LatencyModel::expert_latency_s`]) over the device's
//! bandwidth (even split, or [`wdmoe_core::bandwidth::min_max`] over all
//! devices on each prompt's large-scale channel — path loss and shadowing,
//! not fast fading, the time scale a scheduler adapts on).
//!
//! * **Large scale**, drawn once per prompt (a prompt is one snapshot of the
//!   cell): LOS or NLOS with the 3GPP LOS probability, and shadowing
//!   `N(0, σ²)` dB with the model's σ. Free space: always LOS, no shadowing.
//!   Downlink and uplink share the large-scale loss (reciprocity).
//! * **Small scale**, independent for downlink and uplink:
//!   `h = √(K/(K+1))·e^{jφ} + √(1/(K+1))·s`, `s ~ CN(0, 1)`, `|h|²` the
//!   fading power (Rayleigh: K = 0, so `|h|² ~ Exp(1)`; none: `|h|² = 1`).
//!   The scattered part `s` is redrawn every `coherence_tokens` slots (block
//!   fading), or evolves as `s ← ρ^Δ s + √(1−ρ^{2Δ}) w` over Δ slots (AR(1));
//!   within a slot it may also move on ([`ChannelRealisation::refade`],
//!   every `fading_layers` layers of a token).
//! * **SNR floor**: a link whose SNR `P·g²/(N0·B)` is below `radio.min_snr_db`
//!   carries nothing (below the lowest modulation and coding scheme): the
//!   device is unreachable for that slot. Without a floor (`-inf`, the
//!   paper's literal Shannon rate), Rayleigh fading gives the latency
//!   `L/(B·log2(1 + SNR·|h|²))` an infinite mean (`E\[1/|h|²\] = ∞` near
//!   deep fades), so Monte-Carlo means of plain top-k never converge.
//! * **Outages**: a device in outage is unreachable (latency `+∞`). The fault
//!   model never takes every device down at once: if it would, the device
//!   whose outage ends first (ties: lowest index) stays up for that slot, and
//!   the event is counted in [`ChannelRealisation::suppressed_outages`].
//!
//! Time is counted in *slots* of one token: with sequential accounting token
//! `j` is slot `j`; with batched prefill the whole prefill is slot 0 and decode
//! token `j` keeps slot `j`.

use crate::device::{self, DeviceCompute};
use crate::rng::{self, Rng};
use crate::scenario::{Allocation, Fading, PathLoss, Scenario, TimeModel};
use wdmoe_core::bandwidth;
use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::link::{self, PathLossModel, Uma, UmiStreetCanyon};
use wdmoe_core::Error;

/// The validated, prompt-independent part of the channel: everything needed
/// to turn random draws into per-device latencies.
#[derive(Debug, Clone)]
pub struct ChannelModel {
    n: usize,
    path_loss: PathLossModel<f64>,
    shadowing: bool,
    carrier_ghz: f64,
    distance_m: Vec<f64>,
    shares: Vec<f64>,
    bs_power_w: f64,
    device_power_w: Vec<f64>,
    /// Per device: the rate \[FLOP/s\] that gives one token's expert time
    /// under the compute model (`F / t(1)`), the form eq. (6) takes.
    compute_flops_per_s: Vec<f64>,
    /// Per device: the compute model's figures, for batches of tokens.
    compute: Vec<DeviceCompute>,
    weight_bytes: f64,
    latency: LatencyModel<f64>,
    total_bandwidth_hz: f64,
    allocation: Allocation,
    fading: Fading,
    rician_k: f64,
    time_model: TimeModel,
    coherence_slots: u32,
    rho: f64,
    outages: Vec<(usize, u32, u32)>,
    outage_p: f64,
    outage_len: u32,
    min_snr: f64,
}

impl ChannelModel {
    /// Builds the channel of a validated scenario.
    pub fn new(s: &Scenario) -> Result<Self, Error> {
        let shape = ExpertShape::new(s.model.hidden, s.model.ffn_hidden)?;
        let latency = LatencyModel::new(
            shape.payload_bits(s.model.bits_per_element)?,
            shape.flops_per_token(s.model.eta_flops)?,
            link::noise_psd_w_per_hz(s.radio.n0_dbm_per_hz, s.radio.noise_figure_db)?,
        )?;
        let flops = latency.flops_per_token();
        let weight_bytes = device::expert_weight_bytes(s);
        let mut compute = Vec::with_capacity(s.devices.len());
        for (i, d) in s.devices.iter().enumerate() {
            compute.push(
                device::resolve(d, i, s.model.compute_model)
                    .map_err(|_| Error::OutOfRange("device compute"))?,
            );
        }
        let compute_flops_per_s = compute
            .iter()
            .map(|c| flops / c.expert_time_s(1, flops, weight_bytes))
            .collect();
        let c = &s.channel;
        let path_loss = match c.path_loss {
            PathLoss::FreeSpace => PathLossModel::FreeSpace,
            PathLoss::Uma => PathLossModel::Uma(Uma::new(c.bs_height_m, c.ut_height_m)?),
            PathLoss::Umi => {
                PathLossModel::UmiStreetCanyon(UmiStreetCanyon::new(c.bs_height_m, c.ut_height_m)?)
            }
        };
        Ok(Self {
            n: s.devices.len(),
            path_loss,
            shadowing: c.shadowing,
            carrier_ghz: s.radio.carrier_ghz,
            distance_m: s.devices.iter().map(|d| d.distance_2d_m()).collect(),
            shares: s.devices.iter().map(|d| d.bandwidth_share).collect(),
            bs_power_w: s.radio.bs_tx_power_w,
            device_power_w: s.devices.iter().map(|d| d.tx_power_w).collect(),
            compute_flops_per_s,
            compute,
            weight_bytes,
            latency,
            total_bandwidth_hz: s.radio.total_bandwidth_hz,
            allocation: s.radio.allocation,
            fading: c.fading,
            rician_k: match c.fading {
                Fading::Rician => link::db_to_linear(c.rician_k_db)?,
                _ => 0.0,
            },
            time_model: c.time_model,
            coherence_slots: c.coherence_tokens.max(1),
            rho: c.ar1_rho,
            outages: c
                .outages
                .iter()
                .map(|o| {
                    (
                        o.device,
                        o.start_token,
                        o.start_token.saturating_add(o.tokens),
                    )
                })
                .collect(),
            outage_p: c.random_outages.probability_per_token,
            outage_len: c.random_outages.duration_tokens.max(1),
            min_snr: if s.radio.min_snr_db == f64::NEG_INFINITY {
                0.0
            } else {
                link::db_to_linear(s.radio.min_snr_db)?
            },
        })
    }

    /// Number of devices.
    pub fn n_devices(&self) -> usize {
        self.n
    }

    /// The core latency model (payload \[bit\], FLOPs, N0 \[W/Hz\]).
    pub fn latency_model(&self) -> &LatencyModel<f64> {
        &self.latency
    }

    /// Seconds device `q` computes `tokens` tokens of one expert (the
    /// compute model's; no link terms).
    pub fn compute_time_s(&self, q: usize, tokens: u32) -> f64 {
        self.compute[q].expert_time_s(tokens, self.latency.flops_per_token(), self.weight_bytes)
    }

    /// Mean path loss \[dB\] of device `q` in LOS (no shadowing).
    pub fn path_loss_db(&self, q: usize) -> Result<f64, Error> {
        self.path_loss
            .path_loss_db(self.carrier_ghz, self.distance_m[q], true)
    }

    /// Latency \[s\] of device `q` under the even split with no fading
    /// (`|h|² = 1`), LOS: the "typical" latency used in summaries.
    pub fn nominal_latency_s(&self, q: usize) -> Result<f64, Error> {
        let g2 = link::channel_power_gain(self.path_loss_db(q)?, 1.0)?;
        let dev = DeviceLink::new(
            self.bs_power_w,
            g2,
            self.device_power_w[q],
            g2,
            self.compute_flops_per_s[q],
        )?;
        self.latency
            .expert_latency_s(&dev, self.total_bandwidth_hz / self.n as f64)
    }

    /// Starts the channel of one prompt, drawing its large-scale state from `rng`.
    pub fn realise(&self, mut rng: Rng) -> Result<ChannelRealisation<'_>, Error> {
        let n = self.n;
        let mut pl_db = Vec::with_capacity(n);
        for q in 0..n {
            let d = self.distance_m[q];
            let (los, shadow) = match self.path_loss {
                PathLossModel::FreeSpace => (true, 0.0),
                _ => {
                    let p_los = self.path_loss.los_probability(d)?;
                    let los = rng::bernoulli(&mut rng, p_los);
                    let sh = if self.shadowing {
                        self.path_loss.shadow_std_db(los) * rng::normal(&mut rng)
                    } else {
                        0.0
                    };
                    (los, sh)
                }
            };
            pl_db.push(self.path_loss.path_loss_db(self.carrier_ghz, d, los)? + shadow);
        }
        let los_phase = (0..2 * n)
            .map(|_| std::f64::consts::TAU * rng::uniform(&mut rng))
            .collect();
        // Bandwidth per device, fixed for the prompt: the even split, or the
        // min–max allocation on the large-scale channel (path loss and
        // shadowing, no fast fading), the time scale a scheduler adapts on.
        let even = self.total_bandwidth_hz / n as f64;
        let mut device_bw = vec![even; n];
        if self.allocation == Allocation::Shares {
            let total: f64 = self.shares.iter().sum();
            for (b, s) in device_bw.iter_mut().zip(&self.shares) {
                *b = self.total_bandwidth_hz * s / total;
            }
        }
        if self.allocation == Allocation::MinMax {
            let mut links = Vec::with_capacity(n);
            for (q, &pl) in pl_db.iter().enumerate() {
                let g2 = link::channel_power_gain(pl, 1.0)?;
                links.push(DeviceLink::new(
                    self.bs_power_w,
                    g2,
                    self.device_power_w[q],
                    g2,
                    self.compute_flops_per_s[q],
                )?);
            }
            if bandwidth::min_max(
                &self.latency,
                &links,
                self.total_bandwidth_hz,
                &mut device_bw,
            )
            .is_err()
            {
                device_bw.iter_mut().for_each(|b| *b = even);
            }
        }
        let mut r = ChannelRealisation {
            model: self,
            rng,
            pl_db,
            los_phase,
            scatter: vec![(0.0, 0.0); 2 * n],
            outage_until: vec![0; n],
            time: None,
            evolved: 0.0,
            suppressed: 0,
            link_outages: 0,
            links: Vec::with_capacity(n),
            reach: Vec::with_capacity(n),
            left: Vec::with_capacity(n),
            bw: device_bw,
        };
        r.draw_scatter_all();
        Ok(r)
    }
}

/// The channel of one prompt: large-scale state, fading and outage state.
#[derive(Debug)]
pub struct ChannelRealisation<'a> {
    model: &'a ChannelModel,
    rng: Rng,
    pl_db: Vec<f64>,
    los_phase: Vec<f64>,
    /// Scattered component per (device, direction): index `2q` downlink, `2q+1` uplink.
    scatter: Vec<(f64, f64)>,
    /// Random outage of device q lasts while slot < outage_until\[q\].
    outage_until: Vec<u32>,
    time: Option<u32>,
    /// Fraction of a slot the AR(1) fading already evolved within the
    /// current slot ([`ChannelRealisation::refade`]).
    evolved: f64,
    suppressed: u64,
    link_outages: u64,
    links: Vec<DeviceLink<f64>>,
    reach: Vec<usize>,
    /// Remaining outage per device (a reused buffer).
    left: Vec<u32>,
    /// Bandwidth of each device for this prompt [Hz].
    bw: Vec<f64>,
}

impl ChannelRealisation<'_> {
    /// Path loss including shadowing \[dB\] of each device in this prompt.
    pub fn path_loss_db(&self) -> &[f64] {
        &self.pl_db
    }

    /// Bandwidth \[Hz\] of each device in this prompt (the even split, the
    /// shares, or the min–max allocation on the large-scale channel).
    pub fn bandwidth_hz(&self) -> &[f64] {
        &self.bw
    }

    /// How many times the fault model or the SNR floor kept a device up so
    /// that at least one device stayed reachable.
    pub fn suppressed_outages(&self) -> u64 {
        self.suppressed
    }

    /// Device-slots whose downlink or uplink SNR fell below the floor
    /// (`radio.min_snr_db`), making the device unreachable for that slot.
    pub fn link_outages(&self) -> u64 {
        self.link_outages
    }

    /// The links (gains, powers, compute) of the devices not in outage at
    /// the last [`ChannelRealisation::latency_at`] slot, with their indices:
    /// what a per-slot bandwidth allocation needs (`crate::frontier`).
    pub fn links(&self) -> impl Iterator<Item = (usize, &DeviceLink<f64>)> {
        self.reach.iter().copied().zip(&self.links)
    }

    fn draw_scatter_all(&mut self) {
        for i in 0..self.scatter.len() {
            let (x, y) = rng::normal_pair(&mut self.rng);
            let s = std::f64::consts::FRAC_1_SQRT_2;
            self.scatter[i] = (x * s, y * s);
        }
    }

    fn fading_power(&self, i: usize) -> f64 {
        match self.model.fading {
            Fading::None => 1.0,
            Fading::Rayleigh => {
                let (a, b) = self.scatter[i];
                a * a + b * b
            }
            Fading::Rician => {
                let k = self.model.rician_k;
                let los = (k / (k + 1.0)).sqrt();
                let sc = (1.0 / (k + 1.0)).sqrt();
                let (a, b) = self.scatter[i];
                let ph = self.los_phase[i];
                let re = los * ph.cos() + sc * a;
                let im = los * ph.sin() + sc * b;
                re * re + im * im
            }
        }
    }

    /// Advances the fading and outage state from the previous slot to `slot`.
    fn advance(&mut self, slot: u32) {
        let m = self.model;
        let prev = self.time;
        let steps = match prev {
            None => 0,
            Some(p) => slot.saturating_sub(p),
        };
        if steps > 0 {
            match m.time_model {
                TimeModel::Block => {
                    let p = prev.unwrap_or(0);
                    if p / m.coherence_slots != slot / m.coherence_slots {
                        self.draw_scatter_all();
                    }
                }
                TimeModel::Ar1 => {
                    // The part of the slot already evolved by refade() is
                    // not applied twice.
                    let r = if self.evolved == 0.0 {
                        m.rho.powi(steps.min(i32::MAX as u32) as i32)
                    } else {
                        m.rho.powf((steps as f64 - self.evolved).max(0.0))
                    };
                    self.evolved = 0.0;
                    let w = (1.0 - r * r).max(0.0).sqrt();
                    let s = std::f64::consts::FRAC_1_SQRT_2;
                    for i in 0..self.scatter.len() {
                        let (x, y) = rng::normal_pair(&mut self.rng);
                        let (a, b) = self.scatter[i];
                        self.scatter[i] = (r * a + w * x * s, r * b + w * y * s);
                    }
                }
            }
        }
        // Random outages start at each slot stepped over (slot 0 included).
        if m.outage_p > 0.0 {
            let first = prev.map_or(slot, |p| p.saturating_add(1));
            let last = slot;
            let mut t = first;
            while t <= last && (prev.is_none() || steps > 0) {
                for q in 0..m.n {
                    if self.outage_until[q] <= t && rng::bernoulli(&mut self.rng, m.outage_p) {
                        self.outage_until[q] = t.saturating_add(m.outage_len);
                    }
                }
                if t == u32::MAX {
                    break;
                }
                t += 1;
            }
        }
        self.time = Some(slot);
    }

    /// Remaining outage length of device `q` at `slot` (0 = reachable).
    fn outage_left(&self, q: usize, slot: u32) -> u32 {
        let mut left = self.outage_until[q].saturating_sub(slot);
        for &(d, start, end) in &self.model.outages {
            if d == q && slot >= start && slot < end {
                left = left.max(end - slot);
            }
        }
        left
    }

    /// Writes the latency \[s\] of every device at `slot` into `latency_s`
    /// (`+∞` for a device in outage). Slots must not decrease between calls.
    pub fn latency_at(&mut self, slot: u32, latency_s: &mut [f64]) -> Result<(), Error> {
        if latency_s.len() != self.model.n {
            return Err(Error::LengthMismatch);
        }
        self.advance(slot);
        self.fill(slot, latency_s)
    }

    /// Within slot `slot` (after [`ChannelRealisation::latency_at`] for it),
    /// moves the small-scale fading on by `fraction` of a slot — block
    /// fading: a fresh draw; AR(1): `ρ^fraction` — keeping the large-scale
    /// state and the outages, and writes the new latencies. The next slot's
    /// AR(1) step covers only the rest of the slot. For fading that changes
    /// within a token (`channel.fading_layers`).
    pub fn refade(&mut self, slot: u32, fraction: f64, latency_s: &mut [f64]) -> Result<(), Error> {
        let m = self.model;
        if latency_s.len() != m.n {
            return Err(Error::LengthMismatch);
        }
        match m.time_model {
            TimeModel::Block => self.draw_scatter_all(),
            TimeModel::Ar1 => {
                let r = m.rho.powf(fraction.max(0.0));
                let w = (1.0 - r * r).max(0.0).sqrt();
                let s = std::f64::consts::FRAC_1_SQRT_2;
                for i in 0..self.scatter.len() {
                    let (x, y) = rng::normal_pair(&mut self.rng);
                    let (a, b) = self.scatter[i];
                    self.scatter[i] = (r * a + w * x * s, r * b + w * y * s);
                }
                self.evolved += fraction.max(0.0);
            }
        }
        self.fill(slot, latency_s)
    }

    /// Latencies of slot `slot` from the current state.
    fn fill(&mut self, slot: u32, latency_s: &mut [f64]) -> Result<(), Error> {
        let m = self.model;
        self.links.clear();
        self.reach.clear();
        let mut left = std::mem::take(&mut self.left);
        left.clear();
        left.extend((0..m.n).map(|q| self.outage_left(q, slot)));
        if left.iter().all(|&l| l > 0) {
            // Keep the device whose outage ends first up (ties: lowest index).
            let mut best = 0;
            for q in 1..m.n {
                if left[q] < left[best] {
                    best = q;
                }
            }
            left[best] = 0;
            self.suppressed += 1;
        }
        for (q, &l) in left.iter().enumerate() {
            if l > 0 {
                continue;
            }
            let gd = link::channel_power_gain(self.pl_db[q], self.fading_power(2 * q))?;
            let gu = link::channel_power_gain(self.pl_db[q], self.fading_power(2 * q + 1))?;
            self.links.push(DeviceLink::new(
                m.bs_power_w,
                gd,
                m.device_power_w[q],
                gu,
                m.compute_flops_per_s[q],
            )?);
            self.reach.push(q);
        }
        latency_s.iter_mut().for_each(|t| *t = f64::INFINITY);
        // Below the SNR floor (the lowest modulation and coding scheme) a
        // link carries nothing: the device is unreachable for this slot. If
        // that leaves no device, the one closest to the floor is kept.
        let n0 = m.latency.n0_w_per_hz();
        let mut best: Option<(usize, f64, f64)> = None;
        let mut any_up = false;
        for (i, &q) in self.reach.iter().enumerate() {
            let dev = &self.links[i];
            let b = self.bw[q];
            let t = m.latency.expert_latency_s(dev, b)?;
            // A reachable device is never +inf: an absurd link budget gives a
            // huge but finite latency, so reachability is decided here alone.
            let t = if t.is_finite() { t } else { f64::MAX };
            let margin = if m.min_snr <= 0.0 {
                f64::INFINITY
            } else {
                let noise_w = n0 * b;
                let snr = (dev.tx_power_down_w() * dev.gain_down() / noise_w)
                    .min(dev.tx_power_up_w() * dev.gain_up() / noise_w);
                if snr.is_nan() {
                    0.0
                } else {
                    snr / m.min_snr
                }
            };
            if margin >= 1.0 {
                latency_s[q] = t;
                any_up = true;
            } else {
                self.link_outages += 1;
                if best.is_none_or(|(_, b, _)| margin > b) {
                    best = Some((q, margin, t));
                }
            }
        }
        if !any_up {
            if let Some((q, _, t)) = best {
                latency_s[q] = t;
                self.link_outages -= 1;
                self.suppressed += 1;
            }
        }
        self.left = left;
        Ok(())
    }
}

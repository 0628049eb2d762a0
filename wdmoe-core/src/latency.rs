//! Latency model: per expert, equation (6); per token, equation (7); per
//! prompt, equation (8); and the batched-prefill accounting of docs/SPEC.md.
//!
//! All latencies are in seconds. `+∞` means "never": an unreachable device.

use crate::error::{non_negative, positive};
use crate::{Error, Float};

/// One device's radio and compute parameters for one token: transmit powers
/// \[W\], channel *power* gains `g²` (linear) for downlink (BS → device) and
/// uplink (device → BS), and compute rate `C_q` [FLOP/s]. Validated on
/// construction, so a built value is always usable.
///
/// ```
/// use wdmoe_core::latency::DeviceLink;
/// let dev = DeviceLink::new(10.0_f64, 1e-9, 0.2, 1e-9, 2e12).unwrap();
/// assert_eq!(dev.compute_flops_per_s(), 2e12);
/// assert!(DeviceLink::new(10.0_f64, 1e-9, -0.2, 1e-9, 2e12).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceLink<F> {
    tx_power_down_w: F,
    gain_down: F,
    tx_power_up_w: F,
    gain_up: F,
    compute_flops_per_s: F,
}

impl<F: Float> DeviceLink<F> {
    /// Builds a device link; powers and gains must be finite and ≥ 0, the
    /// compute rate finite and > 0.
    pub fn new(
        tx_power_down_w: F,
        gain_down: F,
        tx_power_up_w: F,
        gain_up: F,
        compute_flops_per_s: F,
    ) -> Result<Self, Error> {
        Ok(Self {
            tx_power_down_w: non_negative(tx_power_down_w, "tx_power_down_w")?,
            gain_down: non_negative(gain_down, "gain_down")?,
            tx_power_up_w: non_negative(tx_power_up_w, "tx_power_up_w")?,
            gain_up: non_negative(gain_up, "gain_up")?,
            compute_flops_per_s: positive(compute_flops_per_s, "compute_flops_per_s")?,
        })
    }
    /// Base-station transmit power \[W\].
    pub fn tx_power_down_w(&self) -> F {
        self.tx_power_down_w
    }
    /// Downlink channel power gain (linear).
    pub fn gain_down(&self) -> F {
        self.gain_down
    }
    /// Device transmit power \[W\].
    pub fn tx_power_up_w(&self) -> F {
        self.tx_power_up_w
    }
    /// Uplink channel power gain (linear).
    pub fn gain_up(&self) -> F {
        self.gain_up
    }
    /// Device compute rate `C_q` [FLOP/s].
    pub fn compute_flops_per_s(&self) -> F {
        self.compute_flops_per_s
    }
}

/// The system constants of the latency model: payload per token and direction
/// \[bit\] (eq. 5), expert FLOPs per token (eq. 4), and the noise power spectral
/// density [W/Hz].
///
/// ```
/// use wdmoe_core::{compute::ExpertShape, latency::{DeviceLink, LatencyModel}, link};
/// let shape = ExpertShape::MIXTRAL_8X7B;
/// let model = LatencyModel::new(
///     shape.payload_bits(16.0_f64).unwrap(),   // 65,536 bit
///     shape.flops_per_token(4.0).unwrap(),     // 352,393,216 FLOP
///     link::noise_psd_w_per_hz(-174.0, 0.0).unwrap(),
/// ).unwrap();
/// let pl = link::free_space_path_loss_db(3.5, 100.0).unwrap();
/// let g2 = link::channel_power_gain(pl, 1.0).unwrap();
/// let dev = DeviceLink::new(10.0, g2, 0.2, g2, 2e12).unwrap();
/// let t = model.expert_latency_s(&dev, 12.5e6).unwrap();
/// assert!(t > 0.000176 && t < 0.001); // compute alone: 352e6 / 2e12 = 176 µs
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel<F> {
    payload_bits: F,
    flops_per_token: F,
    n0_w_per_hz: F,
}

impl<F: Float> LatencyModel<F> {
    /// Validated constructor: `payload_bits` and `flops_per_token` finite and
    /// ≥ 0, `n0_w_per_hz` finite and > 0.
    pub fn new(payload_bits: F, flops_per_token: F, n0_w_per_hz: F) -> Result<Self, Error> {
        Ok(Self {
            payload_bits: non_negative(payload_bits, "payload_bits")?,
            flops_per_token: non_negative(flops_per_token, "flops_per_token")?,
            n0_w_per_hz: positive(n0_w_per_hz, "n0_w_per_hz")?,
        })
    }
    /// Payload per token and direction \[bit\].
    pub fn payload_bits(&self) -> F {
        self.payload_bits
    }
    /// Expert FLOPs per token.
    pub fn flops_per_token(&self) -> F {
        self.flops_per_token
    }
    /// Noise power spectral density [W/Hz].
    pub fn n0_w_per_hz(&self) -> F {
        self.n0_w_per_hz
    }

    /// Downlink and uplink rates \[bit/s\] of `dev` over `bandwidth_hz`
    /// (eq. 2, 3).
    ///
    /// ```
    /// use wdmoe_core::latency::{DeviceLink, LatencyModel};
    /// let model = LatencyModel::new(65_536.0_f64, 352_393_216.0, 1e-21).unwrap();
    /// let dev = DeviceLink::new(1.0, 1e-9, 0.1, 1e-9, 1e12).unwrap();
    /// // SNR down 1·1e-9/(1e-21·1e6) = 1e6, up 1e5, over 1 MHz:
    /// let (rd, ru) = model.rates_bps(&dev, 1e6).unwrap();
    /// assert!((rd - 1e6 * 1_000_001f64.log2()).abs() < 1e-6);
    /// assert!((ru - 1e6 * 100_001f64.log2()).abs() < 1e-6);
    /// ```
    pub fn rates_bps(&self, dev: &DeviceLink<F>, bandwidth_hz: F) -> Result<(F, F), Error> {
        let rd = crate::link::shannon_rate_bps(
            bandwidth_hz,
            dev.tx_power_down_w,
            dev.gain_down,
            self.n0_w_per_hz,
        )?;
        let ru = crate::link::shannon_rate_bps(
            bandwidth_hz,
            dev.tx_power_up_w,
            dev.gain_up,
            self.n0_w_per_hz,
        )?;
        Ok((rd, ru))
    }

    /// Equation (6) for one token: `L_comm/R_d + L_comp/C_q + L_comm/R_u` \[s\];
    /// `+∞` when a rate is 0.
    ///
    /// ```
    /// use wdmoe_core::latency::{DeviceLink, LatencyModel};
    /// let model = LatencyModel::new(65_536.0_f64, 352_393_216.0, 1e-21).unwrap();
    /// let dev = DeviceLink::new(1.0, 1e-9, 0.1, 1e-9, 1e12).unwrap();
    /// // 65,536/19.93e6 + 352,393,216/1e12 + 65,536/16.61e6 = 7.5861 ms
    /// let t = model.expert_latency_s(&dev, 1e6).unwrap();
    /// assert!((t - 7.586100e-3).abs() < 1e-9);
    /// let dead = DeviceLink::new(1.0, 0.0, 0.1, 1e-9, 1e12).unwrap();
    /// assert_eq!(model.expert_latency_s(&dead, 1e6).unwrap(), f64::INFINITY);
    /// ```
    pub fn expert_latency_s(&self, dev: &DeviceLink<F>, bandwidth_hz: F) -> Result<F, Error> {
        let (rd, ru) = self.rates_bps(dev, bandwidth_hz)?;
        expert_latency_s(
            self.payload_bits,
            self.flops_per_token,
            rd,
            dev.compute_flops_per_s,
            ru,
        )
    }

    /// The latency \[s\] the device approaches with unlimited bandwidth:
    /// `L_comp/C_q + L_comm·N0·ln2/(P_d·g_d²) + L_comm·N0·ln2/(P_u·g_u²)`
    /// (`+∞` for a zero power or gain).
    ///
    /// ```
    /// use wdmoe_core::latency::{DeviceLink, LatencyModel};
    /// let model = LatencyModel::new(65_536.0_f64, 352_393_216.0, 1e-21).unwrap();
    /// let dev = DeviceLink::new(1.0, 1e-9, 0.1, 1e-9, 1e12).unwrap();
    /// // 352.393216 µs + 65,536·1e-21·ln2/1e-9 + 65,536·1e-21·ln2/1e-10 = 352.8929 µs
    /// assert!((model.latency_floor_s(&dev) - 3.528929e-4).abs() < 1e-10);
    /// ```
    pub fn latency_floor_s(&self, dev: &DeviceLink<F>) -> F {
        let ln2 = F::from_f64(core::f64::consts::LN_2);
        let c = self.payload_bits * self.n0_w_per_hz * ln2;
        let normal = |x: F| x.is_finite() && x >= F::MIN_POSITIVE;
        let comm = |p: F, g: F| {
            if self.payload_bits == F::ZERO {
                F::ZERO
            } else if p > F::ZERO && g > F::ZERO {
                let pg = p * g;
                if normal(c) && normal(pg) {
                    c / pg
                } else {
                    // A product overflowed or lost precision (subnormal): the
                    // logarithms of the finite, positive factors are exact enough.
                    F::from_f64(2.0).powf(
                        self.payload_bits.log2() + self.n0_w_per_hz.log2() + ln2.log2()
                            - p.log2()
                            - g.log2(),
                    )
                }
            } else {
                F::INFINITY
            }
        };
        self.flops_per_token / dev.compute_flops_per_s
            + comm(dev.tx_power_down_w, dev.gain_down)
            + comm(dev.tx_power_up_w, dev.gain_up)
    }
}

/// Equation (6): latency \[s\] of one token on one expert's device,
/// `payload_bits/rate_down_bps + flops/compute_flops_per_s + payload_bits/rate_up_bps`.
/// A zero rate gives `+∞` (unreachable) unless the payload is 0.
///
/// ```
/// // 65,536 bit at 100 Mbit/s down, 352.4 MFLOP at 1 TFLOP/s, 65,536 bit at 10 Mbit/s up
/// // = 0.65536 ms + 0.352393216 ms + 6.5536 ms = 7.561353216 ms
/// let t = wdmoe_core::latency::expert_latency_s(65_536.0_f64, 352_393_216.0, 100e6, 1e12, 10e6).unwrap();
/// assert!((t - 7.561353216e-3).abs() < 1e-15);
/// ```
pub fn expert_latency_s<F: Float>(
    payload_bits: F,
    flops: F,
    rate_down_bps: F,
    compute_flops_per_s: F,
    rate_up_bps: F,
) -> Result<F, Error> {
    let l = non_negative(payload_bits, "payload_bits")?;
    let flops = non_negative(flops, "flops")?;
    let c = positive(compute_flops_per_s, "compute_flops_per_s")?;
    let comm = |r: F, what| -> Result<F, Error> {
        if r.is_nan() {
            return Err(Error::NaN(what));
        }
        if r < F::ZERO {
            return Err(Error::Negative(what));
        }
        Ok(if l == F::ZERO {
            F::ZERO
        } else if r == F::ZERO {
            F::INFINITY
        } else {
            l / r
        })
    };
    Ok(comm(rate_down_bps, "rate_down_bps")? + flops / c + comm(rate_up_bps, "rate_up_bps")?)
}

/// Equation (7): a token's latency in one layer, the slowest of its selected
/// experts, `max_{q ∈ experts} latency_s[q]` \[s\].
///
/// ```
/// let t = wdmoe_core::latency::token_latency_s(&[0.3_f64, 0.1, 0.7], &[0, 1]).unwrap();
/// assert_eq!(t, 0.3);
/// ```
pub fn token_latency_s<F: Float>(latency_s: &[F], experts: &[usize]) -> Result<F, Error> {
    if experts.is_empty() {
        return Err(Error::Empty);
    }
    let mut worst = F::ZERO;
    for &q in experts {
        let t = *latency_s.get(q).ok_or(Error::OutOfRange("expert index"))?;
        if t.is_nan() {
            return Err(Error::NaN("latency_s"));
        }
        if t <= F::ZERO {
            return Err(Error::LatencyNotPositive);
        }
        worst = worst.max_of(t);
    }
    Ok(worst)
}

/// Equation (8): prompt latency \[s\], the sum of every token's per-layer
/// latency (tokens and layers one after another).
///
/// ```
/// let t = wdmoe_core::latency::sequential_prompt_latency_s(&[0.25_f64, 0.5, 0.125]).unwrap();
/// assert_eq!(t, 0.875);
/// ```
pub fn sequential_prompt_latency_s<F: Float>(token_layer_latency_s: &[F]) -> Result<F, Error> {
    let mut sum = F::ZERO;
    for &t in token_layer_latency_s {
        sum += non_negative_or_inf(t)?;
    }
    Ok(sum)
}

fn non_negative_or_inf<F: Float>(t: F) -> Result<F, Error> {
    if t.is_nan() {
        Err(Error::NaN("latency_s"))
    } else if t < F::ZERO {
        Err(Error::Negative("latency_s"))
    } else {
        Ok(t)
    }
}

/// Batched prefill accounting of one layer (docs/SPEC.md): every token routed to a
/// device travels in one transmission, devices work in parallel, and the layer
/// takes as long as the slowest device: `max_q n_q · t_q` \[s\], with `n_q`
/// = `tokens_per_expert[q]` and `t_q` = `latency_per_token_s[q]` (eq. 6).
/// Never more than the sequential sum over the same tokens (eq. 7, 8).
///
/// ```
/// // device 0: 3 tokens × 1 ms, device 1: 1 token × 2.5 ms, device 2 idle (unreachable)
/// let t = wdmoe_core::latency::batched_layer_latency_s(&[3, 1, 0], &[1e-3_f64, 2.5e-3, f64::INFINITY]).unwrap();
/// assert!((t - 3e-3).abs() < 1e-15);
/// ```
pub fn batched_layer_latency_s<F: Float>(
    tokens_per_expert: &[u32],
    latency_per_token_s: &[F],
) -> Result<F, Error> {
    if tokens_per_expert.len() != latency_per_token_s.len() {
        return Err(Error::LengthMismatch);
    }
    let mut worst = F::ZERO;
    for (&n, &t) in tokens_per_expert.iter().zip(latency_per_token_s) {
        let t = non_negative_or_inf(t)?;
        if n > 0 {
            worst = worst.max_of(F::from_u32(n) * t);
        }
    }
    Ok(worst)
}

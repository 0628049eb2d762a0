//! `[[devices]]`: where each expert's device is, its power and its compute.

use super::{check_finite, check_positive, check_range, err, ScenarioError, MIN_DISTANCE_M};
use crate::device::ComputeModel;
use serde::{Deserialize, Serialize};

/// One device: it hosts expert `q` of every MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// A label for tables.
    #[serde(default)]
    pub name: String,
    /// 2-D distance to the base station \[m\]; give this or `position_m`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub distance_m: f64,
    /// Position `[x, y]` \[m\] with the base station at the origin; an
    /// alternative to `distance_m`. Exactly two numbers.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "two_numbers"
    )]
    pub position_m: Option<[f64; 2]>,
    /// Uplink transmit power \[W\] (paper: 0.2).
    #[serde(default = "default_device_power")]
    pub tx_power_w: f64,
    /// A named device ([`crate::device::PRESETS`]) filling `peak_tflops`,
    /// `memory_bandwidth_gbps` and `memory_gb`; keys given here override it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preset: String,
    /// Peak dense fp16 rate \[TFLOP/s\] (10^12 FLOP/s), for the roofline model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_tflops: Option<f64>,
    /// Memory bandwidth \[GB/s\] (10^9 byte/s), for the roofline model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bandwidth_gbps: Option<f64>,
    /// Memory \[GB\] (10^9 byte): a run reports a device smaller than its experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<f64>,
    /// The paper's `C_q` \[TFLOP/s\] (`model.compute_model = "paper"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_tflops: Option<f64>,
    /// Bandwidth weight for `allocation = "shares"`: the device gets
    /// `total_bandwidth_hz × share / Σ shares` (default 1: the even split).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub bandwidth_share: f64,
}

impl Device {
    /// Device preset `preset` ([`crate::device::PRESETS`]) at `distance_m`
    /// \[m\], with the paper's 0.2 W and an equal bandwidth share.
    pub fn at(distance_m: f64, preset: &str) -> Self {
        Self {
            name: preset.to_string(),
            distance_m,
            position_m: None,
            tx_power_w: 0.2,
            preset: preset.to_string(),
            peak_tflops: None,
            memory_bandwidth_gbps: None,
            memory_gb: None,
            compute_tflops: None,
            bandwidth_share: 1.0,
        }
    }

    /// A roofline device at `distance_m` \[m\] with a peak rate
    /// \[TFLOP/s\] and a memory bandwidth \[GB/s\].
    pub fn roofline(distance_m: f64, peak_tflops: f64, memory_bandwidth_gbps: f64) -> Self {
        Self {
            name: String::new(),
            preset: String::new(),
            peak_tflops: Some(peak_tflops),
            memory_bandwidth_gbps: Some(memory_bandwidth_gbps),
            ..Self::at(distance_m, "")
        }
    }

    /// A device of the paper's model at `distance_m` \[m\] with `C_q` =
    /// `compute_tflops` \[TFLOP/s\] (needs `model.compute_model = "paper"`).
    pub fn paper(distance_m: f64, compute_tflops: f64) -> Self {
        Self {
            name: String::new(),
            preset: String::new(),
            compute_tflops: Some(compute_tflops),
            ..Self::at(distance_m, "")
        }
    }

    /// 2-D distance to the base station \[m\], from `position_m` when given.
    pub fn distance_2d_m(&self) -> f64 {
        match self.position_m {
            Some([x, y]) => x.hypot(y),
            None => self.distance_m,
        }
    }
}

/// `[x, y]`, exactly two numbers (a third is an error, not dropped).
fn two_numbers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
    let v: Vec<f64> = Vec::deserialize(d)?;
    match v[..] {
        [x, y] => Ok(Some([x, y])),
        _ => Err(serde::de::Error::custom(format!(
            "position_m must be [x, y], two numbers (got {})",
            v.len()
        ))),
    }
}

fn default_device_power() -> f64 {
    0.2
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The default eight devices over a macro cell of 600 m radius, each a
/// preset of [`crate::device::PRESETS`] (sources there):
///
/// | # | preset | memory bandwidth | peak fp16 | memory | one token through one expert | distance |
/// |---|---|---|---|---|---|---|
/// | 0 | `jetson-agx-orin-64gb` (edge box) | 204.8 GB/s | 42.5 TFLOP/s | 64 GB | 1.72 ms | 50 m |
/// | 1 | `snapdragon-8-gen-3` (flagship phone) | 76.8 GB/s | 5 TFLOP/s | 16 GB | 4.59 ms | 120 m |
/// | 2 | `apple-m2` (tablet) | 100 GB/s | 3.6 TFLOP/s | 24 GB | 3.52 ms | 190 m |
/// | 3 | `phone-midrange` | 34.1 GB/s | 2 TFLOP/s | 12 GB | 10.3 ms | 260 m |
/// | 4 | `jetson-agx-orin-64gb` | 204.8 GB/s | 42.5 TFLOP/s | 64 GB | 1.72 ms | 330 m |
/// | 5 | `snapdragon-8-gen-3` | 76.8 GB/s | 5 TFLOP/s | 16 GB | 4.59 ms | 400 m |
/// | 6 | `apple-m2` | 100 GB/s | 3.6 TFLOP/s | 24 GB | 3.52 ms | 500 m |
/// | 7 | `phone-midrange` at the cell edge | 34.1 GB/s | 2 TFLOP/s | 12 GB | 10.3 ms | 600 m |
///
/// **Compute** (roofline, [`crate::device`]): one token through one expert
/// reads its 352 MB of fp16 weights for 352 MFLOP, so every device here is
/// memory-bound for one token (the time column: weights / bandwidth), while
/// moving its 64 kbit each way over 12.5 MHz takes 0.3–1 ms: the devices'
/// memory bandwidths, spread 6× here, are the main source of latency spread;
/// the radio adds distance and fading. This spread is a choice, and it sets
/// the result: `wdmoe sensitivity` shows the reduction with identical
/// devices (α = 0) and with the spread halved and doubled.
///
/// **Memory**: each device holds one expert of all 32 layers (11.3 GB in
/// fp16); all eight have room. Presets that do not (`jetson-orin-nano-8gb`,
/// `apple-a17-pro`) are reported by every run that uses them.
///
/// **Distances** are spread evenly from near the mast to the edge of a 600 m
/// macro cell; with the paper's link budget the radio is fast at any of
/// them, so the radius moves the reduction little (see `wdmoe sensitivity`).
pub fn default_devices() -> Vec<Device> {
    let d = [
        ("edge-box", 50.0, "jetson-agx-orin-64gb"),
        ("phone-flagship", 120.0, "snapdragon-8-gen-3"),
        ("tablet", 190.0, "apple-m2"),
        ("phone-midrange", 260.0, "phone-midrange"),
        ("edge-box", 330.0, "jetson-agx-orin-64gb"),
        ("phone-flagship", 400.0, "snapdragon-8-gen-3"),
        ("tablet", 500.0, "apple-m2"),
        ("phone-midrange", 600.0, "phone-midrange"),
    ];
    d.iter()
        .map(|&(name, distance_m, preset)| Device {
            name: name.to_string(),
            ..Device::at(distance_m, preset)
        })
        .collect()
}

impl Device {
    /// Checks device `i`'s keys and that its compute figures resolve under
    /// `model` ([`crate::device::resolve`]).
    pub fn validate(&self, i: usize, model: ComputeModel) -> Result<(), ScenarioError> {
        let d = self;
        if let Some([x, y]) = d.position_m {
            check_finite(&format!("devices[{i}].position_m[0]"), x)?;
            check_finite(&format!("devices[{i}].position_m[1]"), y)?;
            if d.distance_m != 0.0 {
                return Err(err(
                    format!("devices[{i}].position_m"),
                    "give distance_m or position_m, not both",
                ));
            }
            let r = x.hypot(y);
            if !(MIN_DISTANCE_M..=1e7).contains(&r) {
                return Err(err(
                    format!("devices[{i}].position_m"),
                    format!(
                        "distance to the base station must be in [{MIN_DISTANCE_M}, 1e7] m (got {r})"
                    ),
                ));
            }
        } else {
            check_positive(&format!("devices[{i}].distance_m"), d.distance_m).map_err(|e| {
                err(
                    e.key,
                    format!("{} (give distance_m or position_m)", e.reason),
                )
            })?;
            check_range(
                &format!("devices[{i}].distance_m"),
                d.distance_m,
                MIN_DISTANCE_M,
                1e7,
                false,
            )?;
        }
        check_positive(&format!("devices[{i}].tx_power_w"), d.tx_power_w)?;
        check_range(
            &format!("devices[{i}].tx_power_w"),
            d.tx_power_w,
            0.0,
            1e6,
            false,
        )?;
        check_range(
            &format!("devices[{i}].bandwidth_share"),
            d.bandwidth_share,
            0.0,
            1e9,
            false,
        )?;
        check_positive(&format!("devices[{i}].bandwidth_share"), d.bandwidth_share)?;
        for (key, v, lo, hi) in [
            ("peak_tflops", d.peak_tflops, 1e-9, 1e6),
            ("memory_bandwidth_gbps", d.memory_bandwidth_gbps, 1e-6, 1e7),
            ("memory_gb", d.memory_gb, 1e-6, 1e9),
            ("compute_tflops", d.compute_tflops, 1e-9, 1e6),
        ] {
            if let Some(v) = v {
                check_range(&format!("devices[{i}].{key}"), v, lo, hi, false)?;
            }
        }
        crate::device::resolve(d, i, model)?;
        Ok(())
    }
}

//! How long a device takes to run its expert: the compute models and the
//! device presets.
//!
//! # Compute models (`model.compute_model`)
//!
//! * **`roofline`** (default): a device has a peak dense fp16 rate `P`
//!   \[FLOP/s\] and a memory bandwidth `B` \[byte/s\]. Running `n` tokens
//!   through one expert reads the expert's weights once (`W` bytes: `3·m·m_h`
//!   weights × `model.weight_bits` / 8; 352 MB for Mixtral in fp16) and does
//!   `n·F` FLOPs (`F` = eq. 4's `L_comp`), so it takes
//!   `max(n·F / P, W / B)`. One decode token is memory-bound on every device
//!   listed below (`W/B` ≫ `F/P`); a batched prefill of many tokens becomes
//!   compute-bound. The link terms of eq. (6) are added per token.
//!   Use it for anything about real devices, and always for batched prefill.
//! * **`paper`**: the paper's eq. (6) literally, `n·F / C_q` with `C_q` "the
//!   FLOPS of the GPU" (`compute_tflops`, or the device's `peak_tflops` when
//!   `compute_tflops` is not given). It charges no weight reading, so with a
//!   peak rate the compute of one token takes microseconds and the radio
//!   dominates; with a sustained rate (`compute_tflops` ≈ bandwidth × 1
//!   FLOP/byte) it matches the roofline for one token but charges the weights
//!   again for every token of a batch. Use it to reproduce the paper's
//!   formula, not to predict devices.
//!
//! # Presets (`devices[i].preset`)
//!
//! A preset fills `peak_tflops`, `memory_bandwidth_gbps` and `memory_gb`;
//! keys given in the file override it. [`PRESETS`] lists them with their
//! sources. A device whose memory is smaller than its experts (32 layers × 352
//! MB = 11.3 GB for Mixtral in fp16) is reported by every run
//! ([`memory_shortfalls`]): it cannot hold them and would have to stream
//! them from storage, which this model does not charge.

use crate::scenario::{Device, Scenario, ScenarioError};
use serde::{Deserialize, Serialize};

/// How a device's expert time is computed (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ComputeModel {
    /// `max(n·F / peak, weight bytes / bandwidth)`.
    #[default]
    Roofline,
    /// The paper's `n·F / C_q`.
    Paper,
}

/// A named device with public figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// The name used in scenario files.
    pub name: &'static str,
    /// What it is.
    pub what: &'static str,
    /// Peak dense fp16 rate \[TFLOP/s\].
    pub peak_tflops: f64,
    /// Memory bandwidth \[GB/s\] (10^9 byte/s).
    pub memory_bandwidth_gbps: f64,
    /// Memory \[GB\] (10^9 byte).
    pub memory_gb: f64,
    /// Where the figures come from.
    pub source: &'static str,
}

/// The device presets.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "a40",
        what: "NVIDIA A40 (the paper's GPU)",
        peak_tflops: 149.7,
        memory_bandwidth_gbps: 696.0,
        memory_gb: 48.0,
        source: "NVIDIA A40 datasheet: FP16 tensor 149.7 TFLOPS dense (299.4 with sparsity), 48 GB GDDR6, 696 GB/s",
    },
    Preset {
        name: "h100-sxm",
        what: "NVIDIA H100 SXM5",
        peak_tflops: 989.4,
        memory_bandwidth_gbps: 3350.0,
        memory_gb: 80.0,
        source: "NVIDIA H100 datasheet: FP16 tensor 989.4 TFLOPS dense (1,979 with sparsity), 80 GB HBM3, 3.35 TB/s",
    },
    Preset {
        name: "h200",
        what: "NVIDIA H200 SXM",
        peak_tflops: 989.4,
        memory_bandwidth_gbps: 4800.0,
        memory_gb: 141.0,
        source: "NVIDIA H200 datasheet: FP16 tensor 989.4 TFLOPS dense, 141 GB HBM3e, 4.8 TB/s",
    },
    Preset {
        name: "h200-measured",
        what: "H200 as measured by this project's kernels",
        peak_tflops: 700.0,
        memory_bandwidth_gbps: 4060.0,
        memory_gb: 141.0,
        source: "BENCHMARKS.md: one Mixtral expert (352.3 MB) decodes one token in 86.8 us (4.06 TB/s); the prefill GEMMs sustain 692-719 TFLOP/s",
    },
    Preset {
        name: "jetson-agx-orin-64gb",
        what: "NVIDIA Jetson AGX Orin 64 GB",
        peak_tflops: 42.5,
        memory_bandwidth_gbps: 204.8,
        memory_gb: 64.0,
        source: "Jetson AGX Orin technical brief: 64 GB LPDDR5 at 204.8 GB/s; GPU 170 sparse INT8 TOPS, i.e. 42.5 dense fp16 TFLOPS (sparse INT8 / 4)",
    },
    Preset {
        name: "jetson-orin-nano-8gb",
        what: "NVIDIA Jetson Orin Nano 8 GB (original clocks)",
        peak_tflops: 10.0,
        memory_bandwidth_gbps: 68.0,
        memory_gb: 8.0,
        source: "Jetson Orin Nano datasheet: 8 GB LPDDR5 at 68 GB/s; 40 sparse INT8 TOPS, i.e. 10 dense fp16 TFLOPS (sparse INT8 / 4)",
    },
    Preset {
        name: "apple-m2",
        what: "Apple M2 (tablet / laptop), 24 GB",
        peak_tflops: 3.6,
        memory_bandwidth_gbps: 100.0,
        memory_gb: 24.0,
        source: "Apple M2 announcement (June 2022): 100 GB/s unified memory, up to 24 GB, 10-core GPU 3.6 TFLOPS",
    },
    Preset {
        name: "snapdragon-8-gen-3",
        what: "flagship phone, Snapdragon 8 Gen 3, 16 GB",
        peak_tflops: 5.0,
        memory_bandwidth_gbps: 76.8,
        memory_gb: 16.0,
        source: "Qualcomm: LPDDR5X at 4800 MHz (9600 MT/s) x 64 bit = 76.8 GB/s; phones ship with 12-24 GB (16 taken); Qualcomm publishes no fp16 rate: 5 TFLOPS is an assumption (it matters only for batched prefill)",
    },
    Preset {
        name: "apple-a17-pro",
        what: "flagship phone, Apple A17 Pro, 8 GB",
        peak_tflops: 35.0,
        memory_bandwidth_gbps: 51.2,
        memory_gb: 8.0,
        source: "Apple (Sept 2023): Neural Engine 35 trillion operations/s (precision not stated); 8 GB LPDDR5-6400 x 64 bit = 51.2 GB/s",
    },
    Preset {
        name: "phone-midrange",
        what: "mid-range phone, LPDDR4X, 12 GB",
        peak_tflops: 2.0,
        memory_bandwidth_gbps: 34.1,
        memory_gb: 12.0,
        source: "LPDDR4X-4266 x 64 bit = 34.1 GB/s (JEDEC rate); 12 GB and 2 TFLOPS fp16 are a class assumption",
    },
    Preset {
        name: "rtx-4090",
        what: "NVIDIA GeForce RTX 4090 (desktop)",
        peak_tflops: 165.2,
        memory_bandwidth_gbps: 1008.0,
        memory_gb: 24.0,
        source: "NVIDIA Ada whitepaper: FP16 tensor with FP32 accumulate 165.2 TFLOPS dense, 24 GB GDDR6X, 1,008 GB/s",
    },
];

/// The preset called `name`.
///
/// ```
/// let p = wdmoe_sim::device::preset("a40").unwrap();
/// assert_eq!(p.memory_bandwidth_gbps, 696.0);
/// assert!(wdmoe_sim::device::preset("a41").is_none());
/// ```
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// A device's resolved compute figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceCompute {
    /// Peak rate \[FLOP/s\] (`roofline`), or `C_q` \[FLOP/s\] (`paper`).
    pub flops_per_s: f64,
    /// Memory bandwidth \[byte/s\] (`roofline` only; `None` for `paper`).
    pub bandwidth_bytes_per_s: Option<f64>,
}

impl DeviceCompute {
    /// Seconds to run `tokens` tokens through one expert of `flops_per_token`
    /// FLOPs and `weight_bytes` bytes of weights (0 for no token).
    ///
    /// ```
    /// use wdmoe_sim::device::DeviceCompute;
    /// // 1e12 FLOP/s, 1e11 byte/s; 1e9 FLOP per token, 1e9 bytes of weights.
    /// let d = DeviceCompute { flops_per_s: 1e12, bandwidth_bytes_per_s: Some(1e11) };
    /// assert_eq!(d.expert_time_s(1, 1e9, 1e9), 1e-2);      // memory-bound: 1e9 / 1e11
    /// assert_eq!(d.expert_time_s(100, 1e9, 1e9), 1e-1);    // compute-bound: 100e9 / 1e12
    /// let p = DeviceCompute { flops_per_s: 1e12, bandwidth_bytes_per_s: None };
    /// assert_eq!(p.expert_time_s(100, 1e9, 1e9), 1e-1);    // the paper: n·F/C
    /// ```
    pub fn expert_time_s(&self, tokens: u32, flops_per_token: f64, weight_bytes: f64) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        let compute = tokens as f64 * flops_per_token / self.flops_per_s;
        match self.bandwidth_bytes_per_s {
            Some(b) => compute.max(weight_bytes / b),
            None => compute,
        }
    }
}

fn err(key: String, reason: impl Into<String>) -> ScenarioError {
    ScenarioError {
        key,
        reason: reason.into(),
    }
}

/// Device `i`'s figures under `model`, from its keys and its preset.
pub fn resolve(d: &Device, i: usize, model: ComputeModel) -> Result<DeviceCompute, ScenarioError> {
    let p = if d.preset.is_empty() {
        None
    } else {
        Some(preset(&d.preset).ok_or_else(|| {
            err(
                format!("devices[{i}].preset"),
                format!(
                    "unknown preset \"{}\" (known: {})",
                    d.preset.chars().take(40).collect::<String>(),
                    PRESETS
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?)
    };
    let peak = d.peak_tflops.or(p.map(|p| p.peak_tflops));
    let bw = d
        .memory_bandwidth_gbps
        .or(p.map(|p| p.memory_bandwidth_gbps));
    match model {
        ComputeModel::Roofline => {
            if d.compute_tflops.is_some() {
                return Err(err(
                    format!("devices[{i}].compute_tflops"),
                    "is the paper model's C_q; the roofline model (model.compute_model = \"roofline\") \
                     takes peak_tflops and memory_bandwidth_gbps (or a preset); \
                     set model.compute_model = \"paper\" to use compute_tflops",
                ));
            }
            let peak = peak.ok_or_else(|| {
                err(
                    format!("devices[{i}].peak_tflops"),
                    "missing: give peak_tflops and memory_bandwidth_gbps, or a preset",
                )
            })?;
            let bw = bw.ok_or_else(|| {
                err(
                    format!("devices[{i}].memory_bandwidth_gbps"),
                    "missing: give peak_tflops and memory_bandwidth_gbps, or a preset",
                )
            })?;
            Ok(DeviceCompute {
                flops_per_s: peak * 1e12,
                bandwidth_bytes_per_s: Some(bw * 1e9),
            })
        }
        ComputeModel::Paper => {
            let c = d.compute_tflops.or(peak).ok_or_else(|| {
                err(
                    format!("devices[{i}].compute_tflops"),
                    "missing: the paper model needs compute_tflops (C_q), peak_tflops or a preset",
                )
            })?;
            Ok(DeviceCompute {
                flops_per_s: c * 1e12,
                bandwidth_bytes_per_s: None,
            })
        }
    }
}

/// The memory device `i` has \[GB\], when known (its key or its preset).
pub fn memory_gb(d: &Device) -> Option<f64> {
    d.memory_gb
        .or_else(|| preset(&d.preset).map(|p| p.memory_gb))
}

/// Bytes of one expert's weights in one layer: `3·m·m_h × weight_bits / 8`
/// (the weight count is wdmoe-core's).
pub fn expert_weight_bytes(s: &Scenario) -> f64 {
    wdmoe_core::compute::ExpertShape::new(s.model.hidden, s.model.ffn_hidden)
        .map_or(f64::NAN, |e| e.weight_count() as f64)
        * s.model.weight_bits
        / 8.0
}

/// Bytes of one expert's weights in every layer of the scenario's model:
/// `layers × 3·m·m_h × weight_bits / 8` (11.3 GB for Mixtral in fp16).
///
/// ```
/// let s = wdmoe_sim::scenario::Scenario::paper();
/// assert_eq!(wdmoe_sim::device::experts_bytes(&s), 32.0 * 3.0 * 4096.0 * 14336.0 * 2.0);
/// ```
pub fn experts_bytes(s: &Scenario) -> f64 {
    s.model.layers as f64 * expert_weight_bytes(s)
}

/// Devices that cannot hold their experts: `(index, name, memory_gb)` where
/// the memory is smaller than [`experts_bytes`].
pub fn memory_shortfalls(s: &Scenario) -> Vec<(usize, String, f64)> {
    let need = experts_bytes(s);
    s.devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            memory_gb(d)
                .filter(|&m| m * 1e9 < need)
                .map(|m| (i, d.name.clone(), m))
        })
        .collect()
}

//! Variants of a scenario for sensitivity studies, and whether a scenario is
//! the paper's setup.

use crate::scenario::{Scenario, ScenarioError};

/// `s` with its device distances scaled by one factor so that the farthest
/// device sits at `radius_m` \[m\] (the spread of the cell, for sensitivity
/// studies).
///
/// ```
/// use wdmoe_sim::{scenario::Scenario, sim::scale_cell};
/// let s = scale_cell(&Scenario::paper(), 300.0).unwrap();
/// assert_eq!(s.devices.last().unwrap().distance_m, 300.0);
/// assert_eq!(s.devices[0].distance_m, 25.0);
/// ```
pub fn scale_cell(s: &Scenario, radius_m: f64) -> Result<Scenario, ScenarioError> {
    let far = s
        .devices
        .iter()
        .map(|d| d.distance_2d_m())
        .fold(0.0, f64::max);
    if !(radius_m.is_finite() && radius_m > 0.0) {
        return Err(ScenarioError {
            key: "radius_m".into(),
            reason: format!("must be finite and > 0 (got {radius_m})"),
        });
    }
    let mut out = s.clone();
    if far > 0.0 {
        for d in &mut out.devices {
            d.distance_m *= radius_m / far;
            if let Some(p) = &mut d.position_m {
                p[0] *= radius_m / far;
                p[1] *= radius_m / far;
            }
        }
    }
    out.validate()?;
    Ok(out)
}

/// `s` with its devices' speeds spread by exponent `alpha` around their
/// geometric mean `g`: each device's speed `v_q` (memory bandwidth under the
/// roofline model, `C_q` under the paper's) becomes `g · (v_q / g)^alpha`,
/// its peak rate scaled by the same factor (0: identical devices, 1:
/// unchanged, 2: the log-spread doubled). For sensitivity studies.
///
/// ```
/// use wdmoe_sim::{scenario::Scenario, sim::scale_compute_spread};
/// let s = scale_compute_spread(&Scenario::paper(), 0.0).unwrap();
/// let b0 = s.devices[0].memory_bandwidth_gbps.unwrap();
/// assert!(s.devices.iter().all(|d| (d.memory_bandwidth_gbps.unwrap() - b0).abs() < 1e-9));
/// ```
pub fn scale_compute_spread(s: &Scenario, alpha: f64) -> Result<Scenario, ScenarioError> {
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(ScenarioError {
            key: "alpha".into(),
            reason: format!("must be finite and >= 0 (got {alpha})"),
        });
    }
    s.validate()?;
    let model = s.model.compute_model;
    let figures: Vec<crate::device::DeviceCompute> = s
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| crate::device::resolve(d, i, model))
        .collect::<Result<_, _>>()?;
    let speed = |c: &crate::device::DeviceCompute| c.bandwidth_bytes_per_s.unwrap_or(c.flops_per_s);
    let n = s.devices.len().max(1) as f64;
    let g = (figures.iter().map(|c| speed(c).ln()).sum::<f64>() / n).exp();
    let mut out = s.clone();
    for (d, c) in out.devices.iter_mut().zip(&figures) {
        let v = speed(c);
        let f = g * (v / g).powf(alpha) / v;
        match c.bandwidth_bytes_per_s {
            Some(b) => {
                d.peak_tflops = Some(c.flops_per_s * f / 1e12);
                d.memory_bandwidth_gbps = Some(b * f / 1e9);
            }
            None => {
                if d.compute_tflops.is_some() {
                    d.compute_tflops = Some(c.flops_per_s * f / 1e12);
                } else {
                    d.peak_tflops = Some(c.flops_per_s * f / 1e12);
                }
            }
        }
    }
    out.validate()?;
    Ok(out)
}

/// Whether `s` is the paper's setup: [`Scenario::paper`] up to the seed,
/// the number of prompts and replications and the prompt length, with
/// sequential accounting (eq. 8) and no decode tokens.
///
/// ```
/// use wdmoe_sim::{scenario::Scenario, sim::is_paper_setup};
/// let mut s = Scenario::paper();
/// s.prompts = 7;
/// assert!(is_paper_setup(&s));
/// s.radio.noise_figure_db = 0.0;
/// assert!(!is_paper_setup(&s));
/// ```
pub fn is_paper_setup(s: &Scenario) -> bool {
    let mut p = Scenario::paper();
    p.seed = s.seed;
    p.prompts = s.prompts;
    p.replications = s.replications;
    p.prompt_tokens = s.prompt_tokens;
    p == *s
}

//! Every link, compute, latency and bandwidth function of wdmoe-core, in
//! `f32` and `f64`, on any arguments: no panic, and no NaN in any `Ok`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wdmoe_core::bandwidth::{even_split, min_max};
use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{self, DeviceLink, LatencyModel};
use wdmoe_core::link::{self, PathLossModel, Uma, UmiStreetCanyon};
use wdmoe_core::{Error, Float};
use wdmoe_fuzz::{FuzzFloat, LinkInput};

/// The value of an `Ok`, checked not to be NaN; `None` for an `Err`.
fn ok<F: Float>(what: &str, r: Result<F, Error>) -> Option<F> {
    match r {
        Ok(x) => {
            assert!(!x.is_nan(), "{what} returned NaN");
            Some(x)
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

fn non_negative<F: Float>(what: &str, r: Result<F, Error>) -> Option<F> {
    let x = ok(what, r)?;
    assert!(x >= F::ZERO, "{what} returned {x} < 0");
    Some(x)
}

/// `a ≤ b` up to a relative tolerance.
fn le_tol<F: FuzzFloat>(a: F, b: F) -> bool {
    let (a, b) = (a.to_f64(), b.to_f64());
    a <= b || a - b <= F::REL_TOL * b.abs().max(a.abs())
}

fn count(x: f64) -> u32 {
    // Saturating conversion: NaN → 0, huge → u32::MAX.
    x as u32
}

fn device<F: FuzzFloat>(inp: &LinkInput, at: usize) -> Result<DeviceLink<F>, Error> {
    let a = |i| F::from_num(inp.arg(at + i));
    DeviceLink::new(a(0), a(1), a(2), a(3), a(4))
}

fn run<F: FuzzFloat>(inp: &LinkInput) {
    let a = |i| F::from_num(inp.arg(i));
    let two = F::from_f64(2.0);
    match inp.op % 20 {
        0 => {
            if let Some(x) = ok("db_to_linear", link::db_to_linear(a(0))) {
                assert!(x >= F::ZERO);
            }
        }
        1 => {
            ok("linear_to_db", link::linear_to_db(a(0)));
        }
        2 => {
            non_negative("dbm_to_w", link::dbm_to_w(a(0)));
        }
        3 => {
            ok("w_to_dbm", link::w_to_dbm(a(0)));
        }
        4 => {
            ok(
                "free_space_path_loss_db",
                link::free_space_path_loss_db(a(0), a(1)),
            );
        }
        5 => {
            non_negative("channel_power_gain", link::channel_power_gain(a(0), a(1)));
        }
        6 => {
            non_negative("noise_psd_w_per_hz", link::noise_psd_w_per_hz(a(0), a(1)));
        }
        7 => {
            non_negative("noise_power_w", link::noise_power_w(a(0), a(1), a(2)));
        }
        8 => {
            let (b, p, g, n0) = (a(0), a(1), a(2), a(3));
            if let Some(r) = non_negative("shannon_rate_bps", link::shannon_rate_bps(b, p, g, n0)) {
                // Rates grow with power and gain (doubling either never lowers it).
                for (p2, g2) in [(p * two, g), (p, g * two)] {
                    if let Some(r2) =
                        non_negative("shannon_rate_bps", link::shannon_rate_bps(b, p2, g2, n0))
                    {
                        assert!(
                            le_tol(r, r2),
                            "rate fell from {r} to {r2} ({b}, {p}->{p2}, {g}->{g2}, {n0})"
                        );
                    }
                }
            }
        }
        9 | 10 => {
            let (h_bs, h_ut, f, d) = (a(0), a(1), a(2), a(3));
            let m = if inp.op % 20 == 9 {
                Uma::new(h_bs, h_ut).map(PathLossModel::Uma)
            } else {
                UmiStreetCanyon::new(h_bs, h_ut).map(PathLossModel::UmiStreetCanyon)
            };
            let Ok(m) = m else { return };
            let los = ok("path_loss_db(LOS)", m.path_loss_db(f, d, true));
            let nlos = ok("path_loss_db(NLOS)", m.path_loss_db(f, d, false));
            assert_eq!(los.is_some(), nlos.is_some());
            if let (Some(l), Some(nl)) = (los, nlos) {
                assert!(nl >= l, "NLOS {nl} < LOS {l}");
            }
            if let Some(p) = ok("los_probability", m.los_probability(d)) {
                assert!(p >= F::ZERO && p <= F::ONE, "LOS probability {p}");
            }
            assert!(!m.shadow_std_db(true).is_nan() && !m.shadow_std_db(false).is_nan());
        }
        11 => {
            let m = PathLossModel::<F>::FreeSpace;
            ok("FreeSpace path_loss_db", m.path_loss_db(a(0), a(1), true));
            if let Some(p) = ok("FreeSpace los_probability", m.los_probability(a(1))) {
                assert!(p == F::ONE);
            }
        }
        12 => {
            let Ok(shape) = ExpertShape::new(count(inp.arg(0).f64()), count(inp.arg(1).f64()))
            else {
                return;
            };
            let _ = shape.weight_count();
            non_negative("flops_per_token", shape.flops_per_token(a(2)));
            non_negative("payload_bits", shape.payload_bits(a(3)));
        }
        13 => {
            let Ok(dev) = device::<F>(inp, 0) else { return };
            let Ok(model) = LatencyModel::new(a(5), a(6), a(7)) else {
                return;
            };
            let bw = a(8);
            // Full precision: no subnormal rate or payload (there `L/R` keeps
            // only a few bits, a precision limit of the float type, not a bug).
            let normal_or_zero = |x: F| x == F::ZERO || x >= F::MIN_POSITIVE;
            let mut precise = normal_or_zero(model.payload_bits());
            if let Ok((rd, ru)) = model.rates_bps(&dev, bw) {
                assert!(!rd.is_nan() && !ru.is_nan() && rd >= F::ZERO && ru >= F::ZERO);
                precise &= normal_or_zero(rd) && normal_or_zero(ru);
            }
            let t = non_negative(
                "LatencyModel::expert_latency_s",
                model.expert_latency_s(&dev, bw),
            );
            let floor = model.latency_floor_s(&dev);
            assert!(
                !floor.is_nan() && floor >= F::ZERO,
                "latency_floor_s = {floor}"
            );
            if let (Some(t), true) = (t, precise) {
                // The floor is the limit of unlimited bandwidth.
                assert!(le_tol(floor, t), "floor {floor} above latency {t}");
            }
        }
        14 => {
            non_negative(
                "expert_latency_s",
                latency::expert_latency_s(a(0), a(1), a(2), a(3), a(4)),
            );
        }
        15 => {
            // args[0] = how many latencies; then the latencies; then expert indices.
            let m = count(inp.arg(0).f64()).min(32) as usize;
            let lat: Vec<F> = (0..m).map(|i| a(1 + i)).collect();
            let experts: Vec<usize> = (0..count(inp.arg(1 + m).f64()).min(32) as usize)
                .map(|i| count(inp.arg(2 + m + i).f64()) as usize)
                .collect();
            if let Some(t) = ok("token_latency_s", latency::token_latency_s(&lat, &experts)) {
                assert!(t > F::ZERO);
            }
        }
        16 => {
            let lat: Vec<F> = inp.args.iter().map(|&x| F::from_num(x)).collect();
            non_negative(
                "sequential_prompt_latency_s",
                latency::sequential_prompt_latency_s(&lat),
            );
        }
        17 => {
            let m = count(inp.arg(0).f64()).min(32) as usize;
            let n: Vec<u32> = (0..m).map(|i| count(inp.arg(1 + i).f64())).collect();
            let lat: Vec<F> = (0..m).map(|i| a(1 + m + i)).collect();
            non_negative(
                "batched_layer_latency_s",
                latency::batched_layer_latency_s(&n, &lat),
            );
        }
        18 => {
            let mut out = vec![F::ZERO; count(inp.arg(1).f64()).min(300) as usize];
            if even_split(a(0), &mut out).is_ok() {
                assert!(out.iter().all(|b| !b.is_nan() && *b >= F::ZERO));
            }
        }
        _ => {
            // min_max: args 0..3 the model, 3 the total bandwidth, 4 the
            // device count (1..=8), then 5 numbers per device.
            let Ok(model) = LatencyModel::new(a(0), a(1), a(2)) else {
                return;
            };
            let total = a(3);
            let m = (count(inp.arg(4).f64()) % 8 + 1) as usize;
            let mut devices = Vec::new();
            for i in 0..m {
                match device::<F>(inp, 5 + 5 * i) {
                    Ok(d) => devices.push(d),
                    Err(_) => return,
                }
            }
            let mut out = vec![F::ZERO; m];
            let Some(worst) = non_negative("min_max", min_max(&model, &devices, total, &mut out))
            else {
                return;
            };
            let mut used = 0.0;
            for &b in &out {
                assert!(!b.is_nan() && b >= F::ZERO, "min_max bandwidth {b}");
                used += b.to_f64();
            }
            // Slack of a few units in the last place per device for totals in
            // the subnormal range, where one share's rounding is a whole ulp.
            let min_subnormal = (F::MIN_POSITIVE * F::EPSILON).to_f64();
            assert!(
                used <= total.to_f64() * (1.0 + F::REL_TOL) + 4.0 * m as f64 * min_subnormal,
                "handed out {used} of {total}"
            );
            // Never worse than the even split.
            let share = total / F::from_f64(m as f64);
            let mut even = F::ZERO;
            for d in &devices {
                even = even.max_of(model.expert_latency_s(d, share).unwrap());
            }
            assert!(
                le_tol(worst, even),
                "min_max {worst} worse than even split {even}"
            );
        }
    }
}

fuzz_target!(|inp: LinkInput| {
    if inp.f32 {
        run::<f32>(&inp);
    } else {
        run::<f64>(&inp);
    }
});

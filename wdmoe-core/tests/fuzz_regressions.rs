//! Inputs the fuzzers (`fuzz/`, issue 5) found, kept as ordinary tests so
//! the bugs stay fixed. Each test names the target and what went wrong.

use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::{link, Error};

/// link_latency: `noise_power_w(22542 dBm/Hz, 0 Hz, 0 dB)` in f32 was NaN
/// (`10^2253` overflowed to ∞, then `∞ · 0 Hz`). A dB value whose linear
/// ratio overflows is now an error.
#[test]
fn noise_power_of_overflowing_dbm_is_an_error_not_nan() {
    assert_eq!(
        link::noise_power_w(22542.0_f32, 0.0, 0.0),
        Err(Error::OutOfRange("db"))
    );
    assert_eq!(
        link::noise_psd_w_per_hz(4000.0_f64, 0.0),
        Err(Error::OutOfRange("db"))
    );
    assert_eq!(link::dbm_to_w(500.0_f32), Err(Error::OutOfRange("db")));
    // Underflow is fine: 0 W.
    assert_eq!(link::dbm_to_w(-500.0_f32), Ok(0.0));
}

/// link_latency: `channel_power_gain(path_loss_db = −500, fading = 0)` in f32
/// was NaN (`10^50 = ∞` times 0).
#[test]
fn channel_gain_of_negative_huge_path_loss_is_not_nan() {
    let r = link::channel_power_gain(-500.0_f32, 0.0);
    assert_eq!(r, Err(Error::OutOfRange("db")));
    for pl in [-3000.0_f64, -400.0, 0.0, 80.0, 4000.0] {
        for h2 in [0.0, 1e-300, 1.0, 1e300] {
            if let Ok(g) = link::channel_power_gain(pl, h2) {
                assert!(!g.is_nan(), "channel_power_gain({pl}, {h2}) = NaN");
            }
        }
    }
}

/// link_latency: `ExpertShape::new(u32::MAX, u32::MAX).weight_count()`
/// overflowed u64 (a panic in debug builds, a wrapped count in release).
#[test]
fn weight_count_of_huge_shape_saturates() {
    let s = ExpertShape::new(u32::MAX, u32::MAX).unwrap();
    assert_eq!(s.weight_count(), u64::MAX);
    let s = ExpertShape::new(1 << 31, 1 << 31).unwrap();
    assert_eq!(s.weight_count(), 3 << 62);
}

/// link_latency: `latency_floor_s` was NaN when both `L·N0·ln2` and `P·g`
/// overflowed (∞/∞).
#[test]
fn latency_floor_with_overflowing_products_is_finite() {
    let model = LatencyModel::new(3e38_f32, 0.0, 3e38).unwrap();
    let dev = DeviceLink::new(3e38_f32, 3e38, 3e38, 3e38, 1.0).unwrap();
    let floor = model.latency_floor_s(&dev);
    // 3e38·3e38·ln2 / (3e38·3e38) = ln 2 per direction.
    assert!(
        (floor - 2.0 * core::f32::consts::LN_2).abs() < 1e-4,
        "{floor}"
    );
    let t = model.expert_latency_s(&dev, 1.0).unwrap();
    assert!(floor <= t * 1.0001, "floor {floor} above latency {t}");
}

/// link_latency: with `P·g` underflowing to 0 while the SNR itself is 1,
/// `shannon_rate_bps` used the small-SNR approximation `x/ln 2` (1.44 b
/// instead of b), so doubling the gain *lowered* the rate.
#[test]
fn shannon_rate_with_underflowing_power_gain_product() {
    let m = f64::MIN_POSITIVE; // 2^-1022: m·m underflows, m·m/(m·m) = SNR 1
    let r1 = link::shannon_rate_bps(m, m, m, m).unwrap();
    assert!(
        (r1 / m - 1.0).abs() < 1e-12,
        "SNR 1: B·log2(2) = B, got {}",
        r1 / m
    );
    let r2 = link::shannon_rate_bps(m, m, 2.0 * m, m).unwrap();
    assert!((r2 / m - 3f64.log2()).abs() < 1e-12, "SNR 2: B·log2(3)");
    assert!(r2 >= r1);
    // Same in f32.
    let m = f32::MIN_POSITIVE;
    let r = link::shannon_rate_bps(m, m, m, m).unwrap();
    assert!((r / m - 1.0).abs() < 1e-5, "{}", r / m);
}

/// link_latency: with an SNR of 2.8e-44 (an `f32` subnormal, ~5 % precision)
/// the rate, and so the latency, was 1.5 % off: the latency came out below
/// the unlimited-bandwidth floor. Subnormal intermediates now go through the
/// log domain.
#[test]
fn shannon_rate_with_subnormal_snr_keeps_precision() {
    let gu = f32::from_bits(940689368476024831_u64 as u32); // 2.7756e-17
    let r = link::shannon_rate_bps(1e13_f32, 0.1, gu, 1e13).unwrap();
    let want = 1e13_f64 * (0.1 * gu as f64 / 1e26) / core::f64::consts::LN_2;
    assert!((r as f64 / want - 1.0).abs() < 1e-4, "{r} vs {want}");
    let model = LatencyModel::new(1.0_f32, 1e13, 1e13).unwrap();
    let dev = DeviceLink::new(1e13_f32, 1e13, 0.1, gu, 1e13).unwrap();
    let t = model.expert_latency_s(&dev, 1e13).unwrap();
    let floor = model.latency_floor_s(&dev);
    assert!(floor <= t * 1.0001, "floor {floor} above latency {t}");
}

/// link_latency: UMa `los_probability` at d = 2.5e33 m with a 20 m terminal
/// was NaN in f32: `(d/100)³ = ∞` times `e^(−d/150) = 0`.
#[test]
fn uma_los_probability_at_huge_distance_is_not_nan() {
    let uma = link::Uma::new(25.0_f32, 20.0).unwrap();
    for d in [2.5e33_f32, f32::MAX, 1e7, 450.0] {
        let p = uma.los_probability(d).unwrap();
        assert!((0.0..=1.0).contains(&p), "d = {d}: {p}");
    }
    // Unchanged at ordinary distances: 18/200 + e^(−200/63)(1 − 18/200) = 0.12804,
    // times 1 + ((20−13)/10)^1.5 · 1.25 · 2³ · e^(−4/3)
    //         = 1 + 0.585662 · 10 · 0.263597 = 2.543788 → 0.325726.
    let p = uma.los_probability(200.0).unwrap();
    assert!((p - 0.325726).abs() < 1e-5, "{p}");
}

/// link_latency: UMi path loss at `d = f64::MAX` with a huge base-station
/// height was NaN (`d²` and `d_BP²` overflowed, then ∞ − ∞).
#[test]
fn path_loss_at_huge_distance_and_height_is_not_nan() {
    let h_bs = f64::from_bits(7744902093301574507);
    let umi = link::UmiStreetCanyon::new(h_bs, 107.0 / 16.0).unwrap();
    for los in [true, false] {
        let pl = umi.path_loss_db(127.0 / 16.0, f64::MAX, los).unwrap();
        assert!(!pl.is_nan(), "LOS {los}");
    }
    let uma = link::Uma::new(f64::MAX, 22.5).unwrap();
    for d in [10.0, 1e200, f64::MAX] {
        for los in [true, false] {
            assert!(!uma.path_loss_db(100.0, d, los).unwrap().is_nan());
        }
    }
    let uma = link::Uma::new(3e38_f32, 22.5).unwrap();
    assert!(!uma.path_loss_db(100.0, f32::MAX, true).unwrap().is_nan());
}

/// link_latency: a bandwidth of `f64::MAX` Hz made the Shannon rate `+∞`
/// and so the latency of a 1.8e308-bit payload 0 s (below its floor). A rate
/// that overflows is now an error.
#[test]
fn overflowing_rate_is_an_error_not_a_zero_latency() {
    assert!(link::shannon_rate_bps(f64::MAX, 1e300, 1.0, 1e-300).is_err());
    assert!(link::shannon_rate_bps(f32::MAX, f32::MAX, f32::MAX, 7.625).is_err());
    let model = LatencyModel::new(f32::MAX, f32::EPSILON, 7.625).unwrap();
    let dev = DeviceLink::new(f32::MAX, f32::MAX, f32::MAX, f32::MAX, f32::MAX).unwrap();
    assert!(model.expert_latency_s(&dev, f32::MAX).is_err());
    // Ordinary bandwidths are unaffected.
    assert!(link::shannon_rate_bps(1e300_f64, 10.0, 1e-9, 4e-21)
        .unwrap()
        .is_finite());
}

/// link_latency: `latency_floor_s` divided by `P·g = 1.6e-322` (a subnormal
/// with a few bits of precision) and came out far above the latency itself.
#[test]
fn latency_floor_with_subnormal_power_gain_product() {
    let pd = f64::from_bits(4395513932337385471); // 7.1e-15 W
    let n0 = f64::from_bits(4290869670560086843); // 7.5e-22 W/Hz
    let x = 107.0 / 16.0;
    let model = LatencyModel::new(x, x, n0).unwrap();
    let dev = DeviceLink::new(pd, f64::MIN_POSITIVE, x, x, x).unwrap();
    let floor = model.latency_floor_s(&dev);
    let t = model.expert_latency_s(&dev, 59.0 / 16.0).unwrap();
    assert!(floor <= t * (1.0 + 1e-9), "floor {floor} above latency {t}");
    let want = x * n0 * core::f64::consts::LN_2 / pd / f64::MIN_POSITIVE;
    assert!((floor / want - 1.0).abs() < 1e-6, "{floor} vs {want}");
}

//! Unit tests of every public function of wdmoe-core against hand-computed
//! values; the arithmetic is in the comment beside each expected value
//! (c = 299,792,458 m/s, log10(3.5) = 0.5440680444, ln 2 = 0.6931471806).
//! Values are checked in `f64` to 1e-12 (relative) and, where firmware uses
//! them, in `f32` to 1e-5. Every `Error` variant is reached from bad input.

use wdmoe_core::bandwidth;
use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{self, DeviceLink, LatencyModel};
use wdmoe_core::link::{self, PathLossModel, Uma, UmiStreetCanyon};
use wdmoe_core::select::{self, Policy, Selection};
use wdmoe_core::{Error, Float};

const INF: f64 = f64::INFINITY;

#[track_caller]
fn close(got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "got {got}, want {want} (rel {rel})"
    );
}

#[track_caller]
fn close64(got: f64, want: f64) {
    close(got, want, 1e-12);
}

#[track_caller]
fn close32(got: f32, want: f64) {
    close(got as f64, want, 1e-5);
}

// ---------------------------------------------------------------- link ---

#[test]
fn db_conversions() {
    // 10^(20/10) = 100; 10^(-30/10) = 1e-3; 10^(3/10) = 1.99526231497
    close64(link::db_to_linear(20.0).unwrap(), 100.0);
    close64(link::db_to_linear(-30.0).unwrap(), 1e-3);
    close64(link::db_to_linear(3.0).unwrap(), 1.9952623149688795);
    close32(link::db_to_linear(3.0_f32).unwrap(), 1.9952623149688795);
    // 10·log10(1000) = 30; 10·log10(2) = 3.01029995664; 10·log10(0) = -inf
    close64(link::linear_to_db(1000.0).unwrap(), 30.0);
    close64(link::linear_to_db(2.0).unwrap(), 3.010299956639812);
    assert_eq!(link::linear_to_db(0.0_f64).unwrap(), -INF);
    // 10^((40-30)/10) = 10 W; 10^((0-30)/10) = 1 mW
    close64(link::dbm_to_w(40.0).unwrap(), 10.0);
    close64(link::dbm_to_w(0.0).unwrap(), 1e-3);
    close32(link::dbm_to_w(40.0_f32).unwrap(), 10.0);
    // 10·log10(0.2) + 30 = -6.98970004336 + 30 = 23.0102999566 dBm; 1 mW = 0 dBm
    close64(link::w_to_dbm(0.2).unwrap(), 23.010299956639813);
    assert!(link::w_to_dbm(1e-3_f64).unwrap().abs() < 1e-12);
    assert_eq!(link::w_to_dbm(0.0_f64).unwrap(), -INF);
    // Bad input.
    assert_eq!(link::db_to_linear(f64::NAN), Err(Error::NaN("db")));
    assert_eq!(link::db_to_linear(INF), Err(Error::NotFinite("db")));
    assert_eq!(
        link::linear_to_db(-1.0_f64),
        Err(Error::Negative("linear power ratio"))
    );
    assert_eq!(link::dbm_to_w(-INF), Err(Error::NotFinite("power_dbm")));
    assert_eq!(link::w_to_dbm(-0.1_f64), Err(Error::Negative("power_w")));
}

#[test]
fn free_space_path_loss() {
    // 32.4 + 20·log10(3.5) + 20·log10(100) = 32.4 + 10.8813608870 + 40 = 83.2813608870
    close64(
        link::free_space_path_loss_db(3.5, 100.0).unwrap(),
        83.28136088700552,
    );
    close32(
        link::free_space_path_loss_db(3.5_f32, 100.0).unwrap(),
        83.28136088700552,
    );
    // 32.4 + 20·log10(28) + 20·log10(10) = 32.4 + 28.9431606268 + 20 = 81.3431606268
    close64(
        link::free_space_path_loss_db(28.0, 10.0).unwrap(),
        81.34316062684438,
    );
    // Doubling the distance adds 20·log10(2) = 6.0206 dB.
    let a = link::free_space_path_loss_db(3.5, 100.0_f64).unwrap();
    let b = link::free_space_path_loss_db(3.5, 200.0_f64).unwrap();
    close64(b - a, 6.020599913279624);
    assert_eq!(
        link::free_space_path_loss_db(3.5, 0.0_f64),
        Err(Error::NotPositive("distance_m"))
    );
    assert_eq!(
        link::free_space_path_loss_db(-3.5, 10.0_f64),
        Err(Error::NotPositive("frequency_ghz"))
    );
    assert_eq!(
        link::free_space_path_loss_db(f64::NAN, 10.0),
        Err(Error::NaN("frequency_ghz"))
    );
}

#[test]
fn channel_gain_and_noise() {
    // 10^(-80/10)·1 = 1e-8; 10^(-80/10)·0.5 = 5e-9; 10^(-100/10)·2 = 2e-10
    close64(link::channel_power_gain(80.0, 1.0).unwrap(), 1e-8);
    close64(link::channel_power_gain(80.0, 0.5).unwrap(), 5e-9);
    close64(link::channel_power_gain(100.0, 2.0).unwrap(), 2e-10);
    close32(link::channel_power_gain(80.0_f32, 1.0).unwrap(), 1e-8);
    assert_eq!(link::channel_power_gain(80.0_f64, 0.0).unwrap(), 0.0);
    assert_eq!(
        link::channel_power_gain(80.0_f64, -1.0),
        Err(Error::Negative("fading_power"))
    );
    assert_eq!(
        link::channel_power_gain(INF, 1.0),
        Err(Error::NotFinite("path_loss_db"))
    );
    // N0: 10^((-174 + 0 - 30)/10) = 10^-20.4 = 3.98107170553e-21 W/Hz
    close64(
        link::noise_psd_w_per_hz(-174.0, 0.0).unwrap(),
        3.981071705534986e-21,
    );
    // with a 7 dB noise figure: 10^-19.7 = 1.99526231497e-20 W/Hz
    close64(
        link::noise_psd_w_per_hz(-174.0, 7.0).unwrap(),
        1.9952623149688828e-20,
    );
    close32(
        link::noise_psd_w_per_hz(-174.0_f32, 7.0).unwrap(),
        1.9952623149688828e-20,
    );
    // over 12.5 MHz: 1.99526231497e-20 · 12.5e6 = 2.49407789371e-13 W
    close64(
        link::noise_power_w(-174.0, 12.5e6, 7.0).unwrap(),
        2.4940778937111034e-13,
    );
    assert_eq!(link::noise_power_w(-174.0_f64, 0.0, 7.0).unwrap(), 0.0);
    assert_eq!(
        link::noise_power_w(-174.0_f64, -1.0, 7.0),
        Err(Error::Negative("bandwidth_hz"))
    );
    assert_eq!(
        link::noise_psd_w_per_hz(-174.0_f64, -1.0),
        Err(Error::Negative("noise_figure_db"))
    );
    assert_eq!(
        link::noise_psd_w_per_hz(f64::NAN, 0.0),
        Err(Error::NaN("n0_dbm_per_hz"))
    );
    // Constants.
    assert_eq!(link::SPEED_OF_LIGHT_M_PER_S, 299_792_458.0);
    assert_eq!(link::THERMAL_NOISE_DBM_PER_HZ, -174.0);
}

#[test]
fn shannon_rate() {
    // SNR = 1e-3·1e-9 / (1e-21·1e6) = 1000 → 1e6·log2(1001) = 9,967,226.2588 bit/s
    close64(
        link::shannon_rate_bps(1e6, 1e-3, 1e-9, 1e-21).unwrap(),
        9967226.258835994,
    );
    close32(
        link::shannon_rate_bps(1e6_f32, 1e-3, 1e-9, 1e-21).unwrap(),
        9967226.258835994,
    );
    // SNR = 1 → R = B: 1e6·log2(2) = 1e6
    close64(link::shannon_rate_bps(1e6, 1e-15, 1.0, 1e-21).unwrap(), 1e6);
    // Low SNR: 1e-12 → R ≈ B·SNR/ln 2 = 1e6·1e-12/0.693147 = 1.44269504089e-6 bit/s
    close(
        link::shannon_rate_bps(1e6, 1e-27, 1.0, 1e-21).unwrap(),
        1.4426950408889634e-6,
        1e-9,
    );
    // SNR overflows f64 (1e300·1e300/1e-300): log domain, 1·log2(1e900) = 3·996.578 = 2989.735
    close(
        link::shannon_rate_bps(1.0, 1e300, 1e300, 1e-300).unwrap(),
        2989.7352853986263,
        1e-12,
    );
    // Zero bandwidth, power or gain: rate 0 (the device is unreachable).
    assert_eq!(link::shannon_rate_bps(0.0, 1.0, 1e-9, 1e-21).unwrap(), 0.0);
    assert_eq!(link::shannon_rate_bps(1e6, 0.0, 1e-9, 1e-21).unwrap(), 0.0);
    assert_eq!(link::shannon_rate_bps(1e6, 1.0, 0.0, 1e-21).unwrap(), 0.0);
    assert_eq!(
        link::shannon_rate_bps(-1.0, 1.0, 1e-9, 1e-21),
        Err(Error::Negative("bandwidth_hz"))
    );
    assert_eq!(
        link::shannon_rate_bps(1e6, -1.0, 1e-9, 1e-21),
        Err(Error::Negative("tx_power_w"))
    );
    assert_eq!(
        link::shannon_rate_bps(1e6, 1.0, f64::NAN, 1e-21),
        Err(Error::NaN("channel_gain"))
    );
    assert_eq!(
        link::shannon_rate_bps(1e6, 1.0, 1e-9, 0.0),
        Err(Error::NotPositive("n0_w_per_hz"))
    );
}

#[test]
fn uma_path_loss() {
    let uma = Uma::new(25.0_f64, 1.5).unwrap();
    assert_eq!((uma.bs_height_m(), uma.ut_height_m()), (25.0, 1.5));
    // Breakpoint d'_BP = 4·(25-1)·(1.5-1)·3.5e9/c = 168e9/c = 560.388 m.
    // LOS before it, 100 m: d3D = sqrt(100² + 23.5²) = 102.7241;
    // PL1 = 28 + 22·log10(102.7241) + 20·log10(3.5) = 28 + 44.2568 + 10.8814 = 83.13816 dB
    close64(
        uma.path_loss_db(3.5, 100.0, true).unwrap(),
        83.13815667685238,
    );
    close32(
        Uma::new(25.0_f32, 1.5)
            .unwrap()
            .path_loss_db(3.5, 100.0, true)
            .unwrap(),
        83.13815667685238,
    );
    // LOS after it, 1000 m: d3D = 1000.2761;
    // PL2 = 28 + 40·log10(1000.2761) + 10.8814 - 9·log10(560.388² + 23.5²)
    //     = 28 + 120.0048 + 10.8814 - 49.4797 = 109.40649 dB
    close64(
        uma.path_loss_db(3.5, 1000.0, true).unwrap(),
        109.4064943460271,
    );
    // NLOS, 1000 m: PL' = 13.54 + 39.08·log10(1000.2761) + 10.8814 - 0.6·(1.5-1.5)
    //     = 13.54 + 117.2447 + 10.8814 = 141.66605 dB > LOS → 141.66605
    close64(
        uma.path_loss_db(3.5, 1000.0, false).unwrap(),
        141.66604604998784,
    );
    // NLOS, 100 m: 13.54 + 39.08·log10(102.7241) + 10.8814 = 103.03752 dB
    close64(
        uma.path_loss_db(3.5, 100.0, false).unwrap(),
        103.03752359006074,
    );
    // Below 10 m it is evaluated at 10 m: d3D = sqrt(10² + 23.5²) = 25.5392;
    // 28 + 22·log10(25.5392) + 10.8814 = 69.83992 dB
    close64(
        uma.path_loss_db(3.5, 10.0, true).unwrap(),
        69.83991585250035,
    );
    assert_eq!(
        uma.path_loss_db(3.5, 2.0, true),
        uma.path_loss_db(3.5, 10.0, true)
    );
    // Validity ranges.
    assert!(matches!(
        uma.path_loss_db(0.4, 100.0, true),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        uma.path_loss_db(101.0, 100.0, true),
        Err(Error::OutOfRange(_))
    ));
    assert_eq!(
        uma.path_loss_db(3.5, 0.0, true),
        Err(Error::NotPositive("distance_2d_m"))
    );
    assert!(matches!(Uma::new(1.0_f64, 1.5), Err(Error::OutOfRange(_))));
    assert!(matches!(Uma::new(25.0_f64, 1.0), Err(Error::OutOfRange(_))));
    assert!(matches!(
        Uma::new(25.0_f64, 23.0),
        Err(Error::OutOfRange(_))
    ));
    assert_eq!(
        Uma::new(-25.0_f64, 1.5),
        Err(Error::NotPositive("bs_height_m"))
    );
    assert_eq!(Uma::new(25.0_f64, f64::NAN), Err(Error::NaN("ut_height_m")));
}

#[test]
fn uma_los_probability() {
    let uma = Uma::new(25.0_f64, 1.5).unwrap();
    // d ≤ 18 m: 1.
    assert_eq!(uma.los_probability(18.0).unwrap(), 1.0);
    assert_eq!(uma.los_probability(5.0).unwrap(), 1.0);
    // 200 m, h_UT ≤ 13 m: 18/200 + e^(-200/63)·(1 - 18/200) = 0.09 + 0.0418107·0.91 = 0.12804773
    close64(uma.los_probability(200.0).unwrap(), 0.12804773002754427);
    // h_UT = 18.5 m: C'(h) = ((18.5-13)/10)^1.5 = 0.55^1.5 = 0.40789092;
    // × (1 + C'·(5/4)·(200/100)³·e^(-200/150)) = 0.12804773·(1 + 0.40789·1.25·8·0.263597)
    // = 0.12804773·2.075196 = 0.26572321
    let high = Uma::new(25.0_f64, 18.5).unwrap();
    close64(high.los_probability(200.0).unwrap(), 0.26572321307930674);
    assert_eq!(
        uma.los_probability(-1.0),
        Err(Error::NotPositive("distance_2d_m"))
    );
}

#[test]
fn umi_path_loss_and_los_probability() {
    let umi = UmiStreetCanyon::new(10.0_f64, 1.5).unwrap();
    // Breakpoint 4·9·0.5·3.5e9/c = 210.145 m. LOS, 100 m: d3D = sqrt(100² + 8.5²) = 100.3606;
    // 32.4 + 21·log10(100.3606) + 10.8814 = 32.4 + 42.0327 + 10.8814 = 85.31419 dB
    close64(
        umi.path_loss_db(3.5, 100.0, true).unwrap(),
        85.31418910250133,
    );
    // LOS, 500 m (after the breakpoint): d3D = 500.0722;
    // 32.4 + 40·log10(500.0722) + 10.8814 - 9.5·log10(210.145² + 8.5²)
    // = 32.4 + 107.9651 + 10.8814 - 44.1385 = 107.10805 dB
    close64(
        umi.path_loss_db(3.5, 500.0, true).unwrap(),
        107.10804931582909,
    );
    // NLOS, 500 m: 22.4 + 35.3·log10(500.0722) + 21.3·log10(3.5) - 0.3·0
    // = 22.4 + 95.2757 + 11.5886 = 129.26451 dB (> LOS)
    close64(
        umi.path_loss_db(3.5, 500.0, false).unwrap(),
        129.26450544868536,
    );
    // NLOS, 100 m: 22.4 + 35.3·log10(100.3606) + 11.5886 = 104.64383 dB
    close64(
        umi.path_loss_db(3.5, 100.0, false).unwrap(),
        104.64383201166098,
    );
    close32(
        UmiStreetCanyon::new(10.0_f32, 1.5)
            .unwrap()
            .path_loss_db(3.5, 500.0, false)
            .unwrap(),
        129.26450544868536,
    );
    // LOS probability: 1 up to 18 m; 100 m: 18/100 + e^(-100/36)·0.82 = 0.18 + 0.0621765·0.82 = 0.23098475
    assert_eq!(umi.los_probability(18.0).unwrap(), 1.0);
    close64(umi.los_probability(100.0).unwrap(), 0.23098474969813537);
    assert!(matches!(
        UmiStreetCanyon::new(10.0_f64, 30.0),
        Err(Error::OutOfRange(_))
    ));
    assert_eq!(
        umi.los_probability(f64::NAN),
        Err(Error::NaN("distance_2d_m"))
    );
}

#[test]
fn path_loss_model_dispatch() {
    let fs = PathLossModel::<f64>::FreeSpace;
    let uma = PathLossModel::Uma(Uma::new(25.0, 1.5).unwrap());
    let umi = PathLossModel::UmiStreetCanyon(UmiStreetCanyon::new(10.0, 1.5).unwrap());
    // Free space ignores the LOS flag: 83.28136 dB both ways (see above).
    close64(
        fs.path_loss_db(3.5, 100.0, false).unwrap(),
        83.28136088700552,
    );
    close64(
        uma.path_loss_db(3.5, 100.0, true).unwrap(),
        83.13815667685238,
    );
    close64(
        umi.path_loss_db(3.5, 100.0, false).unwrap(),
        104.64383201166098,
    );
    assert_eq!(fs.los_probability(500.0).unwrap(), 1.0);
    close64(uma.los_probability(200.0).unwrap(), 0.12804773002754427);
    close64(umi.los_probability(100.0).unwrap(), 0.23098474969813537);
    assert_eq!(
        fs.los_probability(0.0),
        Err(Error::NotPositive("distance_2d_m"))
    );
    // TR 38.901 shadow fading: UMa 4 / 6 dB, UMi 4 / 7.82 dB, free space 0.
    assert_eq!(fs.shadow_std_db(true), 0.0);
    assert_eq!(uma.shadow_std_db(true), 4.0);
    assert_eq!(uma.shadow_std_db(false), 6.0);
    assert_eq!(umi.shadow_std_db(true), 4.0);
    assert_eq!(umi.shadow_std_db(false), 7.82);
}

// ------------------------------------------------------------- compute ---

#[test]
fn expert_shape() {
    let s = ExpertShape::MIXTRAL_8X7B;
    assert_eq!((s.hidden(), s.ffn_hidden()), (4096, 14336));
    // 3·4096·14336 = 176,160,768 weights
    assert_eq!(s.weight_count(), 176_160_768);
    // Eq. (4): 4·4096·14336 + 2·14336·4096 + 4·14336 + 14336
    //        = 234,881,024 + 117,440,512 + 57,344 + 14,336 = 352,393,216
    assert_eq!(s.flops_per_token(4.0_f64).unwrap(), 352_393_216.0);
    // exact in f32 too: 352,393,216 = 11,012,288·2^5 with 11,012,288 < 2^24
    assert_eq!(s.flops_per_token(4.0_f32).unwrap(), 352_393_216.0);
    // A small shape: m = 2, m_h = 3, η = 4: 4·2·3 + 2·3·2 + 4·3 + 3 = 24 + 12 + 12 + 3 = 51
    let small = ExpertShape::new(2, 3).unwrap();
    assert_eq!(small.flops_per_token(4.0_f64).unwrap(), 51.0);
    // η = 0: 36 + 3 = 39
    assert_eq!(small.flops_per_token(0.0_f64).unwrap(), 39.0);
    // Eq. (5): 16·4096 = 65,536 bit; 8·2 = 16 bit
    assert_eq!(s.payload_bits(16.0_f64).unwrap(), 65_536.0);
    assert_eq!(s.payload_bits(16.0_f32).unwrap(), 65_536.0);
    assert_eq!(small.payload_bits(8.0_f64).unwrap(), 16.0);
    assert_eq!(
        ExpertShape::new(0, 3),
        Err(Error::NotPositive("hidden (m)"))
    );
    assert_eq!(
        ExpertShape::new(2, 0),
        Err(Error::NotPositive("ffn_hidden (m_h)"))
    );
    assert_eq!(
        s.flops_per_token(-1.0_f64),
        Err(Error::Negative("eta_flops"))
    );
    assert_eq!(
        s.payload_bits(0.0_f64),
        Err(Error::NotPositive("bits_per_element"))
    );
}

// ------------------------------------------------------------- latency ---

fn model_1e21() -> LatencyModel<f64> {
    LatencyModel::new(65_536.0, 352_393_216.0, 1e-21).unwrap()
}

#[test]
fn device_and_model_constructors() {
    let d = DeviceLink::new(1.0_f64, 1e-9, 0.1, 2e-9, 1e12).unwrap();
    assert_eq!(
        (
            d.tx_power_down_w(),
            d.gain_down(),
            d.tx_power_up_w(),
            d.gain_up(),
            d.compute_flops_per_s()
        ),
        (1.0, 1e-9, 0.1, 2e-9, 1e12)
    );
    assert_eq!(
        DeviceLink::new(-1.0_f64, 1e-9, 0.1, 1e-9, 1e12),
        Err(Error::Negative("tx_power_down_w"))
    );
    assert_eq!(
        DeviceLink::new(1.0_f64, f64::NAN, 0.1, 1e-9, 1e12),
        Err(Error::NaN("gain_down"))
    );
    assert_eq!(
        DeviceLink::new(1.0_f64, 1e-9, INF, 1e-9, 1e12),
        Err(Error::Negative("tx_power_up_w"))
    );
    assert_eq!(
        DeviceLink::new(1.0_f64, 1e-9, 0.1, -1e-9, 1e12),
        Err(Error::Negative("gain_up"))
    );
    assert_eq!(
        DeviceLink::new(1.0_f64, 1e-9, 0.1, 1e-9, 0.0),
        Err(Error::NotPositive("compute_flops_per_s"))
    );
    let m = model_1e21();
    assert_eq!(
        (m.payload_bits(), m.flops_per_token(), m.n0_w_per_hz()),
        (65_536.0, 352_393_216.0, 1e-21)
    );
    assert_eq!(
        LatencyModel::new(-1.0_f64, 1.0, 1e-21),
        Err(Error::Negative("payload_bits"))
    );
    assert_eq!(
        LatencyModel::new(1.0_f64, f64::NAN, 1e-21),
        Err(Error::NaN("flops_per_token"))
    );
    assert_eq!(
        LatencyModel::new(1.0_f64, 1.0, 0.0),
        Err(Error::NotPositive("n0_w_per_hz"))
    );
}

#[test]
fn device_latency() {
    let m = model_1e21();
    let d = DeviceLink::new(1.0_f64, 1e-9, 0.1, 1e-9, 1e12).unwrap();
    // B = 1 MHz. Down: SNR = 1·1e-9/(1e-21·1e6) = 1e6 → R_d = 1e6·log2(1e6+1) = 19,931,570.01 bit/s
    // Up: SNR = 1e5 → R_u = 1e6·log2(1e5+1) = 16,609,654.90 bit/s
    let (rd, ru) = m.rates_bps(&d, 1e6).unwrap();
    close64(rd, 19931570.012018494);
    close64(ru, 16609654.901315086);
    // Eq. (6): 65,536/R_d + 352,393,216/1e12 + 65,536/R_u
    //        = 3.288054e-3 + 0.352393e-3 + 3.945653e-3 = 7.586100209e-3 s
    close64(m.expert_latency_s(&d, 1e6).unwrap(), 0.007586100209338902);
    let m32 = LatencyModel::new(65_536.0_f32, 352_393_216.0, 1e-21).unwrap();
    let d32 = DeviceLink::new(1.0_f32, 1e-9, 0.1, 1e-9, 1e12).unwrap();
    close32(
        m32.expert_latency_s(&d32, 1e6).unwrap(),
        0.007586100209338902,
    );
    // Floor (B → ∞): L_comp/C + L·N0·ln2/(P_d g_d) + L·N0·ln2/(P_u g_u)
    // = 3.52393216e-4 + 65,536·1e-21·0.693147/1e-9 + 65,536·1e-21·0.693147/1e-10
    // = 3.52393216e-4 + 4.54261e-8 + 4.54261e-7 = 3.528929030e-4 s
    close64(m.latency_floor_s(&d), 0.00035289290302987694);
    // The latency approaches the floor from above.
    let wide = m.expert_latency_s(&d, 1e12).unwrap();
    assert!(wide > m.latency_floor_s(&d) && wide < 1.001 * m.latency_floor_s(&d));
    // A dead link: infinite latency and floor.
    let dead = DeviceLink::new(1.0_f64, 0.0, 0.1, 1e-9, 1e12).unwrap();
    assert_eq!(m.expert_latency_s(&dead, 1e6).unwrap(), INF);
    assert_eq!(m.latency_floor_s(&dead), INF);
    assert_eq!(m.expert_latency_s(&d, 0.0).unwrap(), INF);
    assert_eq!(
        m.expert_latency_s(&d, -1.0),
        Err(Error::Negative("bandwidth_hz"))
    );
    // Zero payload: compute only, even over a dead link: 352,393,216/1e12 s.
    let compute_only = LatencyModel::new(0.0_f64, 352_393_216.0, 1e-21).unwrap();
    close64(
        compute_only.expert_latency_s(&dead, 1e6).unwrap(),
        3.52393216e-4,
    );
    close64(compute_only.latency_floor_s(&dead), 3.52393216e-4);
}

#[test]
fn expert_latency_from_rates() {
    // 65,536/100e6 + 352,393,216/1e12 + 65,536/10e6
    // = 0.65536 ms + 0.352393216 ms + 6.5536 ms = 7.561353216 ms
    close64(
        latency::expert_latency_s(65_536.0, 352_393_216.0, 100e6, 1e12, 10e6).unwrap(),
        7.561353216e-3,
    );
    close32(
        latency::expert_latency_s(65_536.0_f32, 352_393_216.0, 100e6, 1e12, 10e6).unwrap(),
        7.561353216e-3,
    );
    // A zero rate: unreachable.
    assert_eq!(
        latency::expert_latency_s(65_536.0, 1.0, 0.0, 1e12, 10e6).unwrap(),
        INF
    );
    // Zero payload: only compute, 1e9/1e12 = 1 ms, whatever the rates.
    close64(
        latency::expert_latency_s(0.0, 1e9, 0.0, 1e12, 0.0).unwrap(),
        1e-3,
    );
    assert_eq!(
        latency::expert_latency_s(1.0, 1.0, -1.0, 1e12, 1.0),
        Err(Error::Negative("rate_down_bps"))
    );
    assert_eq!(
        latency::expert_latency_s(1.0, 1.0, 1.0, 1e12, f64::NAN),
        Err(Error::NaN("rate_up_bps"))
    );
    assert_eq!(
        latency::expert_latency_s(1.0, 1.0, 1.0, 0.0, 1.0),
        Err(Error::NotPositive("compute_flops_per_s"))
    );
    assert_eq!(
        latency::expert_latency_s(-1.0, 1.0, 1.0, 1.0, 1.0),
        Err(Error::Negative("payload_bits"))
    );
    assert_eq!(
        latency::expert_latency_s(1.0, -1.0, 1.0, 1.0, 1.0),
        Err(Error::Negative("flops"))
    );
}

#[test]
fn token_prompt_and_batched_latency() {
    // Eq. (7): max(0.3, 0.1) = 0.3; max over {2} = 0.7
    let t = [0.3_f64, 0.1, 0.7];
    assert_eq!(latency::token_latency_s(&t, &[0, 1]).unwrap(), 0.3);
    assert_eq!(latency::token_latency_s(&t, &[2]).unwrap(), 0.7);
    assert_eq!(latency::token_latency_s(&[0.1, INF], &[0, 1]).unwrap(), INF);
    assert_eq!(latency::token_latency_s(&t, &[]), Err(Error::Empty));
    assert_eq!(
        latency::token_latency_s(&t, &[3]),
        Err(Error::OutOfRange("expert index"))
    );
    assert_eq!(
        latency::token_latency_s(&[0.0_f64], &[0]),
        Err(Error::LatencyNotPositive)
    );
    assert_eq!(
        latency::token_latency_s(&[f64::NAN], &[0]),
        Err(Error::NaN("latency_s"))
    );
    // Eq. (8): 0.25 + 0.5 + 0.125 = 0.875 (exact); empty: 0
    assert_eq!(
        latency::sequential_prompt_latency_s(&[0.25_f64, 0.5, 0.125]).unwrap(),
        0.875
    );
    assert_eq!(
        latency::sequential_prompt_latency_s(&[0.25_f32, 0.5, 0.125]).unwrap(),
        0.875
    );
    assert_eq!(
        latency::sequential_prompt_latency_s::<f64>(&[]).unwrap(),
        0.0
    );
    assert_eq!(
        latency::sequential_prompt_latency_s(&[0.1_f64, -0.1]),
        Err(Error::Negative("latency_s"))
    );
    // Batched prefill: max(3·1 ms, 1·2.5 ms) = 3 ms; the idle unreachable device is ignored.
    close64(
        latency::batched_layer_latency_s(&[3, 1, 0], &[1e-3, 2.5e-3, INF]).unwrap(),
        3e-3,
    );
    // An unreachable device that has tokens: ∞.
    assert_eq!(
        latency::batched_layer_latency_s(&[1, 1], &[1e-3, INF]).unwrap(),
        INF
    );
    assert_eq!(
        latency::batched_layer_latency_s(&[1, 1], &[1e-3]),
        Err(Error::LengthMismatch)
    );
    assert_eq!(
        latency::batched_layer_latency_s(&[1], &[f64::NAN]),
        Err(Error::NaN("latency_s"))
    );
    // Batched never exceeds sequential over the same tokens. Four tokens, top-2 of
    // three experts with latencies 1, 2, 3 ms: routes {0,1} {0,2} {1,2} {0,1}.
    // Sequential (eq. 7, 8): 2 + 3 + 3 + 2 = 10 ms. Batched: tokens per expert
    // (3, 3, 2): max(3·1, 3·2, 2·3) = 6 ms.
    let lat = [1e-3_f64, 2e-3, 3e-3];
    let routes: [[usize; 2]; 4] = [[0, 1], [0, 2], [1, 2], [0, 1]];
    let per_token: Vec<f64> = routes
        .iter()
        .map(|r| latency::token_latency_s(&lat, r).unwrap())
        .collect();
    let seq = latency::sequential_prompt_latency_s(&per_token).unwrap();
    close64(seq, 10e-3);
    let batched = latency::batched_layer_latency_s(&[3, 3, 2], &lat).unwrap();
    close64(batched, 6e-3);
    assert!(batched <= seq);
}

// -------------------------------------------------------------- select ---

fn sel<F: Float>(
    k: usize,
    theta: F,
    max_drops: usize,
    logits: &[F],
    latency_s: &[F],
) -> Result<Selection<F, 16>, Error> {
    select::select::<F, 16>(&Policy::new(k, theta, max_drops)?, logits, latency_s)
}

#[test]
fn policy_constructor() {
    let p = Policy::new(2, 0.2_f64, 1).unwrap();
    assert_eq!((p.k(), p.theta(), p.max_drops()), (2, 0.2, 1));
    assert!(Policy::new(1, 0.0_f64, 0).is_ok());
    assert!(Policy::new(1, 0.5_f64, 7).is_ok());
    assert_eq!(Policy::new(0, 0.2_f64, 1), Err(Error::KOutOfRange));
    assert_eq!(Policy::new(2, -0.01_f64, 1), Err(Error::ThetaOutOfRange));
    assert_eq!(Policy::new(2, 0.51_f64, 1), Err(Error::ThetaOutOfRange));
    assert_eq!(Policy::new(2, INF, 1), Err(Error::ThetaOutOfRange));
    assert_eq!(Policy::new(2, f32::NAN, 1), Err(Error::NaN("theta")));
}

#[test]
fn top_k_values_and_ties() {
    // p ∝ (1, e², e, e⁻¹); top-2 = {1, 2}; w = e²/(e²+e) = 1/(1+e⁻¹) = 0.73105858
    let s = select::top_k::<f64, 8>(&[0.0, 2.0, 1.0, -1.0], 2).unwrap();
    assert_eq!(s.experts(), &[1, 2]);
    close64(s.weights()[0], 0.7310585786300049);
    close64(s.weights()[1], 0.2689414213699951);
    assert_eq!(s.kappa(), None);
    assert!(s.dropped().is_empty() && !s.fallback());
    let s = select::top_k::<f32, 8>(&[0.0, 2.0, 1.0, -1.0], 2).unwrap();
    assert_eq!(s.experts(), &[1, 2]);
    close32(s.weights()[0], 0.7310585786300049);
    // Ties: lower index first. Logits (1, 0, 1, 0): k = 1 → {0}; k = 2 → {0, 2}, w = ½ each.
    let t = [1.0_f64, 0.0, 1.0, 0.0];
    assert_eq!(select::top_k::<f64, 8>(&t, 1).unwrap().experts(), &[0]);
    let s = select::top_k::<f64, 8>(&t, 2).unwrap();
    assert_eq!(s.experts(), &[0, 2]);
    assert_eq!(s.weights(), &[0.5, 0.5]);
    // All k: every expert, in descending probability, ties by index.
    assert_eq!(
        select::top_k::<f64, 8>(&t, 4).unwrap().experts(),
        &[0, 2, 1, 3]
    );
    // Errors.
    assert_eq!(select::top_k::<f64, 8>(&[], 1), Err(Error::Empty));
    assert_eq!(select::top_k::<f64, 8>(&t, 0), Err(Error::KOutOfRange));
    assert_eq!(select::top_k::<f64, 8>(&t, 5), Err(Error::KOutOfRange));
    assert_eq!(select::top_k::<f64, 2>(&t, 1), Err(Error::CapacityExceeded));
    assert_eq!(
        select::top_k::<f64, 8>(&[0.0, f64::NAN], 1),
        Err(Error::NaN("logits"))
    );
    assert_eq!(
        select::top_k::<f64, 8>(&[0.0, INF], 1),
        Err(Error::NotFinite("logits"))
    );
}

#[test]
fn wlr_and_kappa() {
    // Eq. (9): 0.5/0.1 = 5, 0.3/0.3 = 1, 0.2/∞ = 0
    let mut out = [0.0_f64; 3];
    select::wlr(&[0.5, 0.3, 0.2], &[0.1, 0.3, INF], &mut out).unwrap();
    assert_eq!(out, [5.0, 1.0, 0.0]);
    let mut short = [0.0_f64; 2];
    assert_eq!(
        select::wlr(&[0.5, 0.3, 0.2], &[0.1, 0.3, INF], &mut short),
        Err(Error::LengthMismatch)
    );
    assert_eq!(
        select::wlr(&[-0.5], &[0.1], &mut [0.0]),
        Err(Error::Negative("weights"))
    );
    assert_eq!(
        select::wlr(&[0.5], &[0.0], &mut [0.0]),
        Err(Error::LatencyNotPositive)
    );
    // Eq. (10): WLR 0.6/0.2 = 3 and 0.4/0.8 = 0.5 → κ = 0.5/(0.5+3) = 1/7
    close64(select::kappa(&[0.6, 0.4], &[0.2, 0.8]).unwrap(), 1.0 / 7.0);
    close32(
        select::kappa(&[0.6_f32, 0.4], &[0.2, 0.8]).unwrap(),
        1.0 / 7.0,
    );
    // Scale-free: weights ×10, latencies ×1000 → same κ.
    close64(
        select::kappa(&[6.0, 4.0], &[200.0, 800.0]).unwrap(),
        1.0 / 7.0,
    );
    // Equal WLRs (or one expert): κ = r/(r+r) = 0.5
    assert_eq!(select::kappa(&[0.5_f64], &[0.1]).unwrap(), 0.5);
    assert_eq!(select::kappa(&[0.2_f64, 0.4], &[0.1, 0.2]).unwrap(), 0.5);
    // An unreachable expert: min WLR 0 → κ = 0; all unreachable: indistinguishable, 0.5
    assert_eq!(select::kappa(&[0.6_f64, 0.4], &[0.2, INF]).unwrap(), 0.0);
    assert_eq!(select::kappa(&[0.6_f64, 0.4], &[INF, INF]).unwrap(), 0.5);
    assert_eq!(
        select::kappa(&[0.6_f64], &[0.2, 0.8]),
        Err(Error::LengthMismatch)
    );
    assert_eq!(select::kappa::<f64>(&[], &[]), Err(Error::Empty));
    assert_eq!(
        select::kappa(&[0.6_f64, 0.4], &[0.2, -0.8]),
        Err(Error::LatencyNotPositive)
    );
}

#[test]
fn select_drops_the_slow_expert() {
    // The select() doctest. top-2 = {1, 0}; p1/p0 = e^0.5 = 1.6487213; WLR1/WLR0 = 1.6487213/10;
    // κ = 0.16487213/1.16487213 = 0.14153667 ≤ θ = 0.2 → drop 1.
    let z = [0.5, 1.0, -2.0, 0.0];
    let t = [0.010, 0.100, 0.010, 0.010];
    let s = sel(2, 0.2_f64, 1, &z, &t).unwrap();
    assert_eq!(s.experts(), &[0]);
    assert_eq!(s.weights(), &[1.0]);
    assert_eq!(s.dropped(), &[1]);
    close64(s.kappa().unwrap(), 0.14153667448865262);
    assert!(!s.fallback());
    assert_eq!(s.token_latency_s(&t).unwrap(), 0.010);
    // f32: the same decision.
    let z32 = [0.5_f32, 1.0, -2.0, 0.0];
    let t32 = [0.010_f32, 0.100, 0.010, 0.010];
    let s = sel(2, 0.2_f32, 1, &z32, &t32).unwrap();
    assert_eq!(s.experts(), &[0]);
    close32(s.kappa().unwrap(), 0.14153667448865262);
    // θ = 0.1 < κ: both stay, in descending p: (1, 0), w = 1/(1+e^-0.5) = 0.62245933, 0.37754067.
    let s = sel(2, 0.1_f64, 1, &z, &t).unwrap();
    assert_eq!(s.experts(), &[1, 0]);
    close64(s.weights()[0], 0.6224593312018546);
    close64(s.weights()[1], 0.3775406687981454);
    assert!(s.dropped().is_empty());
    close64(s.kappa().unwrap(), 0.14153667448865262);
    // κ ≤ θ, not <: at θ = κ exactly the expert is dropped. Equal p (logits 0, 0) and
    // latencies 1, 3: WLR ∝ 1, 1/3 → κ = (1/3)/(4/3) = 0.25 exactly; θ = 0.25 drops expert 1.
    let s = sel(2, 0.25_f64, 1, &[0.0, 0.0], &[1.0, 3.0]).unwrap();
    assert_eq!(s.kappa(), Some(0.25));
    assert_eq!(s.experts(), &[0]);
    // and θ just below keeps both.
    let s = sel(2, 0.2499_f64, 1, &[0.0, 0.0], &[1.0, 3.0]).unwrap();
    assert_eq!(s.experts(), &[0, 1]);
}

#[test]
fn select_max_drops() {
    // Three equal logits (p = ⅓ each), latencies 1, 10, 100 ms: WLR ∝ 1000, 100, 10.
    // Test 1: κ = 10/(10+1000) = 0.00990099 ≤ 0.2 → drop 2.
    // Test 2: κ = 100/(100+1000) = 0.09090909 ≤ 0.2 → drop 1.
    let z = [0.0_f64, 0.0, 0.0];
    let t = [0.001, 0.01, 0.1];
    // max_drops = 0: no test, plain top-3, weights ⅓.
    let s = sel(3, 0.2, 0, &z, &t).unwrap();
    assert_eq!(s.experts(), &[0, 1, 2]);
    assert_eq!(s.kappa(), None);
    for &w in s.weights() {
        close64(w, 1.0 / 3.0);
    }
    // max_drops = 1: drop 2; weights ½, ½; κ of the first test.
    let s = sel(3, 0.2, 1, &z, &t).unwrap();
    assert_eq!(s.experts(), &[0, 1]);
    assert_eq!(s.dropped(), &[2]);
    assert_eq!(s.weights(), &[0.5, 0.5]);
    close64(s.kappa().unwrap(), 0.009900990099009901);
    // max_drops = 2: drop 2 then 1; dropped in top-k order; κ still the first test's.
    let s = sel(3, 0.2, 2, &z, &t).unwrap();
    assert_eq!(s.experts(), &[0]);
    assert_eq!(s.dropped(), &[1, 2]);
    assert_eq!(s.weights(), &[1.0]);
    close64(s.kappa().unwrap(), 0.009900990099009901);
    // More drops allowed than experts: the last one is never dropped.
    assert_eq!(sel(3, 0.5, 10, &z, &t).unwrap().experts(), &[0]);
    // θ = 0.05: the first test drops 2, the second (κ = 0.0909 > 0.05) stops.
    let s = sel(3, 0.05, 2, &z, &t).unwrap();
    assert_eq!(s.experts(), &[0, 1]);
    assert_eq!(s.dropped(), &[2]);
    // f32, max_drops = 2.
    let s = sel(3, 0.2_f32, 2, &[0.0; 3], &[0.001, 0.01, 0.1]).unwrap();
    assert_eq!(s.experts(), &[0]);
    close32(s.kappa().unwrap(), 0.009900990099009901);
}

#[test]
fn select_tie_rules() {
    // (a) Equal WLR, different p: the lower p is dropped. Logits (0, -ln 2) give
    // p = (⅔, ⅓) with p1 = p0/2 exactly (e^-ln2 rounds to 0.5 in both precisions,
    // checked here); latencies (2, 1): WLR = ⅓ and ⅓ → κ = 0.5 ≤ θ = 0.5 → drop expert 1.
    let ln2 = core::f64::consts::LN_2;
    assert_eq!(Float::exp(-ln2), 0.5);
    assert_eq!(Float::exp(-(ln2 as f32)), 0.5);
    let s = sel(2, 0.5_f64, 1, &[0.0, -ln2], &[2.0, 1.0]).unwrap();
    assert_eq!(s.kappa(), Some(0.5));
    assert_eq!(s.experts(), &[0]);
    assert_eq!(s.dropped(), &[1]);
    // Same with the labels swapped: still the lower-p expert (now 0) goes.
    let s = sel(2, 0.5_f64, 1, &[-ln2, 0.0], &[1.0, 2.0]).unwrap();
    assert_eq!(s.experts(), &[1]);
    let s = sel(2, 0.5_f32, 1, &[0.0, -(ln2 as f32)], &[2.0, 1.0]).unwrap();
    assert_eq!(s.experts(), &[0]);
    // (b) Equal WLR and equal p: the higher index is dropped.
    let s = sel(2, 0.5_f64, 1, &[0.0, 0.0], &[1.0, 1.0]).unwrap();
    assert_eq!(s.experts(), &[0]);
    assert_eq!(s.dropped(), &[1]);
    let s = sel(3, 0.5_f64, 2, &[0.0, 0.0, 0.0], &[1.0, 1.0, 1.0]).unwrap();
    assert_eq!(s.experts(), &[0]);
    assert_eq!(s.dropped(), &[1, 2]);
    // (c) Output order: equal p keeps index order (κ = 0.5 > θ = 0.4: nothing dropped).
    let s = sel(2, 0.4_f64, 1, &[0.0, 0.0], &[1.0, 1.0]).unwrap();
    assert_eq!(s.experts(), &[0, 1]);
    assert_eq!(s.weights(), &[0.5, 0.5]);
    // (d) top-k ties by lower index: logits (0, 1, 1, 1), k = 2 → {1, 2}.
    let s = sel(2, 0.0_f64, 1, &[0.0, 1.0, 1.0, 1.0], &[1.0; 4]).unwrap();
    assert_eq!(s.experts(), &[1, 2]);
}

#[test]
fn select_unreachable_and_fallback() {
    // Top-2 = {0, 1}; device 0 unreachable → S = {1}, one left, no test, not a fallback.
    let s = sel(2, 0.2_f64, 1, &[2.0, 1.0, 0.0], &[INF, 0.5, 0.5]).unwrap();
    assert_eq!(s.experts(), &[1]);
    assert_eq!(s.weights(), &[1.0]);
    assert_eq!(s.dropped(), &[0]);
    assert_eq!(s.kappa(), None);
    assert!(!s.fallback());
    // θ = 0 still drops an unreachable device... it already left in step 3; and
    // an unreachable expert never serves. Top-3 with device 1 unreachable:
    let s = sel(3, 0.0_f64, 1, &[2.0, 1.0, 0.0], &[0.5, INF, 0.5]).unwrap();
    assert_eq!(s.experts(), &[0, 2]);
    assert_eq!(s.dropped(), &[1]);
    // Every top-2 device unreachable: the best reachable expert by p (index 2 of
    // logits 2, 1, 0, -1 with the last two reachable) serves, flagged.
    let s = sel(2, 0.2_f64, 1, &[2.0, 1.0, 0.0, -1.0], &[INF, INF, 0.5, 0.1]).unwrap();
    assert_eq!(s.experts(), &[2]);
    assert_eq!(s.weights(), &[1.0]);
    assert_eq!(s.dropped(), &[0, 1]);
    assert!(s.fallback());
    assert_eq!(s.kappa(), None);
    let s = sel(1, 0.2_f32, 1, &[2.0, 1.0], &[f32::INFINITY, 0.5]).unwrap();
    assert_eq!(s.experts(), &[1]);
    assert!(s.fallback());
    // Nobody reachable.
    assert_eq!(
        sel(2, 0.2_f64, 1, &[2.0, 1.0], &[INF, INF]),
        Err(Error::NoReachableExpert)
    );
}

#[test]
fn select_errors() {
    let z = [0.0_f64, 1.0];
    let t = [0.1_f64, 0.2];
    assert_eq!(sel(1, 0.2, 1, &[], &[]), Err(Error::Empty));
    assert_eq!(sel(3, 0.2, 1, &z, &t), Err(Error::KOutOfRange));
    assert_eq!(sel(1, 0.2, 1, &z, &t[..1]), Err(Error::LengthMismatch));
    assert_eq!(
        sel(1, 0.2, 1, &[f64::NAN, 0.0], &t),
        Err(Error::NaN("logits"))
    );
    assert_eq!(
        sel(1, 0.2, 1, &[-INF, 0.0], &t),
        Err(Error::NotFinite("logits"))
    );
    assert_eq!(
        sel(1, 0.2, 1, &z, &[0.1, 0.0]),
        Err(Error::LatencyNotPositive)
    );
    assert_eq!(
        sel(1, 0.2, 1, &z, &[0.1, -INF]),
        Err(Error::LatencyNotPositive)
    );
    assert_eq!(
        sel(1, 0.2, 1, &z, &[0.1, f64::NAN]),
        Err(Error::NaN("latency_s"))
    );
    let p = Policy::new(1, 0.2_f64, 1).unwrap();
    assert_eq!(
        select::select::<f64, 1>(&p, &z, &t),
        Err(Error::CapacityExceeded)
    );
}

// ----------------------------------------------------------- bandwidth ---

fn paper_model() -> LatencyModel<f64> {
    // Mixtral: 65,536 bit, 352,393,216 FLOP; N0 = -174 dBm/Hz = 3.98e-21 W/Hz.
    LatencyModel::new(65_536.0, 352_393_216.0, 3.98e-21).unwrap()
}

#[test]
fn even_split() {
    // 100 MHz / 8 = 12.5 MHz each (the paper's split)
    let mut b = [0.0_f64; 8];
    bandwidth::even_split(100e6, &mut b).unwrap();
    assert_eq!(b, [12.5e6; 8]);
    let mut b32 = [0.0_f32; 8];
    bandwidth::even_split(100e6_f32, &mut b32).unwrap();
    assert_eq!(b32, [12.5e6; 8]);
    assert_eq!(bandwidth::even_split(100e6_f64, &mut []), Err(Error::Empty));
    assert_eq!(
        bandwidth::even_split(-1.0_f64, &mut b),
        Err(Error::Negative("total_bandwidth_hz"))
    );
}

#[test]
fn min_max_equalises_latencies() {
    let m = paper_model();
    // Identical devices: by symmetry the optimum is the even split, 10 MHz each.
    let d = DeviceLink::new(10.0, 1e-10, 0.2, 1e-10, 2e12).unwrap();
    let mut b = [0.0; 2];
    let worst = bandwidth::min_max(&m, &[d, d], 20e6, &mut b).unwrap();
    close(b[0], 10e6, 1e-9);
    close(b[1], 10e6, 1e-9);
    close(worst, m.expert_latency_s(&d, 10e6).unwrap(), 1e-9);
    // A near (g² = 1e-8), a mid (1e-10) and a far (1e-11) device over 30 MHz: the
    // farther, the more bandwidth; the total is handed out; the latencies are
    // equal (the min–max optimum); the max is below the even split's.
    let devs = [
        DeviceLink::new(10.0, 1e-8, 0.2, 1e-8, 2e12).unwrap(),
        DeviceLink::new(10.0, 1e-10, 0.2, 1e-10, 2e12).unwrap(),
        DeviceLink::new(10.0, 1e-11, 0.2, 1e-11, 1e12).unwrap(),
    ];
    let mut b = [0.0; 3];
    let worst = bandwidth::min_max(&m, &devs, 30e6, &mut b).unwrap();
    assert!(b[0] < b[1] && b[1] < b[2], "{b:?}");
    close(b.iter().sum::<f64>(), 30e6, 1e-12);
    let lat: Vec<f64> = devs
        .iter()
        .zip(&b)
        .map(|(d, &x)| m.expert_latency_s(d, x).unwrap())
        .collect();
    for &l in &lat {
        close(l, worst, 1e-6);
    }
    assert_eq!(lat.iter().cloned().fold(0.0, f64::max), worst);
    let even_worst = devs
        .iter()
        .map(|d| m.expert_latency_s(d, 10e6).unwrap())
        .fold(0.0, f64::max);
    assert!(worst < even_worst, "{worst} vs {even_worst}");
    // f32 as well.
    let m32 = LatencyModel::new(65_536.0_f32, 352_393_216.0, 3.98e-21).unwrap();
    let near = DeviceLink::new(10.0_f32, 1e-8, 0.2, 1e-8, 2e12).unwrap();
    let far = DeviceLink::new(10.0_f32, 1e-11, 0.2, 1e-11, 2e12).unwrap();
    let mut b = [0.0_f32; 2];
    let worst = bandwidth::min_max(&m32, &[near, far], 20e6, &mut b).unwrap();
    assert!(b[1] > b[0]);
    assert!(worst <= m32.expert_latency_s(&far, 10e6).unwrap());
    close32(b[0] + b[1], 20e6);
}

#[test]
fn min_max_errors() {
    let m = paper_model();
    let d = DeviceLink::new(10.0, 1e-10, 0.2, 1e-10, 2e12).unwrap();
    let dead = DeviceLink::new(10.0, 0.0, 0.2, 1e-10, 2e12).unwrap();
    let mut b = [0.0; 2];
    assert_eq!(
        bandwidth::min_max(&m, &[d, dead], 20e6, &mut b),
        Err(Error::Infeasible)
    );
    assert_eq!(
        bandwidth::min_max(&m, &[d, d], 0.0, &mut b),
        Err(Error::NotPositive("total_bandwidth_hz"))
    );
    assert_eq!(
        bandwidth::min_max(&m, &[], 20e6, &mut []),
        Err(Error::Empty)
    );
    assert_eq!(
        bandwidth::min_max(&m, &[d], 20e6, &mut b),
        Err(Error::LengthMismatch)
    );
}

// --------------------------------------------------------------- Error ---

#[test]
fn error_display_and_trait() {
    let cases: [(Error, &str); 13] = [
        (Error::NaN("theta"), "theta is NaN"),
        (
            Error::NotPositive("distance_m"),
            "distance_m must be finite and > 0",
        ),
        (
            Error::Negative("tx_power_w"),
            "tx_power_w must be finite and >= 0",
        ),
        (Error::NotFinite("logits"), "logits must be finite"),
        (
            Error::LatencyNotPositive,
            "latency_s entries must be > 0 seconds (or +inf for an unreachable device)",
        ),
        (
            Error::KOutOfRange,
            "k must satisfy 1 <= k <= number of experts",
        ),
        (
            Error::ThetaOutOfRange,
            "theta must satisfy 0 <= theta <= 0.5",
        ),
        (Error::CapacityExceeded, "more experts than the capacity N"),
        (Error::LengthMismatch, "input lengths differ"),
        (Error::Empty, "input is empty"),
        (
            Error::NoReachableExpert,
            "no expert is reachable (every latency is +inf)",
        ),
        (
            Error::OutOfRange("expert index"),
            "expert index is outside the model's valid range",
        ),
        (
            Error::Infeasible,
            "no bandwidth allocation gives every device a finite latency",
        ),
    ];
    for (e, want) in cases {
        assert_eq!(e.to_string(), want);
        let dynamic: &dyn core::error::Error = &e;
        assert!(dynamic.source().is_none());
        let copy = e; // Copy
        assert_eq!(copy, e);
    }
}

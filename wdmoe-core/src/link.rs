//! Link model: unit conversions, path loss, noise and the Shannon rate of the
//! paper's equations (2)–(3).
//!
//! Units are in every name: `_db` decibels, `_dbm` decibel-milliwatts,
//! `_w` watts, `_hz` hertz, `_ghz` gigahertz, `_m` metres, `_bps` bit/s.
//! Channel gains are *power* gains `g²` (linear, dimensionless).

use crate::error::{finite, non_negative, positive};
use crate::{Error, Float};

/// Speed of light in vacuum [m/s].
pub const SPEED_OF_LIGHT_M_PER_S: f64 = 299_792_458.0;

/// Thermal noise power spectral density at 290 K [dBm/Hz], the paper's-silent default N0.
pub const THERMAL_NOISE_DBM_PER_HZ: f64 = -174.0;

/// Decibels to a linear power ratio: `10^(db/10)`. A ratio too large for
/// the float type (above ~385 dB in `f32`, ~3083 dB in `f64`) is an error,
/// never `+∞` (which would turn `∞ · 0` into NaN downstream); a ratio too
/// small underflows to 0.
///
/// ```
/// use wdmoe_core::{link::db_to_linear, Error};
/// let x = db_to_linear(20.0_f64).unwrap();
/// assert!((x - 100.0).abs() < 1e-9);
/// assert_eq!(db_to_linear(400.0_f32), Err(Error::OutOfRange("db")));
/// ```
pub fn db_to_linear<F: Float>(db: F) -> Result<F, Error> {
    let db = finite(db, "db")?;
    let x = F::from_f64(10.0).powf(db / F::from_f64(10.0));
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::OutOfRange("db"))
    }
}

/// A linear power ratio to decibels: `10·log10(x)`; `x = 0` gives `-∞` dB.
///
/// ```
/// let db = wdmoe_core::link::linear_to_db(1000.0_f64).unwrap();
/// assert!((db - 30.0).abs() < 1e-9);
/// ```
pub fn linear_to_db<F: Float>(x: F) -> Result<F, Error> {
    let x = non_negative(x, "linear power ratio")?;
    Ok(F::from_f64(10.0) * x.log10())
}

/// dBm to watts: `10^((dbm − 30)/10)`.
///
/// ```
/// let w = wdmoe_core::link::dbm_to_w(40.0_f64).unwrap(); // 40 dBm = 10 W
/// assert!((w - 10.0).abs() < 1e-9);
/// ```
pub fn dbm_to_w<F: Float>(dbm: F) -> Result<F, Error> {
    let dbm = finite(dbm, "power_dbm")?;
    db_to_linear(dbm - F::from_f64(30.0))
}

/// Watts to dBm: `10·log10(w) + 30`; 0 W gives `-∞` dBm.
///
/// ```
/// let dbm = wdmoe_core::link::w_to_dbm(0.2_f64).unwrap(); // the paper's device power
/// assert!((dbm - 23.0103).abs() < 1e-4);
/// ```
pub fn w_to_dbm<F: Float>(w: F) -> Result<F, Error> {
    let w = non_negative(w, "power_w")?;
    Ok(linear_to_db(w)? + F::from_f64(30.0))
}

/// The paper's path loss (the 3GPP free-space form, docs/SPEC.md):
/// `PL \[dB\] = 32.4 + 20·log10(f_ghz) + 20·log10(distance_m)`.
///
/// ```
/// // 3.5 GHz at 100 m: 32.4 + 20·log10(3.5) + 40 = 83.28 dB
/// let pl = wdmoe_core::link::free_space_path_loss_db(3.5_f64, 100.0).unwrap();
/// assert!((pl - 83.281).abs() < 1e-3);
/// ```
pub fn free_space_path_loss_db<F: Float>(f_ghz: F, distance_m: F) -> Result<F, Error> {
    let f = positive(f_ghz, "frequency_ghz")?;
    let d = positive(distance_m, "distance_m")?;
    let twenty = F::from_f64(20.0);
    Ok(F::from_f64(32.4) + twenty * f.log10() + twenty * d.log10())
}

/// Channel power gain `g² = 10^(−PL/10) · |h|²` from a path loss \[dB\] and a
/// small-scale fading power `|h|²` (1 for no fading; `Exp(1)` for Rayleigh).
///
/// ```
/// let g2 = wdmoe_core::link::channel_power_gain(80.0_f64, 1.0).unwrap();
/// assert!((g2 - 1e-8).abs() < 1e-20);
/// ```
pub fn channel_power_gain<F: Float>(path_loss_db: F, fading_power: F) -> Result<F, Error> {
    let pl = finite(path_loss_db, "path_loss_db")?;
    let h2 = non_negative(fading_power, "fading_power")?;
    Ok(db_to_linear(-pl)? * h2)
}

/// Noise power spectral density [W/Hz] from `N0` [dBm/Hz] and a receiver
/// noise figure \[dB\] (0 dB for the paper's ideal receiver).
///
/// ```
/// let n0 = wdmoe_core::link::noise_psd_w_per_hz(-174.0_f64, 0.0).unwrap();
/// assert!((n0 / 3.981e-21 - 1.0).abs() < 1e-3);
/// ```
pub fn noise_psd_w_per_hz<F: Float>(n0_dbm_per_hz: F, noise_figure_db: F) -> Result<F, Error> {
    let n0 = finite(n0_dbm_per_hz, "n0_dbm_per_hz")?;
    let nf = non_negative(noise_figure_db, "noise_figure_db")?;
    dbm_to_w(n0 + nf)
}

/// Noise power \[W\] in a bandwidth: `N0 · NF · B`.
///
/// ```
/// // -174 dBm/Hz over 12.5 MHz with a 7 dB noise figure: -96.03 dBm
/// let w = wdmoe_core::link::noise_power_w(-174.0_f64, 12.5e6, 7.0).unwrap();
/// let dbm = wdmoe_core::link::w_to_dbm(w).unwrap();
/// assert!((dbm + 96.031).abs() < 1e-3);
/// ```
pub fn noise_power_w<F: Float>(
    n0_dbm_per_hz: F,
    bandwidth_hz: F,
    noise_figure_db: F,
) -> Result<F, Error> {
    let b = non_negative(bandwidth_hz, "bandwidth_hz")?;
    Ok(noise_psd_w_per_hz(n0_dbm_per_hz, noise_figure_db)? * b)
}

/// Shannon rate, equations (2) and (3): `R = B · log2(1 + P·g² / (N0·B))` [bit/s].
///
/// `bandwidth_hz = 0`, `tx_power_w = 0` or `gain = 0` give a rate of 0 (the
/// device is unreachable: its latency is `+∞`). Accurate at very low SNR
/// (uses `log2(1+x)`) and at extreme SNR (evaluated in the log domain). A
/// rate that overflows the float type (bandwidths near its maximum) is
/// [`Error::OutOfRange`], never `+∞` (which would make a latency 0).
///
/// ```
/// use wdmoe_core::link::shannon_rate_bps;
/// // SNR = P g² / (N0 B) = 1e-3 · 1e-9 / (1e-21 · 1e6) = 1000 → R = 1e6 · log2(1001)
/// let r = shannon_rate_bps(1e6_f64, 1e-3, 1e-9, 1e-21).unwrap();
/// assert!((r - 1e6 * 1001f64.log2()).abs() < 1e-3);
/// ```
pub fn shannon_rate_bps<F: Float>(
    bandwidth_hz: F,
    tx_power_w: F,
    gain: F,
    n0_w_per_hz: F,
) -> Result<F, Error> {
    let b = non_negative(bandwidth_hz, "bandwidth_hz")?;
    let p = non_negative(tx_power_w, "tx_power_w")?;
    let g = non_negative(gain, "channel_gain")?;
    let n0 = positive(n0_w_per_hz, "n0_w_per_hz")?;
    if b == F::ZERO || p == F::ZERO || g == F::ZERO {
        return Ok(F::ZERO);
    }
    let r = shannon_rate_unchecked(b, p, g, n0);
    if r.is_finite() {
        Ok(r)
    } else {
        // Only bandwidths near the float maximum get here (log2(1+SNR) ≤ 1024).
        Err(Error::OutOfRange("bandwidth_hz (the rate overflows)"))
    }
}

/// Equations (2)/(3) for `b, p, g > 0` finite and `n0 > 0` finite; may
/// overflow to `+∞` for absurd bandwidths.
fn shannon_rate_unchecked<F: Float>(b: F, p: F, g: F, n0: F) -> F {
    // Directly when every intermediate is a normal number (full precision).
    let normal = |x: F| x.is_finite() && x >= F::MIN_POSITIVE;
    let (pg, nb) = (p * g, n0 * b);
    if normal(pg) && normal(nb) {
        let snr = pg / nb;
        if normal(snr) {
            return b * snr.log2_1p();
        }
    }
    // Overflow or underflow on the way (of `p·g`, say, while the SNR itself
    // is moderate), or of the SNR itself: work with logarithms.
    let log_snr = p.log2() + g.log2() - n0.log2() - b.log2();
    let two = F::from_f64(2.0);
    let snr = two.powf(log_snr);
    if normal(snr) {
        b * snr.log2_1p()
    } else if log_snr > F::ZERO {
        b * log_snr // log2(1+x) ≈ log2(x) when x is astronomically large
    } else {
        // log2(1+x) ≈ x / ln 2 for x → 0: b·x = 2^(log2 b + log2 x), a tiny rate or 0.
        two.powf(b.log2() + log_snr) * F::from_f64(core::f64::consts::LOG2_E)
    }
}

/// Shadow-fading standard deviations and breakpoint helpers shared by the 3GPP models.
fn breakpoint_m<F: Float>(h_bs_m: F, h_ut_m: F, f_ghz: F) -> F {
    // d'_BP = 4 h'_BS h'_UT f_c / c with effective heights h' = h − 1 m (h_E = 1 m).
    let one = F::ONE;
    F::from_f64(4.0)
        * (h_bs_m - one)
        * (h_ut_m - one)
        * f_ghz
        * F::from_f64(1e9 / SPEED_OF_LIGHT_M_PER_S)
}

/// `log10(sqrt(a² + b²))` without overflow or underflow of the squares.
fn log10_hypot<F: Float>(a: F, b: F) -> F {
    let abs = |x: F| if x < F::ZERO { -x } else { x };
    let (a, b) = (abs(a), abs(b));
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if hi == F::ZERO {
        return F::ZERO.log10();
    }
    let r = lo / hi;
    hi.log10() + F::HALF * (F::ONE + r * r).log10()
}

fn check_f_d<F: Float>(f_ghz: F, d2d_m: F) -> Result<(F, F), Error> {
    let f = positive(f_ghz, "frequency_ghz")?;
    if f < F::from_f64(0.5) || f > F::from_f64(100.0) {
        return Err(Error::OutOfRange(
            "frequency_ghz (3GPP TR 38.901: 0.5..=100)",
        ));
    }
    let d = positive(d2d_m, "distance_2d_m")?;
    // TR 38.901 defines UMa/UMi from 10 m; closer devices are evaluated at 10 m.
    Ok((f, d.max_of(F::from_f64(10.0))))
}

/// Coefficients of the 3GPP TR 38.901 dual-slope LOS and the NLOS path-loss
/// formulas, which UMa and UMi share in form (Table 7.4.1-1). The table is
/// in the float type itself: built from literals at the call site, so the
/// `f32` build holds `f32` constants and converts nothing at run time.
struct DualSlope<F> {
    los_a: F,
    los_b1: F,
    los_b2: F,
    los_bp: F,
    nlos_a: F,
    nlos_b: F,
    nlos_f: F,
    nlos_h: F,
}

impl<F: Float> DualSlope<F> {
    /// LOS: `a + b1·log10(d3D) + 20·log10(fc)` up to the breakpoint, then
    /// `a + b2·log10(d3D) + 20·log10(fc) − bp·log10(d'BP² + Δh²)`; NLOS: the
    /// larger of LOS and `a' + b'·log10(d3D) + f'·log10(fc) − h'·(hUT − 1.5)`.
    fn path_loss_db(
        &self,
        h_bs_m: F,
        h_ut_m: F,
        f_ghz: F,
        d2d_m: F,
        los: bool,
    ) -> Result<F, Error> {
        let (f, d2d) = check_f_d(f_ghz, d2d_m)?;
        let c = F::from_f64;
        let dh = h_bs_m - h_ut_m;
        let log_d3d = log10_hypot(d2d, dh);
        let log_f = f.log10();
        let dbp = breakpoint_m(h_bs_m, h_ut_m, f);
        let pl_los = if d2d <= dbp {
            self.los_a + self.los_b1 * log_d3d + c(20.0) * log_f
        } else {
            self.los_a + self.los_b2 * log_d3d + c(20.0) * log_f
                - self.los_bp * c(2.0) * log10_hypot(dbp, dh)
        };
        if los {
            return Ok(pl_los);
        }
        let pl_nlos = self.nlos_a + self.nlos_b * log_d3d + self.nlos_f * log_f
            - self.nlos_h * (h_ut_m - c(1.5));
        Ok(pl_los.max_of(pl_nlos))
    }
}

fn check_heights<F: Float>(h_bs_m: F, h_ut_m: F) -> Result<(F, F), Error> {
    let h_bs = positive(h_bs_m, "bs_height_m")?;
    let h_ut = positive(h_ut_m, "ut_height_m")?;
    if h_bs <= F::ONE {
        return Err(Error::OutOfRange("bs_height_m (must exceed 1 m)"));
    }
    if h_ut < F::from_f64(1.5) || h_ut > F::from_f64(22.5) {
        return Err(Error::OutOfRange(
            "ut_height_m (3GPP TR 38.901: 1.5..=22.5)",
        ));
    }
    Ok((h_bs, h_ut))
}

/// 3GPP TR 38.901 (Table 7.4.1-1, 7.4.2-1) Urban Macro (UMa) path loss.
///
/// Heights in metres (`bs_height_m` default 25, `ut_height_m` in 1.5..=22.5),
/// frequency in GHz (0.5..=100), 2-D distance in metres (below 10 m it is
/// evaluated at 10 m; beyond 5 km the formulas are extrapolated). The
/// effective environment height is `h_E = 1 m`.
///
/// ```
/// use wdmoe_core::link::Uma;
/// let uma = Uma::new(25.0_f64, 1.5).unwrap();
/// let los = uma.path_loss_db(3.5, 200.0, true).unwrap();
/// let nlos = uma.path_loss_db(3.5, 200.0, false).unwrap();
/// assert!(nlos > los); // NLOS is never below LOS
/// // 18/200 + e^(−200/63)·(1 − 18/200) = 0.09 + 0.04180·0.91 = 0.12804
/// assert!((uma.los_probability(200.0).unwrap() - 0.12804).abs() < 1e-4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uma<F> {
    bs_height_m: F,
    ut_height_m: F,
}

impl<F: Float> Uma<F> {
    /// Log-normal shadow-fading standard deviation in LOS \[dB\].
    pub const SHADOW_STD_LOS_DB: f64 = 4.0;
    /// Log-normal shadow-fading standard deviation in NLOS \[dB\].
    pub const SHADOW_STD_NLOS_DB: f64 = 6.0;

    /// A UMa model; heights in metres, validated.
    pub fn new(bs_height_m: F, ut_height_m: F) -> Result<Self, Error> {
        let (bs_height_m, ut_height_m) = check_heights(bs_height_m, ut_height_m)?;
        Ok(Self {
            bs_height_m,
            ut_height_m,
        })
    }

    /// Base-station height \[m\].
    pub fn bs_height_m(&self) -> F {
        self.bs_height_m
    }

    /// User-terminal height \[m\].
    pub fn ut_height_m(&self) -> F {
        self.ut_height_m
    }

    /// Path loss \[dB\] at `f_ghz` and 2-D distance `d2d_m`, in LOS or NLOS.
    pub fn path_loss_db(&self, f_ghz: F, d2d_m: F, los: bool) -> Result<F, Error> {
        // Table 7.4.1-1: PL1 = 28 + 22·log10(d3D) + 20·log10(fc),
        // PL2 = 28 + 40·log10(d3D) + 20·log10(fc) − 9·log10(d'BP² + (hBS − hUT)²),
        // PL'NLOS = 13.54 + 39.08·log10(d3D) + 20·log10(fc) − 0.6·(hUT − 1.5).
        let c = F::from_f64;
        let coeffs = DualSlope {
            los_a: c(28.0),
            los_b1: c(22.0),
            los_b2: c(40.0),
            los_bp: c(9.0),
            nlos_a: c(13.54),
            nlos_b: c(39.08),
            nlos_f: c(20.0),
            nlos_h: c(0.6),
        };
        coeffs.path_loss_db(self.bs_height_m, self.ut_height_m, f_ghz, d2d_m, los)
    }

    /// Probability of line of sight at 2-D distance `d2d_m` \[m\]: 1 up to
    /// 18 m, then `(18/d + e^(−d/63)·(1 − 18/d))·(1 + C'(h_UT)·(5/4)·(d/100)³·e^(−d/150))`
    /// with `C'(h_UT) = ((h_UT − 13)/10)^1.5` above 13 m, else 0 (example on [`Uma`]).
    pub fn los_probability(&self, d2d_m: F) -> Result<F, Error> {
        let d = positive(d2d_m, "distance_2d_m")?;
        let c18 = F::from_f64(18.0);
        if d <= c18 {
            return Ok(F::ONE);
        }
        let h = self.ut_height_m;
        let c_h = if h <= F::from_f64(13.0) {
            F::ZERO
        } else {
            ((h - F::from_f64(13.0)) / F::from_f64(10.0)).powf(F::from_f64(1.5))
        };
        let base = c18 / d + (-d / F::from_f64(63.0)).exp() * (F::ONE - c18 / d);
        // (d/100)³·e^(−d/150) as one exponential: no ∞·0 for huge d.
        let r3_decay =
            (F::from_f64(3.0) * (d / F::from_f64(100.0)).ln() - d / F::from_f64(150.0)).exp();
        let corr = F::ONE + c_h * F::from_f64(1.25) * r3_decay;
        Ok((base * corr).min_of(F::ONE))
    }
}

/// 3GPP TR 38.901 Urban Micro street canyon (UMi) path loss.
///
/// Heights in metres (`bs_height_m` default 10, `ut_height_m` in 1.5..=22.5),
/// frequency in GHz (0.5..=100), 2-D distance in metres (below 10 m it is
/// evaluated at 10 m).
///
/// ```
/// use wdmoe_core::link::UmiStreetCanyon;
/// let umi = UmiStreetCanyon::new(10.0_f64, 1.5).unwrap();
/// // LOS, before the breakpoint: 32.4 + 21·log10(d3D) + 20·log10(3.5)
/// let d3d = (100.0_f64 * 100.0 + 8.5 * 8.5).sqrt();
/// let want = 32.4 + 21.0 * d3d.log10() + 20.0 * 3.5_f64.log10();
/// assert!((umi.path_loss_db(3.5, 100.0, true).unwrap() - want).abs() < 1e-9);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UmiStreetCanyon<F> {
    bs_height_m: F,
    ut_height_m: F,
}

impl<F: Float> UmiStreetCanyon<F> {
    /// Log-normal shadow-fading standard deviation in LOS \[dB\].
    pub const SHADOW_STD_LOS_DB: f64 = 4.0;
    /// Log-normal shadow-fading standard deviation in NLOS \[dB\].
    pub const SHADOW_STD_NLOS_DB: f64 = 7.82;

    /// A UMi street-canyon model; heights in metres, validated.
    pub fn new(bs_height_m: F, ut_height_m: F) -> Result<Self, Error> {
        let (bs_height_m, ut_height_m) = check_heights(bs_height_m, ut_height_m)?;
        Ok(Self {
            bs_height_m,
            ut_height_m,
        })
    }

    /// Path loss \[dB\] at `f_ghz` and 2-D distance `d2d_m`, in LOS or NLOS.
    pub fn path_loss_db(&self, f_ghz: F, d2d_m: F, los: bool) -> Result<F, Error> {
        // Table 7.4.1-1: PL1 = 32.4 + 21·log10(d3D) + 20·log10(fc),
        // PL2 = 32.4 + 40·log10(d3D) + 20·log10(fc) − 9.5·log10(d'BP² + (hBS − hUT)²),
        // PL'NLOS = 22.4 + 35.3·log10(d3D) + 21.3·log10(fc) − 0.3·(hUT − 1.5).
        let c = F::from_f64;
        let coeffs = DualSlope {
            los_a: c(32.4),
            los_b1: c(21.0),
            los_b2: c(40.0),
            los_bp: c(9.5),
            nlos_a: c(22.4),
            nlos_b: c(35.3),
            nlos_f: c(21.3),
            nlos_h: c(0.3),
        };
        coeffs.path_loss_db(self.bs_height_m, self.ut_height_m, f_ghz, d2d_m, los)
    }

    /// Probability of line of sight at 2-D distance `d2d_m` \[m\]:
    /// 1 up to 18 m, then `18/d + e^(−d/36)·(1 − 18/d)`.
    ///
    /// ```
    /// use wdmoe_core::link::UmiStreetCanyon;
    /// let umi = UmiStreetCanyon::new(10.0_f64, 1.5).unwrap();
    /// // 0.18 + e^(−100/36)·0.82 = 0.18 + 0.062177·0.82 = 0.230985
    /// assert!((umi.los_probability(100.0).unwrap() - 0.230985).abs() < 1e-6);
    /// ```
    pub fn los_probability(&self, d2d_m: F) -> Result<F, Error> {
        let d = positive(d2d_m, "distance_2d_m")?;
        let c18 = F::from_f64(18.0);
        if d <= c18 {
            return Ok(F::ONE);
        }
        Ok(c18 / d + (-d / F::from_f64(36.0)).exp() * (F::ONE - c18 / d))
    }
}

/// Which large-scale path-loss model a link uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PathLossModel<F> {
    /// The paper's model, [`free_space_path_loss_db`]; LOS flag ignored.
    FreeSpace,
    /// 3GPP UMa, [`Uma`].
    Uma(Uma<F>),
    /// 3GPP UMi street canyon, [`UmiStreetCanyon`].
    UmiStreetCanyon(UmiStreetCanyon<F>),
}

impl<F: Float> PathLossModel<F> {
    /// Path loss \[dB\] at `f_ghz` and 2-D distance `d2d_m`.
    ///
    /// ```
    /// use wdmoe_core::link::PathLossModel;
    /// let pl = PathLossModel::<f64>::FreeSpace.path_loss_db(3.5, 100.0, true).unwrap();
    /// assert!((pl - 83.281).abs() < 1e-3);
    /// ```
    pub fn path_loss_db(&self, f_ghz: F, d2d_m: F, los: bool) -> Result<F, Error> {
        match self {
            PathLossModel::FreeSpace => free_space_path_loss_db(f_ghz, d2d_m),
            PathLossModel::Uma(m) => m.path_loss_db(f_ghz, d2d_m, los),
            PathLossModel::UmiStreetCanyon(m) => m.path_loss_db(f_ghz, d2d_m, los),
        }
    }

    /// Probability of line of sight at 2-D distance `d2d_m` \[m\] (1 for
    /// free space).
    ///
    /// ```
    /// use wdmoe_core::link::{PathLossModel, Uma};
    /// assert_eq!(PathLossModel::<f64>::FreeSpace.los_probability(500.0).unwrap(), 1.0);
    /// let uma = PathLossModel::Uma(Uma::new(25.0_f64, 1.5).unwrap());
    /// assert!((uma.los_probability(200.0).unwrap() - 0.128048).abs() < 1e-6);
    /// ```
    pub fn los_probability(&self, d2d_m: F) -> Result<F, Error> {
        match self {
            PathLossModel::FreeSpace => positive(d2d_m, "distance_2d_m").map(|_| F::ONE),
            PathLossModel::Uma(m) => m.los_probability(d2d_m),
            PathLossModel::UmiStreetCanyon(m) => m.los_probability(d2d_m),
        }
    }

    /// Log-normal shadow-fading standard deviation \[dB\] (0 for free space;
    /// TR 38.901: UMa 4 / 6 dB, UMi 4 / 7.82 dB in LOS / NLOS).
    ///
    /// ```
    /// use wdmoe_core::link::{PathLossModel, UmiStreetCanyon};
    /// let umi = PathLossModel::UmiStreetCanyon(UmiStreetCanyon::new(10.0_f64, 1.5).unwrap());
    /// assert_eq!(umi.shadow_std_db(false), 7.82);
    /// ```
    pub fn shadow_std_db(&self, los: bool) -> F {
        let v = match (self, los) {
            (PathLossModel::FreeSpace, _) => 0.0,
            (PathLossModel::Uma(_), true) => Uma::<F>::SHADOW_STD_LOS_DB,
            (PathLossModel::Uma(_), false) => Uma::<F>::SHADOW_STD_NLOS_DB,
            (PathLossModel::UmiStreetCanyon(_), true) => UmiStreetCanyon::<F>::SHADOW_STD_LOS_DB,
            (PathLossModel::UmiStreetCanyon(_), false) => UmiStreetCanyon::<F>::SHADOW_STD_NLOS_DB,
        };
        F::from_f64(v)
    }
}

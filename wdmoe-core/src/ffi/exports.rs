//! The `extern "C"` entry points, generated for `f32` and `f64` by one
//! macro from the checked implementations in the parent module.

use core::ffi::c_int;

use super::*;
use crate::compute::ExpertShape;
use crate::link::{Uma, UmiStreetCanyon};
use crate::{latency, link, Error, Float};

/// The 3GPP models' shared entry: builds the model from heights, then asks it.
fn uma<F: Float>(bs_height_m: F, ut_height_m: F) -> Result<Uma<F>, Error> {
    Uma::new(bs_height_m, ut_height_m)
}

fn umi<F: Float>(bs_height_m: F, ut_height_m: F) -> Result<UmiStreetCanyon<F>, Error> {
    UmiStreetCanyon::new(bs_height_m, ut_height_m)
}

/// Generates every entry point for one float type. The names are listed
/// explicitly so that `grep` finds each exported symbol here.
macro_rules! export {
    (
        $F:ty;
        $select:ident, $select_into:ident, $top_k:ident, $kappa:ident, $wlr:ident,
        $db_to_linear:ident, $linear_to_db:ident, $dbm_to_w:ident, $w_to_dbm:ident,
        $fspl:ident, $uma_pl:ident, $umi_pl:ident, $uma_los:ident, $umi_los:ident,
        $gain:ident, $n0:ident, $noise:ident, $rate:ident,
        $flops:ident, $payload:ident,
        $expert_latency:ident, $device_latency:ident, $token_latency:ident,
        $sequential:ident, $batched:ident,
        $even:ident, $min_max:ident
    ) => {
        /// Algorithm 1 (docs/SPEC.md) on `n` experts: `logits` and `latency_s` \[s\]
        /// (`+inf` = unreachable) of length `n ≤ 256`, top-`k`, threshold
        /// `theta` ∈ [0, 0.5], at most `max_drops` drops; result in `*out`.
        ///
        /// # Safety
        /// `logits` and `latency_s` point to `n` readable floats and `out` to
        /// one writable selection, or are null (an error).
        #[no_mangle]
        pub unsafe extern "C" fn $select(
            logits: *const $F,
            latency_s: *const $F,
            n: usize,
            k: usize,
            theta: $F,
            max_drops: usize,
            out: *mut SelectionC<$F>,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { select_impl(logits, latency_s, n, k, theta, max_drops, out) })
        }

        /// Algorithm 1 on caller-sized memory, for firmware: `n ≤ 65535`
        /// experts, `scratch_probs` (n floats, receives the router
        /// probabilities), results in `out_experts`, `out_weights`,
        /// `out_dropped` (min(k, n) entries each) and `*out_info`. Nothing
        /// is written on an error.
        ///
        /// # Safety
        /// `logits`, `latency_s`, `scratch_probs` point to `n` floats, the
        /// three output arrays to `min(k, n)` elements, `out_info` to one
        /// struct; the written memory overlaps nothing else.
        #[no_mangle]
        pub unsafe extern "C" fn $select_into(
            logits: *const $F,
            latency_s: *const $F,
            n: u16,
            k: u16,
            theta: $F,
            max_drops: u16,
            scratch_probs: *mut $F,
            out_experts: *mut u16,
            out_weights: *mut $F,
            out_dropped: *mut u16,
            out_info: *mut SelectionInfoC<$F>,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe {
                select_into_impl(
                    logits,
                    latency_s,
                    n,
                    k,
                    theta,
                    max_drops,
                    scratch_probs,
                    out_experts,
                    out_weights,
                    out_dropped,
                    out_info,
                )
            })
        }

        /// Plain top-k routing (Mixtral) on `n ≤ 256` logits; result in `*out`.
        ///
        /// # Safety
        /// `logits` points to `n` readable floats, `out` to one writable selection.
        #[no_mangle]
        pub unsafe extern "C" fn $top_k(
            logits: *const $F,
            n: usize,
            k: usize,
            out: *mut SelectionC<$F>,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { top_k_impl(logits, n, k, out) })
        }

        /// Equation (10): κ over `n ≤ 256` weights and latencies \[s\].
        ///
        /// # Safety
        /// `weights`, `latency_s` point to `n` readable floats, `out_kappa` to one.
        #[no_mangle]
        pub unsafe extern "C" fn $kappa(
            weights: *const $F,
            latency_s: *const $F,
            n: usize,
            out_kappa: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { kappa_impl(weights, latency_s, n, out_kappa) })
        }

        /// Equation (9): WLR [1/s] of `n ≤ 256` experts into `out_wlr_per_s`.
        ///
        /// # Safety
        /// `weights`, `latency_s` point to `n` readable floats, `out_wlr_per_s`
        /// to `n` writable floats.
        #[no_mangle]
        pub unsafe extern "C" fn $wlr(
            weights: *const $F,
            latency_s: *const $F,
            n: usize,
            out_wlr_per_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { wlr_impl(weights, latency_s, n, out_wlr_per_s) })
        }

        /// dB to a linear power ratio.
        ///
        /// # Safety
        /// `out_linear` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $db_to_linear(db: $F, out_linear: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_linear, link::db_to_linear(db)) }
        }

        /// A linear power ratio to dB.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $linear_to_db(linear: $F, out_db: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, link::linear_to_db(linear)) }
        }

        /// dBm to W.
        ///
        /// # Safety
        /// `out_w` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $dbm_to_w(dbm: $F, out_w: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_w, link::dbm_to_w(dbm)) }
        }

        /// W to dBm.
        ///
        /// # Safety
        /// `out_dbm` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $w_to_dbm(w: $F, out_dbm: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_dbm, link::w_to_dbm(w)) }
        }

        /// The paper's path loss \[dB\] at `f_ghz` and `distance_m`.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $fspl(f_ghz: $F, distance_m: $F, out_db: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, link::free_space_path_loss_db(f_ghz, distance_m)) }
        }

        /// 3GPP UMa path loss \[dB\]; `los` nonzero for line of sight.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $uma_pl(
            bs_height_m: $F,
            ut_height_m: $F,
            f_ghz: $F,
            distance_2d_m: $F,
            los: c_int,
            out_db: *mut $F,
        ) -> c_int {
            let r = uma(bs_height_m, ut_height_m)
                .and_then(|m| m.path_loss_db(f_ghz, distance_2d_m, los != 0));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, r) }
        }

        /// 3GPP UMi street-canyon path loss \[dB\]; `los` nonzero for line of sight.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $umi_pl(
            bs_height_m: $F,
            ut_height_m: $F,
            f_ghz: $F,
            distance_2d_m: $F,
            los: c_int,
            out_db: *mut $F,
        ) -> c_int {
            let r = umi(bs_height_m, ut_height_m)
                .and_then(|m| m.path_loss_db(f_ghz, distance_2d_m, los != 0));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, r) }
        }

        /// 3GPP UMa LOS probability at `distance_2d_m`.
        ///
        /// # Safety
        /// `out_probability` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $uma_los(
            bs_height_m: $F,
            ut_height_m: $F,
            distance_2d_m: $F,
            out_probability: *mut $F,
        ) -> c_int {
            let r = uma(bs_height_m, ut_height_m).and_then(|m| m.los_probability(distance_2d_m));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_probability, r) }
        }

        /// 3GPP UMi street-canyon LOS probability at `distance_2d_m`.
        ///
        /// # Safety
        /// `out_probability` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $umi_los(
            bs_height_m: $F,
            ut_height_m: $F,
            distance_2d_m: $F,
            out_probability: *mut $F,
        ) -> c_int {
            let r = umi(bs_height_m, ut_height_m).and_then(|m| m.los_probability(distance_2d_m));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_probability, r) }
        }

        /// Channel power gain `10^(-PL/10)·|h|²`.
        ///
        /// # Safety
        /// `out_gain` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $gain(
            path_loss_db: $F,
            fading_power: $F,
            out_gain: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            unsafe {
                scalar(
                    out_gain,
                    link::channel_power_gain(path_loss_db, fading_power),
                )
            }
        }

        /// Noise PSD [W/Hz] from N0 [dBm/Hz] and a noise figure \[dB\].
        ///
        /// # Safety
        /// `out_w_per_hz` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $n0(
            n0_dbm_per_hz: $F,
            noise_figure_db: $F,
            out_w_per_hz: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            unsafe {
                scalar(
                    out_w_per_hz,
                    link::noise_psd_w_per_hz(n0_dbm_per_hz, noise_figure_db),
                )
            }
        }

        /// Noise power \[W\] over `bandwidth_hz`.
        ///
        /// # Safety
        /// `out_w` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $noise(
            n0_dbm_per_hz: $F,
            bandwidth_hz: $F,
            noise_figure_db: $F,
            out_w: *mut $F,
        ) -> c_int {
            let r = link::noise_power_w(n0_dbm_per_hz, bandwidth_hz, noise_figure_db);
            // SAFETY: forwarded contract.
            unsafe { scalar(out_w, r) }
        }

        /// Equations (2), (3): Shannon rate [bit/s].
        ///
        /// # Safety
        /// `out_bps` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $rate(
            bandwidth_hz: $F,
            tx_power_w: $F,
            gain: $F,
            n0_w_per_hz: $F,
            out_bps: *mut $F,
        ) -> c_int {
            let r = link::shannon_rate_bps(bandwidth_hz, tx_power_w, gain, n0_w_per_hz);
            // SAFETY: forwarded contract.
            unsafe { scalar(out_bps, r) }
        }

        /// Equation (4): expert FLOPs per token.
        ///
        /// # Safety
        /// `out_flops` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $flops(
            hidden: u32,
            ffn_hidden: u32,
            eta_flops: $F,
            out_flops: *mut $F,
        ) -> c_int {
            let r = ExpertShape::new(hidden, ffn_hidden).and_then(|s| s.flops_per_token(eta_flops));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_flops, r) }
        }

        /// Equation (5): payload bits per token and direction.
        ///
        /// # Safety
        /// `out_bits` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $payload(
            hidden: u32,
            bits_per_element: $F,
            out_bits: *mut $F,
        ) -> c_int {
            let r = ExpertShape::new(hidden, 1).and_then(|s| s.payload_bits(bits_per_element));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_bits, r) }
        }

        /// Equation (6) from rates: latency \[s\] of one token on one device.
        ///
        /// # Safety
        /// `out_s` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $expert_latency(
            payload_bits: $F,
            flops: $F,
            rate_down_bps: $F,
            compute_flops_per_s: $F,
            rate_up_bps: $F,
            out_s: *mut $F,
        ) -> c_int {
            let r = latency::expert_latency_s(
                payload_bits,
                flops,
                rate_down_bps,
                compute_flops_per_s,
                rate_up_bps,
            );
            // SAFETY: forwarded contract.
            unsafe { scalar(out_s, r) }
        }

        /// Equation (6) from a device's link: latency \[s\] over `bandwidth_hz`.
        ///
        /// # Safety
        /// `model`, `device` point to one readable struct each, `out_s` to one float.
        #[no_mangle]
        pub unsafe extern "C" fn $device_latency(
            model: *const LatencyModelC<$F>,
            device: *const DeviceLinkC<$F>,
            bandwidth_hz: $F,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { device_latency_impl(model, device, bandwidth_hz, out_s) })
        }

        /// Equation (7): the slowest of the `n_experts` selected experts \[s\].
        ///
        /// # Safety
        /// `latency_s` points to `n` readable floats, `experts` to `n_experts`
        /// readable `uint32_t`, `out_s` to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $token_latency(
            latency_s: *const $F,
            n: usize,
            experts: *const u32,
            n_experts: usize,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { token_latency_impl(latency_s, n, experts, n_experts, out_s) })
        }

        /// Equation (8): the sum of `n` per-token, per-layer latencies \[s\]
        /// (`n` is not limited to 256).
        ///
        /// # Safety
        /// `token_layer_latency_s` points to `n` readable floats, `out_s` to one.
        #[no_mangle]
        pub unsafe extern "C" fn $sequential(
            token_layer_latency_s: *const $F,
            n: usize,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { sequential_impl(token_layer_latency_s, n, out_s) })
        }

        /// Batched prefill of one layer \[s\]: `max_q n_q · t_q`.
        ///
        /// # Safety
        /// `tokens_per_expert` and `latency_per_token_s` point to `n` readable
        /// elements, `out_s` to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $batched(
            tokens_per_expert: *const u32,
            latency_per_token_s: *const $F,
            n: usize,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { batched_impl(tokens_per_expert, latency_per_token_s, n, out_s) })
        }

        /// The paper's even split of `total_bandwidth_hz` over `n ≤ 256` devices.
        ///
        /// # Safety
        /// `out_bandwidth_hz` points to `n` writable floats.
        #[no_mangle]
        pub unsafe extern "C" fn $even(
            total_bandwidth_hz: $F,
            out_bandwidth_hz: *mut $F,
            n: usize,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { even_split_impl(total_bandwidth_hz, out_bandwidth_hz, n) })
        }

        /// Min–max allocation of `total_bandwidth_hz` over `n ≤ 256` devices.
        ///
        /// # Safety
        /// `model` points to one readable struct, `devices` to `n`,
        /// `out_bandwidth_hz` to `n` writable floats, `out_max_latency_s` to one.
        #[no_mangle]
        pub unsafe extern "C" fn $min_max(
            model: *const LatencyModelC<$F>,
            devices: *const DeviceLinkC<$F>,
            n: usize,
            total_bandwidth_hz: $F,
            out_bandwidth_hz: *mut $F,
            out_max_latency_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe {
                min_max_impl(
                    model,
                    devices,
                    n,
                    total_bandwidth_hz,
                    out_bandwidth_hz,
                    out_max_latency_s,
                )
            })
        }
    };
}

export!(
    f32;
    wdmoe_select_f32, wdmoe_select_into_f32, wdmoe_top_k_f32, wdmoe_kappa_f32, wdmoe_wlr_per_s_f32,
    wdmoe_db_to_linear_f32, wdmoe_linear_to_db_f32, wdmoe_dbm_to_w_f32, wdmoe_w_to_dbm_f32,
    wdmoe_free_space_path_loss_db_f32, wdmoe_uma_path_loss_db_f32, wdmoe_umi_path_loss_db_f32,
    wdmoe_uma_los_probability_f32, wdmoe_umi_los_probability_f32,
    wdmoe_channel_power_gain_f32, wdmoe_noise_psd_w_per_hz_f32, wdmoe_noise_power_w_f32,
    wdmoe_shannon_rate_bps_f32,
    wdmoe_expert_flops_per_token_f32, wdmoe_payload_bits_f32,
    wdmoe_expert_latency_s_f32, wdmoe_device_latency_s_f32, wdmoe_token_latency_s_f32,
    wdmoe_sequential_prompt_latency_s_f32, wdmoe_batched_layer_latency_s_f32,
    wdmoe_even_split_bandwidth_hz_f32, wdmoe_min_max_bandwidth_hz_f32
);

export!(
    f64;
    wdmoe_select_f64, wdmoe_select_into_f64, wdmoe_top_k_f64, wdmoe_kappa_f64, wdmoe_wlr_per_s_f64,
    wdmoe_db_to_linear_f64, wdmoe_linear_to_db_f64, wdmoe_dbm_to_w_f64, wdmoe_w_to_dbm_f64,
    wdmoe_free_space_path_loss_db_f64, wdmoe_uma_path_loss_db_f64, wdmoe_umi_path_loss_db_f64,
    wdmoe_uma_los_probability_f64, wdmoe_umi_los_probability_f64,
    wdmoe_channel_power_gain_f64, wdmoe_noise_psd_w_per_hz_f64, wdmoe_noise_power_w_f64,
    wdmoe_shannon_rate_bps_f64,
    wdmoe_expert_flops_per_token_f64, wdmoe_payload_bits_f64,
    wdmoe_expert_latency_s_f64, wdmoe_device_latency_s_f64, wdmoe_token_latency_s_f64,
    wdmoe_sequential_prompt_latency_s_f64, wdmoe_batched_layer_latency_s_f64,
    wdmoe_even_split_bandwidth_hz_f64, wdmoe_min_max_bandwidth_hz_f64
);

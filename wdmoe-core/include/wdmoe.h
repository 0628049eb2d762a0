/*
 * wdmoe.h — C ABI of wdmoe-core, the WDMoE expert-selection policy and its
 * wireless link / latency models (no heap, no panics, no global state).
 *
 * Hand-written to match wdmoe-core/src/ffi/ (cargo feature `capi`); the
 * struct sizes are asserted on both sides.
 *
 * Build the static library (from the workspace root), for the host or a
 * firmware target, then link it like any C library:
 *
 *   lib=$(wdmoe-core/staticlib.sh [thumbv7em-none-eabihf|riscv32imac-unknown-none-elf|...])
 *   cc -std=c11 -I wdmoe-core/include app.c "$lib" -lm
 *
 * The archive is one object whose only global symbols are the wdmoe_*
 * functions below: its own memcpy / memset / expf / ... (from Rust's
 * compiler_builtins and libm) are local, so they never replace the
 * firmware's C library, whatever the link order (checked by
 * examples/c/build_and_run.sh and, per target, by staticlib.sh with nm).
 * No entry point has a reachable panic call site (checked on the object's
 * call graph by wdmoe-core/firmware/run.sh); the panic handler, a safety
 * net, calls the hook of wdmoe_set_panic_hook() and then spins.
 *
 * Conventions (every function):
 *  - The return value is a status code: WDMOE_OK (0) or a negative
 *    wdmoe_status; wdmoe_status_message() describes it.
 *  - Results go to caller-provided out-pointers and are written only on
 *    success; on error every output is left untouched. Of the selection
 *    structs' arrays only the valid entries (n_experts, n_dropped) are
 *    written; the rest keep whatever they held.
 *  - On an error, wdmoe_last_error_param() names the rejected parameter.
 *  - Arrays are a pointer plus an element count. Expert / device arrays hold
 *    at most WDMOE_MAX_EXPERTS elements (WDMOE_ERR_CAPACITY_EXCEEDED beyond).
 *  - Null or misaligned pointers are errors (WDMOE_ERR_NULL_POINTER,
 *    WDMOE_ERR_MISALIGNED_POINTER), checked before anything is read. Inputs
 *    are copied before outputs are written, so they may overlap.
 *  - The caller guarantees that a non-null pointer points to as many
 *    readable / writable elements as its count says (C cannot check it).
 *  - Units are in every name: _s seconds, _hz hertz, _ghz gigahertz,
 *    _m metres, _w watts, _db decibels, _dbm decibel-milliwatts,
 *    _bps bit/s, _flops FLOP, _flops_per_s FLOP/s, _bits bit; gains are
 *    linear channel power gains g^2.
 *  - Each function exists for float (_f32, firmware) and double (_f64,
 *    simulation); both compute the same formulas.
 *  - Stack and time (no heap; working memory sized by n: the selection and
 *    min-max entry points use stack arrays of capacity 8, 32 or 256, the
 *    smallest that holds n; wdmoe_select_into_* uses only the caller's
 *    buffers). Measured by wdmoe-core/firmware/run.sh under QEMU
 *    (-icount, stack painting), f32, release build, n = 8 experts, k = 2:
 *
 *      function                      Cortex-M4F (thumbv7em)   RV32IMAC (soft float)
 *      wdmoe_select_f32                1,860 instr,  540 B    14,436 instr,  524 B
 *      wdmoe_select_into_f32           1,778 instr,  324 B    14,333 instr,  348 B
 *      wdmoe_min_max_bandwidth_hz_f32 57,023 instr,  696 B   600,251 instr,  688 B
 *        (8 devices)
 *      uma path loss + gain + device  13,498 instr,  376 B   156,526 instr,  368 B
 *        latency, 8 devices
 *
 *    Larger n (computed from the array sizes): the select arrays take 12
 *    bytes per expert of capacity in f32 (20 in f64), i.e. about 0.3 KiB
 *    more for n <= 32 and 3 KiB more (f64: 5 KiB) for n <= 256; min-max 24
 *    bytes per device of capacity (f64: 48), 6 KiB for n <= 256. Code: select_into + the latency
 *    model, f32, opt-level s: 4.7 KiB of flash on Cortex-M4F, 8.8 KiB on
 *    RV32IMAC (startup code included). The other functions need little
 *    stack.
 *  - Thread safety: every function is reentrant.
 */
#ifndef WDMOE_H
#define WDMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Most experts (and devices) one call handles (wdmoe_select_into_*: 65535). */
#define WDMOE_MAX_EXPERTS 256

/* The ABI version of this header; wdmoe_abi_version() returns the
 * library's. 2: caller-sized wdmoe_select_into_*, wdmoe_last_error_param,
 * version queries, panic hook; selection arrays no longer zeroed. */
#define WDMOE_ABI_VERSION 2u

/* Status codes. Each wdmoe-core Error variant has its own code. */
typedef enum wdmoe_status {
    WDMOE_OK = 0,
    WDMOE_ERR_NULL_POINTER = -1,         /* a required pointer is NULL */
    WDMOE_ERR_MISALIGNED_POINTER = -2,   /* a pointer is misaligned for its type */
    WDMOE_ERR_NAN = -3,                  /* an input is NaN */
    WDMOE_ERR_NOT_POSITIVE = -4,         /* an input must be finite and > 0 */
    WDMOE_ERR_NEGATIVE = -5,             /* an input must be finite and >= 0 */
    WDMOE_ERR_NOT_FINITE = -6,           /* an input must be finite */
    WDMOE_ERR_LATENCY_NOT_POSITIVE = -7, /* a latency is <= 0 (only > 0 or +inf allowed) */
    WDMOE_ERR_K_OUT_OF_RANGE = -8,       /* k must satisfy 1 <= k <= n */
    WDMOE_ERR_THETA_OUT_OF_RANGE = -9,   /* theta must satisfy 0 <= theta <= 0.5 */
    WDMOE_ERR_CAPACITY_EXCEEDED = -10,   /* more than WDMOE_MAX_EXPERTS elements */
    WDMOE_ERR_LENGTH_MISMATCH = -11,     /* input lengths differ */
    WDMOE_ERR_EMPTY = -12,               /* an input array is empty */
    WDMOE_ERR_NO_REACHABLE_EXPERT = -13, /* every latency is +inf */
    WDMOE_ERR_OUT_OF_RANGE = -14,        /* outside a model's valid range (3GPP f, heights, expert
                                            index) or a result overflows the float type */
    WDMOE_ERR_INFEASIBLE = -15           /* no bandwidth allocation gives finite latencies */
} wdmoe_status;

/* A static, NUL-terminated description of a status code; never NULL. */
const char *wdmoe_status_message(int status);

/* The parameter that the most recent failing call rejected, e.g.
 * "distance_2d_m" or "theta"; "" when its error names none (a null
 * pointer, k out of range, ...). Static, NUL-terminated, never NULL. One
 * word of global state, for diagnostics: with several threads calling,
 * it is whichever call failed last. */
const char *wdmoe_last_error_param(void);

/* The library's version ("0.1.0") and C ABI version (WDMOE_ABI_VERSION of
 * the header it was built with: compare them at start-up). */
const char *wdmoe_version(void);
uint32_t wdmoe_abi_version(void);

/* A function the library's panic handler calls before it halts (spins);
 * NULL clears it. No entry point can reach a panic: a safety net, e.g. to
 * log and reset. Only the static library (staticlib.sh) has the handler. */
void wdmoe_set_panic_hook(void (*hook)(void));

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

/* Result of one routing decision (one token, one layer). */
typedef struct wdmoe_selection_f32 {
    uint32_t n_experts;                   /* valid entries of experts/weights, >= 1 */
    uint32_t n_dropped;                   /* valid entries of dropped */
    uint32_t experts[WDMOE_MAX_EXPERTS];  /* serving experts, descending router probability */
    uint32_t dropped[WDMOE_MAX_EXPERTS];  /* top-k experts not serving (unreachable included), top-k order */
    float weights[WDMOE_MAX_EXPERTS];     /* combine weights of experts, sum to 1 */
    float kappa;                          /* kappa of the first drop test (eq. 10); NaN if has_kappa == 0 */
    uint8_t has_kappa;                    /* 1 when a drop test ran */
    uint8_t fallback;                     /* 1 when every top-k device was unreachable */
} wdmoe_selection_f32;

typedef struct wdmoe_selection_f64 {
    uint32_t n_experts;
    uint32_t n_dropped;
    uint32_t experts[WDMOE_MAX_EXPERTS];
    uint32_t dropped[WDMOE_MAX_EXPERTS];
    double weights[WDMOE_MAX_EXPERTS];
    double kappa;
    uint8_t has_kappa;
    uint8_t fallback;
} wdmoe_selection_f64;

/* The scalar results of wdmoe_select_into_* (the arrays are the caller's). */
typedef struct wdmoe_selection_info_f32 {
    uint16_t n_experts; /* valid entries of out_experts / out_weights, >= 1 */
    uint16_t n_dropped; /* valid entries of out_dropped */
    float kappa;        /* kappa of the first drop test; NaN if has_kappa == 0 */
    uint8_t has_kappa;  /* 1 when a drop test ran */
    uint8_t fallback;   /* 1 when every top-k device was unreachable */
} wdmoe_selection_info_f32;

typedef struct wdmoe_selection_info_f64 {
    uint16_t n_experts;
    uint16_t n_dropped;
    double kappa;
    uint8_t has_kappa;
    uint8_t fallback;
} wdmoe_selection_info_f64;

/* System constants of the latency model (eq. 4-6). */
typedef struct wdmoe_latency_model_f32 {
    float payload_bits;    /* per token and direction, eq. (5), >= 0 */
    float flops_per_token; /* expert FLOPs per token, eq. (4), >= 0 */
    float n0_w_per_hz;     /* noise power spectral density N0 [W/Hz], > 0 */
} wdmoe_latency_model_f32;

typedef struct wdmoe_latency_model_f64 {
    double payload_bits;
    double flops_per_token;
    double n0_w_per_hz;
} wdmoe_latency_model_f64;

/* One device's radio and compute parameters. Powers and gains >= 0 (0 makes
 * the device unreachable: latency +inf); compute rate > 0. */
typedef struct wdmoe_device_link_f32 {
    float tx_power_down_w;     /* base-station transmit power P_d [W] */
    float gain_down;           /* downlink channel power gain g_d^2 (linear) */
    float tx_power_up_w;       /* device transmit power P_u [W] */
    float gain_up;             /* uplink channel power gain g_u^2 (linear) */
    float compute_flops_per_s; /* device compute rate C_q [FLOP/s] */
} wdmoe_device_link_f32;

typedef struct wdmoe_device_link_f64 {
    double tx_power_down_w;
    double gain_down;
    double tx_power_up_w;
    double gain_up;
    double compute_flops_per_s;
} wdmoe_device_link_f64;

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
/* The Rust side asserts the same sizes (src/ffi/mod.rs). */
_Static_assert(sizeof(wdmoe_selection_f32) == 3088, "wdmoe_selection_f32 layout");
_Static_assert(sizeof(wdmoe_selection_f64) == 4120, "wdmoe_selection_f64 layout");
_Static_assert(sizeof(wdmoe_selection_info_f32) == 12, "wdmoe_selection_info_f32 layout");
_Static_assert(sizeof(wdmoe_selection_info_f64) == 24, "wdmoe_selection_info_f64 layout");
_Static_assert(sizeof(wdmoe_latency_model_f32) == 12, "wdmoe_latency_model_f32 layout");
_Static_assert(sizeof(wdmoe_latency_model_f64) == 24, "wdmoe_latency_model_f64 layout");
_Static_assert(sizeof(wdmoe_device_link_f32) == 20, "wdmoe_device_link_f32 layout");
_Static_assert(sizeof(wdmoe_device_link_f64) == 40, "wdmoe_device_link_f64 layout");
#endif

/* ------------------------------------------------------------------------ */
/* Selection policy: eq. (9), (10), Algorithm 1 (SPEC.md)                   */
/* ------------------------------------------------------------------------ */

/* Algorithm 1. logits: n router logits (finite); latency_s: n per-expert
 * latencies [s] (> 0, or +INFINITY for an unreachable device); 1 <= k <= n
 * <= WDMOE_MAX_EXPERTS; 0 <= theta <= 0.5 (drop the lowest-WLR expert while
 * kappa <= theta); max_drops: most drops per token (the paper's is 1).
 * Never drops the last expert; if every top-k device is unreachable the best
 * reachable expert serves (out->fallback = 1); if none is reachable:
 * WDMOE_ERR_NO_REACHABLE_EXPERT. */
int wdmoe_select_f32(const float *logits, const float *latency_s, size_t n, size_t k,
                     float theta, size_t max_drops, wdmoe_selection_f32 *out);
int wdmoe_select_f64(const double *logits, const double *latency_s, size_t n, size_t k,
                     double theta, size_t max_drops, wdmoe_selection_f64 *out);

/* Algorithm 1 on caller-sized memory, for firmware: the same decision as
 * wdmoe_select_*, for n <= 65535 experts, with no working memory of its
 * own. scratch_probs: n floats (receives the router probabilities);
 * out_experts, out_weights, out_dropped: min(k, n) entries each (every
 * serving or dropped expert is one of the top k); *out_info: the counts,
 * kappa and flags. Nothing is written on an error. The written buffers
 * must not overlap each other or the inputs. */
int wdmoe_select_into_f32(const float *logits, const float *latency_s, uint16_t n, uint16_t k,
                          float theta, uint16_t max_drops, float *scratch_probs,
                          uint16_t *out_experts, float *out_weights, uint16_t *out_dropped,
                          wdmoe_selection_info_f32 *out_info);
int wdmoe_select_into_f64(const double *logits, const double *latency_s, uint16_t n, uint16_t k,
                          double theta, uint16_t max_drops, double *scratch_probs,
                          uint16_t *out_experts, double *out_weights, uint16_t *out_dropped,
                          wdmoe_selection_info_f64 *out_info);

/* Plain top-k routing (Mixtral): k experts of largest softmax probability,
 * weights renormalised over them; out->has_kappa = 0, n_dropped = 0. */
int wdmoe_top_k_f32(const float *logits, size_t n, size_t k, wdmoe_selection_f32 *out);
int wdmoe_top_k_f64(const double *logits, size_t n, size_t k, wdmoe_selection_f64 *out);

/* Eq. (10): kappa = min WLR / (min WLR + max WLR) over n weights (>= 0) and
 * latencies [s]; 0 <= kappa <= 0.5 (0.5 when every WLR is 0). */
int wdmoe_kappa_f32(const float *weights, const float *latency_s, size_t n, float *out_kappa);
int wdmoe_kappa_f64(const double *weights, const double *latency_s, size_t n, double *out_kappa);

/* Eq. (9): WLR_q = w_q / t_q [1/s] into out_wlr_per_s[0..n); +inf latency
 * gives 0. */
int wdmoe_wlr_per_s_f32(const float *weights, const float *latency_s, size_t n,
                        float *out_wlr_per_s);
int wdmoe_wlr_per_s_f64(const double *weights, const double *latency_s, size_t n,
                        double *out_wlr_per_s);

/* ------------------------------------------------------------------------ */
/* Link model: conversions, path loss, noise, Shannon rate (eq. 2, 3)       */
/* ------------------------------------------------------------------------ */

/* 10^(db/10); db finite. */
int wdmoe_db_to_linear_f32(float db, float *out_linear);
int wdmoe_db_to_linear_f64(double db, double *out_linear);
/* 10 log10(linear); linear >= 0 (0 gives -inf dB). */
int wdmoe_linear_to_db_f32(float linear, float *out_db);
int wdmoe_linear_to_db_f64(double linear, double *out_db);
/* 10^((dbm - 30)/10) [W]. */
int wdmoe_dbm_to_w_f32(float dbm, float *out_w);
int wdmoe_dbm_to_w_f64(double dbm, double *out_w);
/* 10 log10(w) + 30 [dBm]; w >= 0. */
int wdmoe_w_to_dbm_f32(float w, float *out_dbm);
int wdmoe_w_to_dbm_f64(double w, double *out_dbm);

/* The paper's path loss: 32.4 + 20 log10(f_ghz) + 20 log10(distance_m) [dB]. */
int wdmoe_free_space_path_loss_db_f32(float f_ghz, float distance_m, float *out_db);
int wdmoe_free_space_path_loss_db_f64(double f_ghz, double distance_m, double *out_db);

/* 3GPP TR 38.901 Urban Macro path loss [dB]. bs_height_m > 1 (typ. 25),
 * 1.5 <= ut_height_m <= 22.5, 0.5 <= f_ghz <= 100, distance_2d_m > 0
 * (evaluated at >= 10 m); los != 0 for line of sight (NLOS is never below
 * LOS). */
int wdmoe_uma_path_loss_db_f32(float bs_height_m, float ut_height_m, float f_ghz,
                               float distance_2d_m, int los, float *out_db);
int wdmoe_uma_path_loss_db_f64(double bs_height_m, double ut_height_m, double f_ghz,
                               double distance_2d_m, int los, double *out_db);
/* 3GPP TR 38.901 Urban Micro street-canyon path loss [dB] (typ. bs 10 m). */
int wdmoe_umi_path_loss_db_f32(float bs_height_m, float ut_height_m, float f_ghz,
                               float distance_2d_m, int los, float *out_db);
int wdmoe_umi_path_loss_db_f64(double bs_height_m, double ut_height_m, double f_ghz,
                               double distance_2d_m, int los, double *out_db);
/* 3GPP LOS probabilities at distance_2d_m, in [0, 1]. */
int wdmoe_uma_los_probability_f32(float bs_height_m, float ut_height_m, float distance_2d_m,
                                  float *out_probability);
int wdmoe_uma_los_probability_f64(double bs_height_m, double ut_height_m,
                                  double distance_2d_m, double *out_probability);
int wdmoe_umi_los_probability_f32(float bs_height_m, float ut_height_m, float distance_2d_m,
                                  float *out_probability);
int wdmoe_umi_los_probability_f64(double bs_height_m, double ut_height_m,
                                  double distance_2d_m, double *out_probability);

/* Channel power gain g^2 = 10^(-path_loss_db/10) * fading_power (|h|^2 >= 0). */
int wdmoe_channel_power_gain_f32(float path_loss_db, float fading_power, float *out_gain);
int wdmoe_channel_power_gain_f64(double path_loss_db, double fading_power, double *out_gain);

/* Noise PSD [W/Hz] from N0 [dBm/Hz] plus a receiver noise figure [dB] (>= 0). */
int wdmoe_noise_psd_w_per_hz_f32(float n0_dbm_per_hz, float noise_figure_db,
                                 float *out_w_per_hz);
int wdmoe_noise_psd_w_per_hz_f64(double n0_dbm_per_hz, double noise_figure_db,
                                 double *out_w_per_hz);
/* Noise power [W] over bandwidth_hz. */
int wdmoe_noise_power_w_f32(float n0_dbm_per_hz, float bandwidth_hz, float noise_figure_db,
                            float *out_w);
int wdmoe_noise_power_w_f64(double n0_dbm_per_hz, double bandwidth_hz,
                            double noise_figure_db, double *out_w);

/* Eq. (2), (3): B log2(1 + P g^2 / (N0 B)) [bit/s]; a zero bandwidth, power
 * or gain gives 0; a rate that overflows the float type (absurd bandwidths)
 * is WDMOE_ERR_OUT_OF_RANGE. */
int wdmoe_shannon_rate_bps_f32(float bandwidth_hz, float tx_power_w, float gain,
                               float n0_w_per_hz, float *out_bps);
int wdmoe_shannon_rate_bps_f64(double bandwidth_hz, double tx_power_w, double gain,
                               double n0_w_per_hz, double *out_bps);

/* ------------------------------------------------------------------------ */
/* Compute and latency model: eq. (4)-(8), batched prefill                  */
/* ------------------------------------------------------------------------ */

/* Eq. (4): 4 m m_h + 2 m_h m + eta m_h + m_h FLOPs per token (Mixtral:
 * hidden 4096, ffn_hidden 14336, eta 4 -> 352,393,216). */
int wdmoe_expert_flops_per_token_f32(uint32_t hidden, uint32_t ffn_hidden, float eta_flops,
                                     float *out_flops);
int wdmoe_expert_flops_per_token_f64(uint32_t hidden, uint32_t ffn_hidden, double eta_flops,
                                     double *out_flops);
/* Eq. (5): bits_per_element * hidden bits per token and direction. */
int wdmoe_payload_bits_f32(uint32_t hidden, float bits_per_element, float *out_bits);
int wdmoe_payload_bits_f64(uint32_t hidden, double bits_per_element, double *out_bits);

/* Eq. (6) from rates: payload_bits/rate_down_bps + flops/compute_flops_per_s
 * + payload_bits/rate_up_bps [s]; a zero rate gives +inf. */
int wdmoe_expert_latency_s_f32(float payload_bits, float flops, float rate_down_bps,
                               float compute_flops_per_s, float rate_up_bps, float *out_s);
int wdmoe_expert_latency_s_f64(double payload_bits, double flops, double rate_down_bps,
                               double compute_flops_per_s, double rate_up_bps, double *out_s);
/* Eq. (6) from a device's link over bandwidth_hz (rates by eq. 2, 3) [s]. */
int wdmoe_device_latency_s_f32(const wdmoe_latency_model_f32 *model,
                               const wdmoe_device_link_f32 *device, float bandwidth_hz,
                               float *out_s);
int wdmoe_device_latency_s_f64(const wdmoe_latency_model_f64 *model,
                               const wdmoe_device_link_f64 *device, double bandwidth_hz,
                               double *out_s);

/* Eq. (7): max of latency_s[experts[i]] over the n_experts selected experts
 * [s]; an index >= n is WDMOE_ERR_OUT_OF_RANGE. */
int wdmoe_token_latency_s_f32(const float *latency_s, size_t n, const uint32_t *experts,
                              size_t n_experts, float *out_s);
int wdmoe_token_latency_s_f64(const double *latency_s, size_t n, const uint32_t *experts,
                              size_t n_experts, double *out_s);

/* Eq. (8): sum of n per-token, per-layer latencies [s] (n not limited to
 * WDMOE_MAX_EXPERTS; n = 0 gives 0). */
int wdmoe_sequential_prompt_latency_s_f32(const float *token_layer_latency_s, size_t n,
                                          float *out_s);
int wdmoe_sequential_prompt_latency_s_f64(const double *token_layer_latency_s, size_t n,
                                          double *out_s);

/* Batched prefill of one layer: max over q with tokens_per_expert[q] > 0 of
 * tokens_per_expert[q] * latency_per_token_s[q] [s]. */
int wdmoe_batched_layer_latency_s_f32(const uint32_t *tokens_per_expert,
                                      const float *latency_per_token_s, size_t n,
                                      float *out_s);
int wdmoe_batched_layer_latency_s_f64(const uint32_t *tokens_per_expert,
                                      const double *latency_per_token_s, size_t n,
                                      double *out_s);

/* ------------------------------------------------------------------------ */
/* Bandwidth allocation                                                     */
/* ------------------------------------------------------------------------ */

/* The paper's even split: total_bandwidth_hz / n to each of n devices. */
int wdmoe_even_split_bandwidth_hz_f32(float total_bandwidth_hz, float *out_bandwidth_hz,
                                      size_t n);
int wdmoe_even_split_bandwidth_hz_f64(double total_bandwidth_hz, double *out_bandwidth_hz,
                                      size_t n);

/* Min-max allocation of total_bandwidth_hz (> 0) among n devices: writes
 * each device's bandwidth [Hz] (summing to the total) and the largest
 * latency [s], which is never above the even split's. A device with zero
 * power or gain: WDMOE_ERR_INFEASIBLE. Newton's method with a convergence
 * exit (at most 40 iterations, typically 3-8; about 7,000 instructions per
 * device on a Cortex-M4F); agrees with an exhaustive bisection to 1e-12
 * (double) and 5e-5 (float) relative. */
int wdmoe_min_max_bandwidth_hz_f32(const wdmoe_latency_model_f32 *model,
                                   const wdmoe_device_link_f32 *devices, size_t n,
                                   float total_bandwidth_hz, float *out_bandwidth_hz,
                                   float *out_max_latency_s);
int wdmoe_min_max_bandwidth_hz_f64(const wdmoe_latency_model_f64 *model,
                                   const wdmoe_device_link_f64 *devices, size_t n,
                                   double total_bandwidth_hz, double *out_bandwidth_hz,
                                   double *out_max_latency_s);

#ifdef __cplusplus
}
#endif

#endif /* WDMOE_H */

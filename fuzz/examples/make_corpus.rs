//! Writes the hand-made seed corpus of the core targets into `fuzz/corpus/`.
//!
//! `cargo run --example make_corpus` (from `fuzz/`). The seeds are small and
//! readable here; the fuzzer mutates them from there.

use std::fs;
use std::path::Path;

use wdmoe_fuzz::{LinkInput, Num, SelectInput};
use Num::*;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

/// A latency of `ms` milliseconds (`ms` in tenths: 25 → 2.5 ms).
fn ms10(x: i16) -> Num {
    Sci(x, -4)
}

fn select_seeds() {
    let sel = |f32, k, theta, max_drops, logits: Vec<Num>, latency_s: Vec<Num>| SelectInput {
        f32,
        k,
        theta,
        max_drops,
        logits,
        latency_s,
    };
    // Mixtral: 8 experts, top-2, θ = 0.2, one drop; expert 4 in a deep fade.
    let mixtral_logits = vec![
        Centi(10),
        Centi(200),
        Centi(-30),
        Centi(40),
        Centi(190),
        Centi(-100),
        Centi(0),
        Centi(20),
    ];
    let mixtral_lat = vec![
        ms10(3),
        ms10(4),
        ms10(5),
        ms10(4),
        ms10(900),
        ms10(6),
        ms10(7),
        ms10(8),
    ];
    for (f32, name) in [(false, "f64"), (true, "f32")] {
        write(
            "select",
            &format!("mixtral_fade_{name}"),
            &sel(
                f32,
                2,
                Centi(20),
                1,
                mixtral_logits.clone(),
                mixtral_lat.clone(),
            )
            .encode(),
        );
    }
    // The same decision with every device equally fast: nothing is dropped.
    write(
        "select",
        "mixtral_equal",
        &sel(
            false,
            2,
            Centi(20),
            1,
            mixtral_logits.clone(),
            vec![ms10(5); 8],
        )
        .encode(),
    );
    // θ = 0: only an unreachable device is dropped.
    let mut lat = mixtral_lat.clone();
    lat[1] = PosInf;
    write(
        "select",
        "unreachable_top1",
        &sel(false, 2, Zero, 1, mixtral_logits.clone(), lat.clone()).encode(),
    );
    // Both top-2 devices unreachable: fallback to the best reachable expert.
    lat[4] = PosInf;
    write(
        "select",
        "fallback",
        &sel(true, 2, Centi(20), 1, mixtral_logits.clone(), lat).encode(),
    );
    // No device reachable: an error.
    write(
        "select",
        "none_reachable",
        &sel(
            false,
            2,
            Centi(20),
            1,
            mixtral_logits.clone(),
            vec![PosInf; 8],
        )
        .encode(),
    );
    // NaN, ±inf, subnormal and zero in the inputs (errors), and in θ.
    let mut logits = mixtral_logits.clone();
    logits[3] = Nan;
    write(
        "select",
        "nan_logit",
        &sel(false, 2, Centi(20), 1, logits, mixtral_lat.clone()).encode(),
    );
    let mut logits = mixtral_logits.clone();
    logits[0] = NegInf;
    write(
        "select",
        "neg_inf_logit",
        &sel(true, 2, Centi(20), 1, logits, mixtral_lat.clone()).encode(),
    );
    let mut lat = mixtral_lat.clone();
    lat[2] = MinSubnormal;
    lat[5] = Zero;
    write(
        "select",
        "subnormal_and_zero_latency",
        &sel(true, 2, Centi(20), 1, mixtral_logits.clone(), lat).encode(),
    );
    let mut lat = mixtral_lat.clone();
    lat[1] = MinSubnormal;
    lat[4] = Max;
    write(
        "select",
        "subnormal_and_max_latency",
        &sel(false, 3, Centi(50), 3, mixtral_logits.clone(), lat).encode(),
    );
    write(
        "select",
        "theta_nan",
        &sel(
            false,
            2,
            Nan,
            1,
            mixtral_logits.clone(),
            mixtral_lat.clone(),
        )
        .encode(),
    );
    // Huge logits: softmax underflows everything but the maximum.
    let huge = vec![
        Max,
        NegMax,
        Pow10(30),
        Pow10(-30),
        Zero,
        Sci(-3, 20),
        Small(1),
        Max,
    ];
    write(
        "select",
        "huge_logits",
        &sel(true, 4, Centi(30), 3, huge, mixtral_lat.clone()).encode(),
    );
    // k = 0, k > n, mismatched lengths, empty.
    write(
        "select",
        "k_zero",
        &sel(
            false,
            0,
            Centi(20),
            1,
            mixtral_logits.clone(),
            mixtral_lat.clone(),
        )
        .encode(),
    );
    write(
        "select",
        "k_above_n",
        &sel(
            false,
            9,
            Centi(20),
            1,
            mixtral_logits.clone(),
            mixtral_lat.clone(),
        )
        .encode(),
    );
    write(
        "select",
        "length_mismatch",
        &sel(
            false,
            2,
            Centi(20),
            1,
            mixtral_logits.clone(),
            mixtral_lat[..7].to_vec(),
        )
        .encode(),
    );
    write(
        "select",
        "empty",
        &sel(false, 1, Zero, 1, vec![], vec![]).encode(),
    );
    // 256 experts (DeepSeek-style), top-8, repeated drops; and 257 (capacity exceeded).
    let logits: Vec<Num> = (0..256)
        .map(|i| Centi(((i * 37) % 512 - 256) as i16))
        .collect();
    let lat: Vec<Num> = (0..256)
        .map(|i| {
            if i % 29 == 0 {
                PosInf
            } else {
                ms10((1 + (i * 13) % 97) as i16)
            }
        })
        .collect();
    write(
        "select",
        "experts_256_top8",
        &sel(false, 8, Centi(30), 4, logits.clone(), lat.clone()).encode(),
    );
    write(
        "select",
        "experts_256_top8_f32",
        &sel(true, 8, Centi(45), 7, logits.clone(), lat.clone()).encode(),
    );
    let mut logits = logits;
    let mut lat = lat;
    logits.push(Zero);
    lat.push(ms10(1));
    write(
        "select",
        "experts_257",
        &sel(false, 8, Centi(30), 4, logits, lat).encode(),
    );
    // Ties everywhere: equal logits and equal latencies.
    write(
        "select",
        "all_ties",
        &sel(false, 4, Centi(50), 8, vec![Zero; 8], vec![ms10(5); 8]).encode(),
    );
}

fn link_seeds() {
    let l = |f32, op, args: Vec<Num>| LinkInput { f32, op, args }.encode();
    write(
        "link_latency",
        "db_to_linear",
        &l(false, 0, vec![Centi(2000)]),
    );
    write("link_latency", "linear_to_db_zero", &l(true, 1, vec![Zero]));
    write("link_latency", "dbm_to_w", &l(false, 2, vec![Centi(4000)]));
    write("link_latency", "w_to_dbm", &l(true, 3, vec![Centi(20)]));
    write(
        "link_latency",
        "fspl",
        &l(false, 4, vec![Centi(350), Sci(100, 0)]),
    );
    write(
        "link_latency",
        "gain",
        &l(true, 5, vec![Sci(80, 0), Small(16)]),
    );
    write(
        "link_latency",
        "noise_psd",
        &l(false, 6, vec![Sci(-174, 0), Sci(7, 0)]),
    );
    write(
        "link_latency",
        "noise_power",
        &l(true, 7, vec![Sci(-174, 0), Sci(125, 5), Sci(7, 0)]),
    );
    // Shannon: typical, subnormal gain, huge SNR, zero bandwidth.
    write(
        "link_latency",
        "shannon",
        &l(
            false,
            8,
            vec![Sci(125, 5), Sci(10, 0), Sci(1, -9), Sci(398, -23)],
        ),
    );
    write(
        "link_latency",
        "shannon_subnormal_f32",
        &l(
            true,
            8,
            vec![Sci(125, 5), Sci(2, -1), MinSubnormal, Sci(398, -23)],
        ),
    );
    write(
        "link_latency",
        "shannon_huge_snr",
        &l(false, 8, vec![MinSubnormal, Max, Max, MinSubnormal]),
    );
    write(
        "link_latency",
        "shannon_zero_bw",
        &l(true, 8, vec![Zero, Sci(10, 0), Sci(1, -9), Sci(398, -23)]),
    );
    write(
        "link_latency",
        "uma",
        &l(
            false,
            9,
            vec![Sci(25, 0), Centi(150), Centi(350), Sci(200, 0)],
        ),
    );
    write(
        "link_latency",
        "uma_high_ut",
        &l(
            true,
            9,
            vec![Sci(25, 0), Centi(2000), Centi(350), Sci(5, 0)],
        ),
    );
    write(
        "link_latency",
        "umi",
        &l(
            false,
            10,
            vec![Sci(10, 0), Centi(150), Centi(350), Sci(100, 0)],
        ),
    );
    write(
        "link_latency",
        "free_space_model",
        &l(true, 11, vec![Centi(350), Sci(100, 0)]),
    );
    write(
        "link_latency",
        "expert_shape",
        &l(
            false,
            12,
            vec![Sci(4096, 0), Sci(14336, 0), Sci(4, 0), Sci(16, 0)],
        ),
    );
    let dev = |pd, gd, pu, gu, c| vec![pd, gd, pu, gu, c];
    let mut args = dev(Sci(10, 0), Sci(1, -9), Centi(20), Sci(1, -9), Sci(2, 12));
    args.extend([Sci(65, 3), Sci(352, 6), Sci(398, -23), Sci(125, 5)]);
    write(
        "link_latency",
        "device_latency",
        &l(false, 13, args.clone()),
    );
    args[1] = Zero; // zero downlink gain: unreachable
    write("link_latency", "device_unreachable_f32", &l(true, 13, args));
    write(
        "link_latency",
        "expert_latency",
        &l(
            false,
            14,
            vec![Sci(65, 3), Sci(352, 6), Sci(1, 8), Sci(1, 12), Sci(1, 7)],
        ),
    );
    write(
        "link_latency",
        "token_latency",
        &l(
            false,
            15,
            vec![
                Small(48),
                ms10(3),
                ms10(1),
                ms10(7),
                Small(32),
                Zero,
                Small(16),
            ],
        ),
    );
    write(
        "link_latency",
        "prompt_latency",
        &l(true, 16, vec![ms10(3), ms10(1), PosInf, ms10(7)]),
    );
    write(
        "link_latency",
        "batched",
        &l(
            false,
            17,
            vec![
                Small(48),
                Small(48),
                Small(16),
                Zero,
                ms10(10),
                ms10(25),
                PosInf,
            ],
        ),
    );
    write(
        "link_latency",
        "even_split",
        &l(true, 18, vec![Sci(1, 8), Small(127)]),
    );
    let mut args = vec![Sci(65, 3), Sci(352, 6), Sci(398, -23), Sci(2, 7), Small(16)];
    args.extend(dev(
        Sci(10, 0),
        Sci(1, -8),
        Centi(20),
        Sci(1, -8),
        Sci(2, 12),
    ));
    args.extend(dev(
        Sci(10, 0),
        Sci(1, -11),
        Centi(20),
        Sci(1, -11),
        Sci(2, 12),
    ));
    write("link_latency", "min_max_2", &l(false, 19, args.clone()));
    write("link_latency", "min_max_2_f32", &l(true, 19, args));
    let mut args = vec![
        Sci(65, 3),
        Sci(352, 6),
        Sci(398, -23),
        Sci(1, 8),
        Small(112),
    ];
    for i in 0..8 {
        args.extend(dev(
            Sci(10, 0),
            Sci(1, -8 - (i % 4) as i8),
            Centi(20),
            Sci(3, -9 - (i % 3) as i8),
            Sci(1 + i as i16, 12),
        ));
    }
    write("link_latency", "min_max_8", &l(false, 19, args));
}

/// The `capi` target: a mode byte (bit 0: link family, bit 1: f32), then
/// either a [`SelectInput`] and three pointer-fault bytes (0 none, 1 null,
/// 2 misaligned; logits, latencies, output), or five header bytes (output
/// fault, two more pointer faults, two counts) and a [`LinkInput`].
fn capi_seeds() {
    let sel = |name: &str, f32: bool, faults: [u8; 3], inp: SelectInput| {
        let mut b = vec![u8::from(f32) << 1];
        b.extend(inp.encode());
        b.extend(faults);
        write("capi", name, &b);
    };
    let logits = vec![
        Centi(10),
        Centi(200),
        Centi(-30),
        Centi(40),
        Centi(190),
        Centi(-100),
        Centi(0),
        Centi(20),
    ];
    let lat = vec![
        ms10(3),
        ms10(4),
        ms10(5),
        ms10(4),
        ms10(900),
        ms10(6),
        ms10(7),
        ms10(8),
    ];
    let mixtral = SelectInput {
        f32: false,
        k: 2,
        theta: Centi(20),
        max_drops: 1,
        logits: logits.clone(),
        latency_s: lat.clone(),
    };
    sel("select_mixtral_f64", false, [0, 0, 0], mixtral.clone());
    sel("select_mixtral_f32", true, [0, 0, 0], mixtral.clone());
    sel("select_null_logits", false, [1, 0, 0], mixtral.clone());
    sel(
        "select_misaligned_latency",
        true,
        [0, 2, 0],
        mixtral.clone(),
    );
    sel("select_null_out", false, [0, 0, 1], mixtral.clone());
    let mut unreachable = mixtral.clone();
    unreachable.latency_s = vec![PosInf; 8];
    sel("select_none_reachable", false, [0, 0, 0], unreachable);
    let big = SelectInput {
        f32: false,
        k: 8,
        theta: Centi(30),
        max_drops: 3,
        logits: (0..256)
            .map(|i| Centi(((i * 37) % 512 - 256) as i16))
            .collect(),
        latency_s: (0..256).map(|i| ms10((1 + (i * 13) % 97) as i16)).collect(),
    };
    sel("select_256", true, [0, 0, 0], big.clone());
    let mut over = big;
    over.logits.push(Zero);
    over.latency_s.push(ms10(1));
    sel("select_257", false, [0, 0, 0], over);

    let link = |name: &str, f32: bool, h: [u8; 5], op: u8, args: Vec<Num>| {
        let mut b = vec![1 | (u8::from(f32) << 1)];
        b.extend(h);
        b.extend(LinkInput { f32, op, args }.encode());
        write("capi", name, &b);
    };
    link("db_to_linear", false, [0; 5], 0, vec![Centi(2000)]);
    link(
        "db_to_linear_null_out",
        true,
        [1, 0, 0, 0, 0],
        0,
        vec![Centi(2000)],
    );
    link(
        "uma",
        false,
        [0; 5],
        1 | 8,
        vec![Sci(25, 0), Centi(150), Centi(350), Sci(200, 0)],
    );
    link(
        "shannon",
        true,
        [0; 5],
        2,
        vec![Sci(125, 5), Sci(10, 0), Sci(1, -9), Sci(398, -23)],
    );
    let dev = vec![
        Sci(65, 3),
        Sci(352, 6),
        Sci(398, -23),
        Sci(10, 0),
        Sci(1, -9),
        Centi(20),
        Sci(1, -9),
        Sci(2, 12),
        Sci(125, 5),
    ];
    link("device_latency", false, [0; 5], 3, dev.clone());
    link(
        "device_latency_misaligned_model",
        true,
        [0, 2, 0, 0, 0],
        3,
        dev,
    );
    link(
        "token_latency",
        false,
        [0, 0, 0, 3, 2],
        4,
        vec![ms10(3), ms10(1), ms10(7), Small(32), Zero],
    );
    link(
        "sequential_batched",
        true,
        [0; 5],
        5,
        vec![Small(48), ms10(1), PosInf, ms10(7)],
    );
    link("even_split", false, [0, 0, 0, 8, 0], 6, vec![Sci(1, 8)]);
    let mut mm = vec![Sci(65, 3), Sci(352, 6), Sci(398, -23), Sci(2, 7)];
    mm.extend([Sci(10, 0), Sci(1, -8), Centi(20), Sci(1, -8), Sci(2, 12)]);
    mm.extend([Sci(10, 0), Sci(1, -11), Centi(20), Sci(1, -11), Sci(2, 12)]);
    link("min_max_2", false, [0, 0, 0, 1, 0], 7, mm);
}

/// `wdmoe select` lines (one request per line; a seed may hold several).
fn select_jsonl_seeds() {
    let lines: &[(&str, &str)] = &[
        (
            "doc_example",
            r#"{"logits":[0.5,1.0,-2.0,0.0],"latency_s":[0.01,0.1,0.01,"inf"],"k":2,"theta":0.2}"#,
        ),
        (
            "mixtral",
            r#"{"logits":[0.1,2.0,-0.3,0.4,1.9,-1.0,0.0,0.2],"latency_s":[3e-4,4e-4,5e-4,4e-4,0.09,6e-4,7e-4,8e-4],"k":2,"theta":0.2,"max_drops":1}"#,
        ),
        (
            "fallback",
            r#"{"logits":[0.1,2.0,-0.3,0.4,1.9,-1.0,0.0,0.2],"latency_s":[3e-4,"inf",5e-4,4e-4,"+inf",6e-4,7e-4,8e-4],"k":2,"theta":0.2}"#,
        ),
        (
            "none_reachable",
            r#"{"logits":[1,2],"latency_s":["inf","Infinity"],"k":1,"theta":0}"#,
        ),
        (
            "errors",
            "{}\n{\"logits\":[1],\"latency_s\":[0],\"k\":1,\"theta\":0}\n{\"logits\":[1e400],\"latency_s\":[1],\"k\":1,\"theta\":0}\nnot json\n{\"logits\":[1],\"latency_s\":[\"fast\"],\"k\":1,\"theta\":0,\"extra\":1}\n",
        ),
        (
            "bad_values",
            "{\"logits\":[1,2,3],\"latency_s\":[1,2],\"k\":2,\"theta\":0.2}\n{\"logits\":[1,2],\"latency_s\":[1,2],\"k\":3,\"theta\":0.2}\n{\"logits\":[1,2],\"latency_s\":[1,2],\"k\":1,\"theta\":0.7}\n{\"logits\":[1,2],\"latency_s\":[-1,2],\"k\":1,\"theta\":0.1,\"max_drops\":-1}\n\n   \n",
        ),
        (
            "subnormal_huge",
            r#"{"logits":[1e308,-1e308,5e-324,0],"latency_s":[5e-324,1e308,2.2250738585072014e-308,1],"k":4,"theta":0.5,"max_drops":3}"#,
        ),
    ];
    for (name, text) in lines {
        write("select_jsonl", name, text.as_bytes());
    }
    let z: Vec<String> = (0..256)
        .map(|i| format!("{}", ((i * 37) % 512) as f64 / 100.0 - 2.56))
        .collect();
    let t: Vec<String> = (0..256)
        .map(|i| {
            if i % 29 == 0 {
                "\"inf\"".to_string()
            } else {
                format!("{}e-4", 1 + (i * 13) % 97)
            }
        })
        .collect();
    let line = format!(
        r#"{{"logits":[{}],"latency_s":[{}],"k":8,"theta":0.3,"max_drops":4}}"#,
        z.join(","),
        t.join(",")
    );
    write("select_jsonl", "experts_256", line.as_bytes());
    write(
        "select_jsonl",
        "not_utf8",
        b"{\"logits\":[1],\"latency_s\":[1],\"k\":1,\"theta\":0}\n\xff\xfe\n",
    );
}

/// Scenario files: the default, variants of every section, and bad ones.
fn scenario_seeds() {
    let default = wdmoe_sim::scenario::Scenario::paper().to_toml_string();
    write("scenario_toml", "default", default.as_bytes());
    let small = "prompts = 2\nprompt_tokens = 4\n[model]\nlayers = 2\n";
    let seeds: &[(&str, String)] = &[
        ("empty", String::new()),
        ("small", small.to_string()),
        (
            "uma_rician_ar1_min_max_batched",
            format!(
                "{small}accounting = \"batched\"\n[radio]\nallocation = \"min_max\"\n[channel]\npath_loss = \"uma\"\nfading = \"rician\"\ntime_model = \"ar1\"\nar1_rho = 0.5\n"
            ),
        ),
        (
            "umi_outages",
            format!(
                "{small}decode_tokens = 3\n[channel]\npath_loss = \"umi\"\nbs_height_m = 10.0\nfading = \"none\"\n[[channel.outages]]\ndevice = 3\nstart_token = 1\ntokens = 2\n[channel.random_outages]\nprobability_per_token = 0.5\nduration_tokens = 2\n"
            ),
        ),
        (
            "devices_positions",
            format!(
                "{small}[[devices]]\nname = \"a\"\ndistance_m = 10.0\nposition_m = [3.0, 4.0]\ntx_power_w = 0.1\ncompute_tflops = 1.0\nbandwidth_share = 0.5\n[[devices]]\nname = \"b\"\ndistance_m = 1000.0\ntx_power_w = 0.2\ncompute_tflops = 0.01\n[model]\ntop_k = 1\ncompute_model = \"paper\"\n"
            ),
        ),
        (
            "policies",
            format!(
                "{small}[policies]\nthetas = [0.5, 0.0]\nmax_drops = 7\nweight_only_betas = []\nchannel_only = false\n[router]\nspread = 0.0\nstickiness = 0.99\n"
            ),
        ),
        (
            "trace_router",
            "[router]\nkind = \"trace\"\ntrace_path = \"/nonexistent.npy\"\n".to_string(),
        ),
        (
            "bad_values",
            "prompts = -1\n[radio]\ncarrier_ghz = nan\nmin_snr_db = -inf\ntotal_bandwidth_hz = 1e400\n".to_string(),
        ),
        ("unknown_key", "[radio]\ncarrier = 3.5\n".to_string()),
        ("wrong_type", "seed = \"one\"\n[model]\nlayers = 2.5\n".to_string()),
        ("syntax_error", "[radio\ncarrier_ghz = = 3.5\n".to_string()),
        ("huge_ints", "seed = 18446744073709551615\nprompts = 9223372036854775807\n[model]\nhidden = 4294967295\nffn_hidden = 4294967295\ntop_k = 0\n".to_string()),
    ];
    for (name, text) in seeds {
        write("scenario_toml", name, text.as_bytes());
    }
}

/// `.npy` router traces: valid f32/f64 files, and the malformed kinds the
/// reader must reject.
fn trace_seeds() {
    use wdmoe_sim::trace::{npy_bytes_f32, npy_bytes_f64};
    let v: Vec<f32> = (0..2 * 3 * 8).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
    write("router_trace", "f32_2x3x8", &npy_bytes_f32(&[2, 3, 8], &v));
    let w: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    write("router_trace", "f64_2x3x8", &npy_bytes_f64(&[2, 3, 8], &w));
    let mut nan = npy_bytes_f32(&[1, 1, 2], &[0.0, f32::NAN]);
    write("router_trace", "nan_logit", &nan);
    nan.truncate(nan.len() - 2);
    write("router_trace", "truncated_data", &nan);
    // Hand-written headers: big-endian, Fortran order, 2-D, version 2.0.
    let npy = |major: u8, header: &str, data: &[u8]| {
        let mut h = header.to_string();
        let pre = if major == 1 { 10 } else { 12 };
        while (pre + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([major, 0]);
        if major == 1 {
            out.extend((h.len() as u16).to_le_bytes());
        } else {
            out.extend((h.len() as u32).to_le_bytes());
        }
        out.extend(h.as_bytes());
        out.extend(data);
        out
    };
    let be: Vec<u8> = [1.0f32, -2.0]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    write(
        "router_trace",
        "big_endian",
        &npy(
            1,
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 1, 2), }",
            &be,
        ),
    );
    write(
        "router_trace",
        "fortran",
        &npy(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1, 2), }",
            &[0; 8],
        ),
    );
    write(
        "router_trace",
        "two_d",
        &npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }",
            &[0; 8],
        ),
    );
    write(
        "router_trace",
        "v2_f8",
        &npy(
            2,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 1), }",
            &[0; 8],
        ),
    );
    write(
        "router_trace",
        "overflowing_shape",
        &npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2), }",
            &[0; 8],
        ),
    );
    write(
        "router_trace",
        "int_dtype",
        &npy(
            1,
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 1, 2), }",
            &[0; 8],
        ),
    );
    write("router_trace", "not_npy", b"PK\x03\x04 a zip file");
}

fn main() {
    select_seeds();
    link_seeds();
    capi_seeds();
    select_jsonl_seeds();
    scenario_seeds();
    trace_seeds();
}

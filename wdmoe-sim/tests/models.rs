//! Unit-level checks of the channel, router, policies, trace reader and the
//! select protocol, against values computed by hand or by the core.

use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::link;
use wdmoe_sim::channel::ChannelModel;
use wdmoe_sim::policy::{ChannelOnly, Decision, SelectionPolicy, Wdmoe, WeightOnly};
use wdmoe_sim::rng::{self, Stream};
use wdmoe_sim::router::{Router, RouterSummary, SyntheticRouter, TraceRouter};
use wdmoe_sim::scenario::{Fading, Outage, Scenario, TimeModel};
use wdmoe_sim::select_cli::process_line;
use wdmoe_sim::trace::{npy_bytes_f32, Trace};

fn no_fading() -> Scenario {
    let mut s = Scenario::paper();
    s.channel.fading = Fading::None;
    s
}

#[test]
fn channel_without_fading_matches_the_core_by_hand() {
    let s = no_fading();
    let ch = ChannelModel::new(&s).unwrap();
    let mut r = ch.realise(rng::stream(1, 0, Stream::Channel)).unwrap();
    let mut lat = vec![0.0; 8];
    r.latency_at(0, &mut lat).unwrap();
    // Device 3: 260 m, 0.2 W, 12.5 MHz, N0 = -174 dBm/Hz + 7 dB, the
    // phone-midrange preset under the roofline model: one token reads the
    // expert's 352,321,536 bytes at 34.1 GB/s (10.33 ms), more than its
    // 352,393,216 FLOP at 2 TFLOP/s (0.18 ms).
    let compute_s = 352_321_536.0 / 34.1e9;
    let shape = ExpertShape::MIXTRAL_8X7B;
    let model = LatencyModel::new(
        shape.payload_bits(16.0).unwrap(),
        shape.flops_per_token(4.0).unwrap(),
        link::noise_psd_w_per_hz(-174.0, 7.0).unwrap(),
    )
    .unwrap();
    let g2 =
        link::channel_power_gain(link::free_space_path_loss_db(3.5, 260.0).unwrap(), 1.0).unwrap();
    let dev = DeviceLink::new(10.0, g2, 0.2, g2, 352_393_216.0 / compute_s).unwrap();
    let want = model.expert_latency_s(&dev, 12.5e6).unwrap();
    assert!((lat[3] / want - 1.0).abs() < 1e-12);
    assert_eq!(ch.nominal_latency_s(3).unwrap(), lat[3]);
    // Compute alone is 10.33 ms of it.
    assert!(want > compute_s && want < 0.0115);
    // Without fading the latency never changes.
    r.latency_at(5, &mut lat).unwrap();
    assert!((lat[3] / want - 1.0).abs() < 1e-12);
}

#[test]
fn outages_make_devices_unreachable() {
    let mut s = no_fading();
    s.channel.outages = vec![Outage {
        device: 2,
        start_token: 3,
        tokens: 2,
    }];
    let ch = ChannelModel::new(&s).unwrap();
    let mut r = ch.realise(rng::stream(1, 0, Stream::Channel)).unwrap();
    let mut lat = vec![0.0; 8];
    for slot in 0..7 {
        r.latency_at(slot, &mut lat).unwrap();
        assert_eq!(lat[2].is_infinite(), (3..5).contains(&slot), "slot {slot}");
        assert!(lat.iter().enumerate().all(|(q, t)| q == 2 || t.is_finite()));
    }
}

#[test]
fn block_fading_holds_for_the_coherence_time_and_ar1_correlates() {
    let mut s = Scenario::paper();
    s.channel.coherence_tokens = 4;
    let ch = ChannelModel::new(&s).unwrap();
    let mut r = ch.realise(rng::stream(9, 0, Stream::Channel)).unwrap();
    let mut seq = Vec::new();
    for slot in 0..8 {
        let mut lat = vec![0.0; 8];
        r.latency_at(slot, &mut lat).unwrap();
        seq.push(lat);
    }
    assert_eq!(seq[0], seq[3]);
    assert_ne!(seq[3], seq[4]);
    assert_eq!(seq[4], seq[7]);

    // AR(1) with ρ close to 1 changes little from slot to slot; ρ = 0 is fresh.
    let corr = |rho: f64| {
        let mut s = Scenario::paper();
        s.channel.time_model = TimeModel::Ar1;
        s.channel.ar1_rho = rho;
        let ch = ChannelModel::new(&s).unwrap();
        let mut diffs = 0.0;
        for p in 0..20 {
            let mut r = ch.realise(rng::stream(3, p, Stream::Channel)).unwrap();
            let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 8]);
            r.latency_at(0, &mut a).unwrap();
            r.latency_at(1, &mut b).unwrap();
            diffs += a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) / x).abs())
                .sum::<f64>();
        }
        diffs
    };
    assert!(corr(0.999) < 0.2 * corr(0.0));
}

#[test]
fn rician_with_a_huge_k_factor_is_no_fading() {
    let mut s = Scenario::paper();
    s.channel.fading = Fading::Rician;
    s.channel.rician_k_db = 50.0;
    let ch = ChannelModel::new(&s).unwrap();
    let mut r = ch.realise(rng::stream(1, 0, Stream::Channel)).unwrap();
    let mut lat = vec![0.0; 8];
    r.latency_at(0, &mut lat).unwrap();
    for (q, t) in lat.iter().enumerate() {
        let nominal = ch.nominal_latency_s(q).unwrap();
        assert!(
            (t / nominal - 1.0).abs() < 0.01,
            "device {q}: {t} vs {nominal}"
        );
    }
}

#[test]
fn rayleigh_fading_power_has_unit_mean() {
    // Mean of |h|² over many draws, recovered from path loss and gain: use the
    // free-space model and one device, no SNR floor.
    let mut sum = 0.0;
    let n = 20_000;
    let mut r = rng::stream(5, 0, Stream::Channel);
    for _ in 0..n {
        sum += rng::exp1(&mut r);
    }
    assert!((sum / n as f64 - 1.0).abs() < 0.03);
    let mut sq = 0.0;
    for _ in 0..n {
        let (a, b) = rng::normal_pair(&mut r);
        sq += (a * a + b * b) / 2.0;
    }
    assert!((sq / n as f64 - 1.0).abs() < 0.03);
}

#[test]
fn synthetic_router_stickiness_raises_top1_repeats() {
    let lo = SyntheticRouter::new(32, 8, 1.3, 0.3, 0.0, 1);
    let hi = SyntheticRouter::new(32, 8, 1.3, 0.3, 0.9, 1);
    let a = RouterSummary::compute(&lo, 4, 64, 1);
    let b = RouterSummary::compute(&hi, 4, 64, 1);
    assert!(b.top1_repeat > a.top1_repeat + 0.2, "{a:?} {b:?}");
    // A larger spread gives more peaked weights: a smaller median w2/w1.
    let wide = SyntheticRouter::new(32, 8, 3.0, 0.3, 0.3, 1);
    let c = RouterSummary::compute(&wide, 4, 64, 1);
    assert!(c.ratio_quantiles[2] < a.ratio_quantiles[2]);
    assert!(a.ratio_quantiles.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn trace_router_walks_through_the_trace() {
    let (t, l, e) = (5, 2, 3);
    let vals: Vec<f32> = (0..t * l * e).map(|i| i as f32).collect();
    let trace = Trace::from_bytes(&npy_bytes_f32(&[t, l, e], &vals)).unwrap();
    let router = TraceRouter::new(trace, 3);
    assert_eq!((router.n_layers(), router.n_experts()), (2, 3));
    // Prompt 1 starts at token 3; token 5 wraps to token 0.
    let mut s = router.start_prompt(1, rng::stream(0, 1, Stream::Router));
    let mut out = vec![0.0; l * e];
    s.next_token(&mut out);
    assert_eq!(out, vec![18.0, 19.0, 20.0, 21.0, 22.0, 23.0]);
    s.next_token(&mut out);
    s.next_token(&mut out);
    assert_eq!(out[0], 0.0);
}

#[test]
fn baseline_policies() {
    let logits = [2.0, 1.0, 0.0, -1.0];
    let lat = [0.01, 0.02, 0.01, 0.01];
    let mut d = Decision::default();
    // w2/w1 = e^-1 = 0.368: kept at β = 0.3, dropped at β = 0.5.
    WeightOnly::new(2, 0.3)
        .unwrap()
        .decide(&logits, &lat, &mut d)
        .unwrap();
    assert_eq!(d.experts, vec![0, 1]);
    WeightOnly::new(2, 0.5)
        .unwrap()
        .decide(&logits, &lat, &mut d)
        .unwrap();
    assert_eq!((d.experts.clone(), d.dropped.clone()), (vec![0], vec![1]));
    assert_eq!(d.weights, vec![1.0]);
    // Channel-only drops the slowest of the top-2: expert 1 (20 ms).
    ChannelOnly::new(2)
        .unwrap()
        .decide(&logits, &lat, &mut d)
        .unwrap();
    assert_eq!(d.experts, vec![0]);
    let slow_top = [0.05, 0.02, 0.01, 0.01];
    ChannelOnly::new(2)
        .unwrap()
        .decide(&logits, &slow_top, &mut d)
        .unwrap();
    assert_eq!(d.experts, vec![1]);
    // WDMoE θ = 0 is plain top-k.
    Wdmoe::new(2, 0.0, 1)
        .unwrap()
        .decide(&logits, &lat, &mut d)
        .unwrap();
    assert_eq!(d.experts, vec![0, 1]);
    assert!(WeightOnly::new(2, 1.5).is_err());
    assert!(Wdmoe::new(2, 0.6, 1).is_err());
    // Every baseline keeps one expert when all but one top-k device is down.
    let down = [f64::INFINITY, f64::INFINITY, 0.01, 0.01];
    ChannelOnly::new(2)
        .unwrap()
        .decide(&logits, &down, &mut d)
        .unwrap();
    assert_eq!((d.experts.clone(), d.fallback), (vec![2], true));
}

#[test]
fn select_protocol_rejects_bad_lines_without_panicking() {
    let bad = [
        "",
        "[]",
        "null",
        r#"{"logits":[1e999],"latency_s":[1],"k":1,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,"nan"],"k":1,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,-1],"k":1,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,0],"k":1,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,2],"k":0,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,2],"k":3,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,2],"k":-1,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,2],"k":1,"theta":-0.1}"#,
        r#"{"logits":[1,2],"latency_s":[1,2],"k":1,"theta":0,"extra":1}"#,
        r#"{"logits":[],"latency_s":[],"k":1,"theta":0}"#,
        r#"{"logits":[1,2],"latency_s":[1,2],"k":1}"#,
        r#"{"logits":[1,2],"latency_s":[1,2],"k":1,"theta":0,"max_drops":-1}"#,
    ];
    for line in bad {
        let e = process_line(line).unwrap_err();
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert!(v["error"].is_string(), "{line}: {e}");
    }
    let too_many = format!(
        r#"{{"logits":[{}],"latency_s":[{}],"k":1,"theta":0}}"#,
        vec!["0"; 1025].join(","),
        vec!["1"; 1025].join(",")
    );
    assert!(process_line(&too_many).unwrap_err().contains("1024"));
    let deep = "[".repeat(10_000);
    assert!(process_line(&deep).is_err());
}

#[test]
fn scenario_validation_names_keys() {
    let cases = [
        ("prompts = 0", "prompts"),
        ("prompt_tokens = 0", "prompt_tokens"),
        (
            "[radio]\ntotal_bandwidth_hz = 0.0",
            "radio.total_bandwidth_hz",
        ),
        ("[radio]\nnoise_figure_db = inf", "radio.noise_figure_db"),
        ("[radio]\nmin_snr_db = nan", "radio.min_snr_db"),
        (
            "[channel]\ncoherence_tokens = 0",
            "channel.coherence_tokens",
        ),
        ("[channel]\nar1_rho = 1.0", "channel.ar1_rho"),
        (
            "[channel]\npath_loss = \"uma\"\nut_height_m = 30.0",
            "channel.ut_height_m",
        ),
        (
            "[channel.random_outages]\nprobability_per_token = 2.0",
            "channel.random_outages.probability_per_token",
        ),
        ("[router]\nstickiness = -0.5", "router.stickiness"),
        ("[router]\nkind = \"trace\"", "router.trace_path"),
        ("[policies]\nthetas = []", "policies.thetas"),
        (
            "[policies]\nweight_only_betas = [1.5]",
            "policies.weight_only_betas[0]",
        ),
        ("[model]\nlayers = 0", "model.layers"),
        (
            "[model]\nbits_per_element = -16.0",
            "model.bits_per_element",
        ),
        ("devices = []", "devices"),
    ];
    for (text, key) in cases {
        let e = Scenario::from_toml_str(text)
            .err()
            .unwrap_or_else(|| panic!("{text} should be rejected"));
        assert_eq!(e.key, key, "{text}: {e}");
    }
    // `-inf` disables the SNR floor; the paper's literal model runs.
    let s = Scenario::from_toml_str("[radio]\nmin_snr_db = -inf").unwrap();
    assert_eq!(s.radio.min_snr_db, f64::NEG_INFINITY);
}

mod no_panic {
    use proptest::prelude::*;
    use wdmoe_sim::scenario::Scenario;
    use wdmoe_sim::select_cli::process_line;
    use wdmoe_sim::trace::{npy_bytes_f32, Trace};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn parsers_never_panic(text in "\\PC{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Scenario::from_toml_str(&text);
            let _ = process_line(&text);
            let _ = Trace::from_bytes(&bytes);
        }

        #[test]
        fn mutated_traces_never_panic(flips in prop::collection::vec((0usize..200, any::<u8>()), 1..6), cut in 0usize..200) {
            let mut b = npy_bytes_f32(&[2, 3, 4], &[0.5; 24]);
            for (i, v) in flips {
                let n = b.len();
                b[i % n] = v;
            }
            b.truncate(cut.max(1) + 60);
            let _ = Trace::from_bytes(&b);
        }

        #[test]
        fn toml_values_never_panic(key in prop::sample::select(vec![
            "prompts", "seed", "prompt_tokens", "decode_tokens", "radio.carrier_ghz",
            "radio.total_bandwidth_hz", "radio.min_snr_db", "channel.ar1_rho",
            "channel.coherence_tokens", "router.spread", "model.top_k", "model.layers",
        ]), value in prop::sample::select(vec![
            "nan", "inf", "-inf", "-1", "0", "1e308", "-1e308", "18446744073709551615",
            "\"x\"", "[]", "true", "0.5", "1e-320",
        ])) {
            let text = match key.split_once('.') {
                Some((table, k)) => format!("[{table}]\n{k} = {value}\n"),
                None => format!("{key} = {value}\n"),
            };
            if let Ok(s) = Scenario::from_toml_str(&text) {
                prop_assert!(s.validate().is_ok());
            }
        }
    }
}

#[test]
fn positions_and_bandwidth_shares() {
    let s = Scenario::from_toml_str(
        "[radio]\nallocation = \"shares\"\n\
         [[devices]]\nposition_m = [30.0, 40.0]\npreset = \"a40\"\nbandwidth_share = 3.0\n\
         [[devices]]\ndistance_m = 50.0\npreset = \"a40\"\n",
    )
    .unwrap();
    assert_eq!(s.devices[0].distance_2d_m(), 50.0);
    let mut s = s;
    s.channel.fading = Fading::None;
    s.model.top_k = 1;
    let ch = ChannelModel::new(&s).unwrap();
    let mut r = ch.realise(rng::stream(1, 0, Stream::Channel)).unwrap();
    let mut lat = vec![0.0; 2];
    r.latency_at(0, &mut lat).unwrap();
    // Same distance and compute; 75 MHz beats 25 MHz.
    assert!(lat[0] < lat[1]);
    let both = "[[devices]]\ndistance_m = 5.0\nposition_m = [3.0, 4.0]\npreset = \"a40\"\n";
    assert_eq!(
        Scenario::from_toml_str(both).unwrap_err().key,
        "devices[0].position_m"
    );
    let neither = "[[devices]]\npreset = \"a40\"\n";
    let e = Scenario::from_toml_str(neither).unwrap_err();
    assert!(
        e.key == "devices[0].distance_m" && e.reason.contains("position_m"),
        "{e}"
    );
    let zero_power = "[[devices]]\ndistance_m = 5.0\ntx_power_w = 0.0\npreset = \"a40\"\n";
    assert_eq!(
        Scenario::from_toml_str(zero_power).unwrap_err().key,
        "devices[0].tx_power_w"
    );
}

mod shared_base {
    use proptest::prelude::*;
    use wdmoe_sim::policy::{
        reachable_top_k, ChannelOnly, Decision, SelectionPolicy, Wdmoe, WeightOnly,
    };

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// The engine's shortcut (one reachable top-k per token and layer,
        /// shared by the policies) gives the same decisions as deciding alone.
        #[test]
        fn decide_from_base_equals_decide(
            n in 2usize..12,
            k in 1usize..4,
            z in prop::collection::vec(-5.0f64..5.0, 12),
            t in prop::collection::vec(prop_oneof![9 => 1e-4f64..1.0, 1 => Just(f64::INFINITY)], 12),
            beta in 0.0f64..1.0,
            theta in 0.0f64..0.5,
        ) {
            let k = k.min(n);
            let (z, mut t) = (&z[..n], t[..n].to_vec());
            t[0] = 0.01; // at least one device reachable
            let pols: Vec<Box<dyn SelectionPolicy>> = vec![
                Box::new(Wdmoe::new(k, theta, 1).unwrap()),
                Box::new(WeightOnly::new(k, beta).unwrap()),
                Box::new(ChannelOnly::new(k).unwrap()),
            ];
            let mut base = Decision::default();
            reachable_top_k(k, z, &t, &mut base).unwrap();
            for p in &pols {
                let (mut a, mut b) = (Decision::default(), Decision::default());
                p.decide(z, &t, &mut a).unwrap();
                p.decide_from_base(z, &t, &base, &mut b).unwrap();
                prop_assert_eq!(a, b);
            }
        }
    }
}

#[test]
fn shipped_scenarios_parse_and_run() {
    for (name, text) in [
        ("uma-300m", include_str!("../scenarios/uma-300m.toml")),
        ("faults", include_str!("../scenarios/faults.toml")),
        ("chat-decode", include_str!("../scenarios/chat-decode.toml")),
    ] {
        let mut s = Scenario::from_toml_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.prompts = 2;
        s.prompt_tokens = s.prompt_tokens.min(8);
        s.decode_tokens = s.decode_tokens.min(4);
        let r = wdmoe_sim::sim::Simulation::new(s)
            .unwrap()
            .run(&|| {})
            .unwrap();
        assert!(r.rows.iter().all(|x| x.mean_s.is_finite()), "{name}");
    }
}

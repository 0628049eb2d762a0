//! The device models (roofline and the paper's), presets, the memory check,
//! replications and when the paper's numbers are shown (issue 11).

use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::link;
use wdmoe_sim::device::{self, ComputeModel};
use wdmoe_sim::report;
use wdmoe_sim::scenario::{Accounting, Device, Fading, Scenario};
use wdmoe_sim::sim::Simulation;

const F: f64 = 352_393_216.0; // eq. 4, Mixtral, η = 4
const W: f64 = 352_321_536.0; // 3·4096·14336 weights × 2 bytes

/// One device at 100 m, one layer, top-1, no fading, batched prefill of
/// `tokens` tokens: every token goes to the one device.
fn one_device(d: Device, model: ComputeModel, tokens: u32) -> Scenario {
    let mut s = Scenario::paper();
    s.devices = vec![d];
    s.model.top_k = 1;
    s.model.layers = 1;
    s.model.compute_model = model;
    s.channel.fading = Fading::None;
    s.accounting = Accounting::Batched;
    s.prompt_tokens = tokens;
    s.prompts = 1;
    s.replications = 1;
    s.policies.thetas = vec![0.0];
    s.policies.weight_only_betas.clear();
    s.policies.channel_only = false;
    s
}

/// Link part of eq. (6) for one token at 100 m over the whole 100 MHz [s].
fn link_s() -> f64 {
    let m = LatencyModel::new(
        ExpertShape::MIXTRAL_8X7B.payload_bits(16.0).unwrap(),
        0.0,
        link::noise_psd_w_per_hz(-174.0, 7.0).unwrap(),
    )
    .unwrap();
    let g2 =
        link::channel_power_gain(link::free_space_path_loss_db(3.5, 100.0).unwrap(), 1.0).unwrap();
    let dev = DeviceLink::new(10.0, g2, 0.2, g2, 1.0).unwrap();
    m.expert_latency_s(&dev, 100e6).unwrap()
}

#[test]
fn roofline_reads_the_weights_once_per_batch() {
    // 10 TFLOP/s, 100 GB/s: one token is memory-bound (3.52 ms > 35 µs);
    // 64 tokens: max(64·F/P = 2.255 ms, W/B = 3.523 ms) = 3.523 ms, still
    // memory-bound; 512 tokens: 18.04 ms, compute-bound.
    for (tokens, compute) in [(1u32, W / 100e9), (64, W / 100e9), (512, 512.0 * F / 10e12)] {
        let s = one_device(
            Device::roofline(100.0, 10.0, 100.0),
            ComputeModel::Roofline,
            tokens,
        );
        let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
        let want = tokens as f64 * link_s() + compute;
        let got = r.rows[0].mean_s;
        assert!((got / want - 1.0).abs() < 1e-9, "{tokens}: {got} vs {want}");
    }
}

#[test]
fn paper_model_charges_every_token() {
    // The paper's eq. 6 with C_q = 0.1 TFLOP/s: 64 tokens take 64 × (link + F/C).
    let s = one_device(Device::paper(100.0, 0.1), ComputeModel::Paper, 64);
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    let want = 64.0 * (link_s() + F / 0.1e12);
    assert!((r.rows[0].mean_s / want - 1.0).abs() < 1e-9);
    // A preset under the paper model uses its peak as C_q ("the GPU's FLOPS").
    let s = one_device(Device::at(100.0, "a40"), ComputeModel::Paper, 1);
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    let want = link_s() + F / 149.7e12;
    assert!((r.rows[0].mean_s / want - 1.0).abs() < 1e-9);
}

#[test]
fn presets_resolve_and_explicit_keys_override() {
    for p in device::PRESETS {
        assert!(p.peak_tflops > 0.0 && p.memory_bandwidth_gbps > 0.0 && p.memory_gb > 0.0);
        assert!(!p.source.is_empty(), "{}", p.name);
        let c = device::resolve(&Device::at(1.0, p.name), 0, ComputeModel::Roofline).unwrap();
        assert_eq!(c.flops_per_s, p.peak_tflops * 1e12);
        assert_eq!(c.bandwidth_bytes_per_s, Some(p.memory_bandwidth_gbps * 1e9));
    }
    let mut d = Device::at(1.0, "h200");
    d.memory_bandwidth_gbps = Some(4060.0);
    let c = device::resolve(&d, 0, ComputeModel::Roofline).unwrap();
    assert_eq!(c.bandwidth_bytes_per_s, Some(4.06e12));
    assert_eq!(c.flops_per_s, 989.4e12);
}

#[test]
fn devices_that_cannot_hold_their_experts_are_reported() {
    let mut s = Scenario::paper();
    s.devices[3] = Device::at(260.0, "apple-a17-pro");
    s.devices[7] = Device::at(600.0, "jetson-orin-nano-8gb");
    assert_eq!(device::experts_bytes(&s), 32.0 * W);
    let short = device::memory_shortfalls(&s);
    assert_eq!(
        short.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![3, 7],
        "{short:?}"
    );
    s.prompts = 2;
    s.prompt_tokens = 2;
    s.replications = 1;
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    assert_eq!(r.memory_shortfalls.len(), 2);
    let t = report::table(&r, None);
    assert!(
        t.contains("WARNING: devices that cannot hold their experts"),
        "{t}"
    );
    assert!(t.contains("#3 apple-a17-pro: 8 GB < 11.3 GB"), "{t}");
    // The default devices all hold theirs.
    assert!(device::memory_shortfalls(&Scenario::paper()).is_empty());
}

#[test]
fn paper_numbers_only_beside_the_papers_setup() {
    let mut s = Scenario::paper();
    s.prompts = 2;
    s.prompt_tokens = 2;
    s.replications = 1;
    let r = Simulation::new(s.clone()).unwrap().run(&|| {}).unwrap();
    assert!(r.paper_comparable);
    assert!(report::table(&r, None).contains("paper reduction"));
    assert!(report::svg(&r).contains("paper's reported latency"));
    for change in [
        |s: &mut Scenario| s.accounting = Accounting::Batched,
        |s: &mut Scenario| s.radio.noise_figure_db = 0.0,
        |s: &mut Scenario| s.decode_tokens = 1,
        |s: &mut Scenario| s.model.compute_model = ComputeModel::Paper,
    ] {
        let mut t = s.clone();
        change(&mut t);
        let r = Simulation::new(t).unwrap().run(&|| {}).unwrap();
        assert!(!r.paper_comparable);
        assert!(!report::table(&r, None).contains("paper reduction"));
        assert!(!report::svg(&r).contains("paper's reported latency"));
        assert!(!report::csv(&r).contains("16.2–37.5"));
    }
}

#[test]
fn replications_redraw_every_draw_and_set_the_interval() {
    let mut s = Scenario::paper();
    s.prompts = 4;
    s.prompt_tokens = 8;
    s.model.layers = 4;
    s.replications = 1;
    let one = Simulation::new(s.clone()).unwrap().run(&|| {}).unwrap();
    assert_eq!(one.interval, "prompts");
    s.replications = 4;
    let sim = Simulation::new(s).unwrap();
    let four = sim.run(&|| {}).unwrap();
    assert_eq!(
        (four.interval.as_str(), four.replications, four.prompts),
        ("replications", 4, 4)
    );
    assert!(report::table(&four, None).contains("t interval over 4 independent replications"));
    // Replication 0 is the single run; replication 1 differs in its router
    // and channel draws.
    let p0 = sim.simulate_replication_prompt(0, 0).unwrap();
    let p1 = sim.simulate_replication_prompt(1, 0).unwrap();
    assert_eq!(
        p0,
        Simulation::new(one.scenario.clone())
            .unwrap()
            .simulate_prompt(0, false)
            .unwrap()
    );
    assert_ne!(p0.policies[0].latency_s, p1.policies[0].latency_s);
    // The interval is a t interval over the 4 replications' reductions.
    let row = &four.rows[2];
    assert!(row.reduction_ci95_pct > 0.0);
    let reds: Vec<f64> = (0..4)
        .map(|r| {
            let (mut b, mut x) = (0.0, 0.0);
            for p in 0..4 {
                let o = sim.simulate_replication_prompt(r, p).unwrap();
                b += o.policies[0].latency_s;
                x += o.policies[2].latency_s;
            }
            100.0 * (1.0 - x / b)
        })
        .collect();
    let m = reds.iter().sum::<f64>() / 4.0;
    let sd = (reds.iter().map(|r| (r - m) * (r - m)).sum::<f64>() / 3.0).sqrt();
    let want = 3.182 * sd / 2.0;
    assert!(
        (row.reduction_ci95_pct - want).abs() < 1e-9 * want,
        "{} vs {want}",
        row.reduction_ci95_pct
    );
}

#[test]
fn plot_has_axis_titles_interval_bars_and_baselines_at_any_theta_count() {
    let mut s = Scenario::paper();
    s.prompts = 2;
    s.prompt_tokens = 2;
    s.model.layers = 2;
    s.replications = 3;
    s.policies.thetas = (0..50).map(|i| i as f64 * 0.01).collect();
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    let svg = report::svg(&r);
    for want in [
        "WDMoE threshold θ",
        "mean prompt latency [s]",
        "router weight kept",
        "95 % interval (3 replications)",
        "weight-only β=0.25",
        "channel-only",
    ] {
        assert!(svg.contains(want), "missing {want}");
    }
    // One interval bar and one point per θ; no per-point labels with 50 θ
    // (they would overlap); x ticks are numbers, not one per θ.
    assert_eq!(svg.matches("<circle").count(), 50 + 1); // + the legend's
    assert_eq!(svg.matches("stroke=\"#1b4f72\"").count(), 50);
    assert!(!svg.contains(" ± "));
    assert!(svg.matches("text-anchor=\"middle\">0.1</text>").count() == 1);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn fading_moves_within_a_token_every_fading_layers() {
    use wdmoe_sim::channel::ChannelModel;
    use wdmoe_sim::rng::{self, Stream};
    let s = Scenario::paper();
    assert_eq!(s.channel.fading_layers, 5);
    let ch = ChannelModel::new(&s).unwrap();
    let mut r = ch.realise(rng::stream(1, 0, Stream::Channel)).unwrap();
    let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 8]);
    r.latency_at(0, &mut a).unwrap();
    r.refade(0, 5.0 / 32.0, &mut b).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x != y), "{a:?} {b:?}");
    // Without fading nothing moves.
    let mut s = Scenario::paper();
    s.channel.fading = Fading::None;
    let ch = ChannelModel::new(&s).unwrap();
    let mut r = ch.realise(rng::stream(1, 0, Stream::Channel)).unwrap();
    r.latency_at(0, &mut a).unwrap();
    r.refade(0, 5.0 / 32.0, &mut b).unwrap();
    assert_eq!(a, b);
    // Redraws within a token contradict a coherence of several tokens.
    let mut s = Scenario::paper();
    s.channel.coherence_tokens = 4;
    assert_eq!(s.validate().unwrap_err().key, "channel.fading_layers");
    s.channel.fading_layers = 0;
    s.validate().unwrap();
}

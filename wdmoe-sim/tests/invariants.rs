//! Simulator-level invariants, over random scenarios (proptest):
//! * WDMoE's per-token and per-prompt latency ≤ plain top-k's on the same draws;
//! * latency is non-increasing in θ (per token and per prompt);
//! * every token is served by ≥ 1 expert, even through outages (finite latency);
//! * batched prefill accounting ≤ sequential accounting on the same draws.

use proptest::prelude::*;
use wdmoe_sim::scenario::{Accounting, Device, Fading, Outage, PathLoss, Scenario, TimeModel};
use wdmoe_sim::sim::Simulation;

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (
            2usize..10,
            1usize..4,
            1u32..5,
            1u32..10,
            0u32..4,
            any::<u64>(),
        ),
        prop::collection::vec((5.0f64..3000.0, 0.1f64..30.0, 0.01f64..1.0), 10),
        (0usize..3, 0usize..3, 0usize..2, 1u32..6, 0.0f64..0.99),
        (
            prop::collection::vec((0usize..10, 0u32..12, 1u32..8), 0..4),
            0.0f64..0.4,
            (0.0f64..0.5, 0.0f64..0.5, 1usize..3, any::<bool>()),
            (0.0f64..4.0, 0.0f64..0.99, any::<bool>()),
        ),
    )
        .prop_map(|(shape, devs, ch, rest)| {
            let (n, k, layers, tokens, decode, seed) = shape;
            let (pl, fad, tm, coh, rho) = ch;
            let (outages, p_out, (t1, t2, drops, minmax), (spread, stick, batched)) = rest;
            let mut s = Scenario::paper();
            s.seed = seed;
            s.prompts = 1;
            s.replications = 1;
            s.prompt_tokens = tokens;
            s.decode_tokens = decode;
            s.model.layers = layers;
            s.model.top_k = k.min(n);
            s.devices = devs[..n]
                .iter()
                .map(|&(d, c, p)| Device {
                    tx_power_w: p,
                    // Roofline: peak 1–300 TFLOP/s, bandwidth 10–3,000 GB/s.
                    ..Device::roofline(d, 10.0 * c, 100.0 * c)
                })
                .collect();
            s.channel.path_loss = [PathLoss::FreeSpace, PathLoss::Uma, PathLoss::Umi][pl];
            s.channel.bs_height_m = if pl == 2 { 10.0 } else { 25.0 };
            s.channel.fading = [Fading::Rayleigh, Fading::Rician, Fading::None][fad];
            s.channel.time_model = [TimeModel::Block, TimeModel::Ar1][tm];
            s.channel.coherence_tokens = coh;
            // Fading that moves within a token, where it does not contradict
            // a coherence of several tokens.
            s.channel.fading_layers = if coh > 1 { 0 } else { (seed % 3) as u32 };
            s.channel.ar1_rho = rho;
            s.channel.outages = outages
                .into_iter()
                .map(|(d, start, len)| Outage {
                    device: d % n,
                    start_token: start,
                    tokens: len,
                })
                .collect();
            s.channel.random_outages.probability_per_token = p_out;
            s.channel.random_outages.duration_tokens = 3;
            let (lo, hi) = if t1 <= t2 { (t1, t2) } else { (t2, t1) };
            s.policies.thetas = vec![0.0, lo, hi, 0.5];
            s.policies.max_drops = drops;
            s.radio.allocation = if minmax {
                wdmoe_sim::scenario::Allocation::MinMax
            } else {
                wdmoe_sim::scenario::Allocation::Even
            };
            s.router.spread = spread;
            s.router.stickiness = stick;
            s.accounting = if batched {
                Accounting::Batched
            } else {
                Accounting::Sequential
            };
            s
        })
}

fn le(a: f64, b: f64) -> bool {
    a <= b * (1.0 + 1e-12) + 1e-300
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn simulator_invariants(s in scenario(), prompt in 0u64..1000) {
        let sim = Simulation::new(s.clone()).unwrap();
        let out = sim.simulate_prompt(prompt, true).unwrap();
        let pols = sim.policies();
        // Rows 0..4 are WDMoE with θ = 0 ≤ lo ≤ hi ≤ 0.5; then weight-only and channel-only.
        let wd: Vec<_> = out.policies[..4].iter().collect();
        let tokens = s.total_tokens() as usize;
        for (pi, st) in out.policies.iter().enumerate() {
            // Every token served by at least one expert, with a finite latency.
            prop_assert!(st.experts >= st.decisions, "{}", pols[pi].name());
            prop_assert_eq!(st.decisions, tokens as u64 * s.model.layers as u64);
            prop_assert!(st.latency_s.is_finite() && st.latency_s > 0.0, "{}: {}", pols[pi].name(), st.latency_s);
            prop_assert_eq!(st.token_latency_s.len(), tokens);
            // Weight kept is a fraction of top-k's; drops are top-k slots.
            prop_assert!(st.kept_weight <= st.decisions as f64 * (1.0 + 1e-12));
            prop_assert!(st.dropped <= st.decisions * s.model.top_k as u64);
            prop_assert!(st.experts <= st.decisions * s.model.top_k as u64);
            // Every policy serves a subset of the reachable top-k: never slower per token.
            for j in 0..tokens {
                prop_assert!(le(st.token_latency_s[j], out.policies[0].token_latency_s[j]),
                    "{} token {j}", pols[pi].name());
            }
            prop_assert!(le(st.latency_s, out.policies[0].latency_s));
            // Batched prefill ≤ sequential on the same draws.
            prop_assert!(le(st.prefill_s, st.sequential_prefill_s),
                "{}: batched {} > sequential {}", pols[pi].name(), st.prefill_s, st.sequential_prefill_s);
        }
        // Non-increasing in θ, per token and per prompt.
        for w in wd.windows(2) {
            for j in 0..tokens {
                prop_assert!(le(w[1].token_latency_s[j], w[0].token_latency_s[j]));
            }
            prop_assert!(le(w[1].latency_s, w[0].latency_s));
            prop_assert!(w[1].experts <= w[0].experts);
        }
    }
}

#[test]
fn total_outage_still_serves_every_token() {
    let mut s = Scenario::paper();
    s.prompts = 3;
    s.prompt_tokens = 12;
    s.model.layers = 4;
    s.channel.outages = (0..s.devices.len())
        .map(|d| Outage {
            device: d,
            start_token: 2,
            tokens: 6,
        })
        .collect();
    let sim = Simulation::new(s).unwrap();
    let r = sim.run(&|| {}).unwrap();
    assert!(r.suppressed_outages > 0);
    for row in &r.rows {
        assert!(row.mean_s.is_finite());
        assert!(row.experts_per_token >= 1.0);
        // During the outage only one device is up: every policy falls back.
        assert!(row.fallbacks > 0, "{}", row.name);
    }
}

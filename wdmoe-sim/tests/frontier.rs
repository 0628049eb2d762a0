//! The frontier study: its properties on simulator runs (the same draws as
//! `Simulation::run`), the joint allocation, the command, and value
//! stability. The exact selector against brute force is in
//! tests/frontier_exact.rs.
//!
//! Value stability: if a deliberate model change moves the locked numbers,
//! re-run with `WDMOE_PRINT_VALUES=1 cargo test -p wdmoe-sim --test frontier
//! -- --nocapture` and update them, saying why in the commit.

use wdmoe_sim::frontier::{self, Allocation, FrontierConfig, FrontierReport};
use wdmoe_sim::scenario::Scenario;
use wdmoe_sim::sim::Simulation;

// ----------------------------------------------------------- simulator runs

fn small(seed: u64) -> Scenario {
    let mut s = Scenario::paper();
    s.seed = seed;
    s.prompts = 3;
    s.prompt_tokens = 4;
    s.model.layers = 4;
    s
}

fn run(s: Scenario, cfg: &FrontierConfig) -> (Simulation, FrontierReport) {
    let sim = Simulation::new(s).unwrap();
    let r = frontier::run(&sim, cfg, &|| {}).unwrap();
    (sim, r)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// The frontier's re-run of each policy equals `Simulation::run` on a
/// scenario where the fading moves within a token (12 layers, every 5), over
/// two replications (the second redraws the router's layer structure).
#[test]
fn same_draws_as_the_simulator() {
    let mut s = small(5);
    s.model.layers = 12;
    s.channel.fading_layers = 5;
    s.replications = 2;
    let (sim, r) = run(s, &FrontierConfig::default());
    assert_eq!((r.prompts, r.replications), (3, 2));
    let table = sim.run(&|| {}).unwrap();
    assert_eq!(table.rows.len(), r.policies.len());
    for (row, p) in table.rows.iter().zip(&r.policies) {
        assert_eq!(row.name, p.name);
        assert!(
            rel(p.mean_s, row.mean_s) < 1e-12,
            "{}: {} vs {}",
            p.name,
            p.mean_s,
            row.mean_s
        );
        assert!(rel(p.experts_per_token, row.experts_per_token) < 1e-12);
        if row.fallbacks == 0 {
            assert!(
                (p.kept_weight - row.kept_weight).abs() < 1e-12,
                "{}",
                p.name
            );
        }
    }
    // The fading moving within a token changes the numbers (the check above
    // would not see a frontier that held it).
    let mut held = small(5);
    held.model.layers = 12;
    held.channel.fading_layers = 0;
    held.replications = 2;
    let (_, h) = run(held, &FrontierConfig::default());
    assert!(rel(h.policies[0].mean_s, r.policies[0].mean_s) > 1e-6);
}

/// With batched accounting the frontier accounts sequentially on the
/// simulator's batched draws (the prefill is one channel slot): each
/// policy's mean is the run's sequential prefill plus decode.
#[test]
fn batched_scenario_uses_the_simulators_draws() {
    let mut s = small(6);
    s.accounting = wdmoe_sim::scenario::Accounting::Batched;
    s.decode_tokens = 2;
    s.model.layers = 12;
    s.replications = 2;
    let (sim, r) = run(s, &FrontierConfig::default());
    let total = (r.prompts * r.replications) as f64;
    for (i, p) in r.policies.iter().enumerate() {
        let mut sum = 0.0;
        for rep in 0..2 {
            for prompt in 0..3 {
                let o = sim.simulate_replication_prompt(rep, prompt).unwrap();
                sum += o.policies[i].sequential_prefill_s + o.policies[i].decode_s;
            }
        }
        assert!(
            rel(p.mean_s, sum / total) < 1e-12,
            "{}: {} vs {}",
            p.name,
            p.mean_s,
            sum / total
        );
    }
}

#[test]
fn wdmoe_never_beats_the_frontier() {
    // Every expert a candidate (k' = 8) or drops only (k' = k = 2).
    for (seed, fading_free, k_prime) in [
        (1, false, 8),
        (2, false, 8),
        (3, false, 8),
        (1, true, 8),
        (2, true, 8),
        (1, false, 2),
        (4, true, 2),
    ] {
        {
            let mut s = small(seed);
            if fading_free {
                s.channel.fading = wdmoe_sim::scenario::Fading::None;
            }
            let cfg = FrontierConfig {
                k_prime,
                ..FrontierConfig::default()
            };
            let (_, r) = run(s, &cfg);
            for p in &r.policies {
                assert_eq!(p.violations, 0, "{}", p.name);
                assert!(p.matched_s <= p.mean_s * (1.0 + 1e-12), "{}", p.name);
                assert!(
                    p.frontier_bound_s <= p.mean_s * (1.0 + 1e-12),
                    "{}: {} < bound {}",
                    p.name,
                    p.mean_s,
                    p.frontier_bound_s
                );
                // The interpolated frontier (achievable by mixing two λ rules)
                // is above the certified bound; the policy may sit between the
                // two only by the λ grid's resolution.
                let f = p.frontier_s.expect("inside the frontier's range");
                assert!(p.frontier_bound_s <= f * (1.0 + 1e-12));
                assert!(
                    p.mean_s >= f * (1.0 - 0.01),
                    "{}: {} far below {}",
                    p.name,
                    p.mean_s,
                    f
                );
                // The band shared by the selected devices only: never slower.
                let j = p.joint_s.unwrap();
                assert!(
                    j <= p.mean_s * (1.0 + 1e-9),
                    "{}: joint {} > even {}",
                    p.name,
                    j,
                    p.mean_s
                );
                assert!(p.joint_matched_s.unwrap() <= j * (1.0 + 1e-12));
                let jb = p.joint_frontier_bound_s.unwrap();
                assert!(
                    jb <= j * (1.0 + 1e-12),
                    "{}: joint {} < bound {}",
                    p.name,
                    j,
                    jb
                );
                assert!(jb <= p.joint_frontier_s.unwrap() * (1.0 + 1e-12));
                assert!(j >= p.joint_frontier_s.unwrap() * (1.0 - 0.01));
            }
        }
    }
}

#[test]
fn frontier_curves_are_monotone() {
    let (_, r) = run(small(7), &FrontierConfig::default());
    for c in [&r.frontier_even, &r.frontier_joint] {
        assert_eq!(c.len(), FrontierConfig::default().lambda_factors.len());
        for w in c.windows(2) {
            assert!(w[0].kept_weight <= w[1].kept_weight + 1e-12);
            assert!(w[0].mean_s <= w[1].mean_s * (1.0 + 1e-12));
        }
    }
    for c in [&r.primal_even, &r.primal_joint] {
        for w in c.windows(2) {
            assert!(w[0].mean_s <= w[1].mean_s * (1.0 + 1e-12));
        }
        // Kept weight at least ρ on every token (all top-k devices up here).
        for p in c.iter().filter(|p| p.infeasible == 0) {
            assert!(p.kept_weight >= p.parameter - 1e-12);
        }
    }
    for w in r.dual_even.windows(2) {
        assert!(w[0].kept_weight <= w[1].kept_weight + 1e-12);
    }
    // The joint allocation's frontier is below the even split's.
    for j in &r.frontier_joint {
        let f = frontier::frontier_at(&r.frontier_even, j.kept_weight).unwrap();
        assert!(j.mean_s <= f * (1.0 + 1e-9), "{} vs {}", j.mean_s, f);
    }
}

#[test]
fn rho_one_equals_top_k_on_the_simulator() {
    let mut s = small(11);
    s.radio.min_snr_db = f64::NEG_INFINITY; // every device reachable: kept 1 is feasible
    let (_, r) = run(s, &FrontierConfig::default());
    let top = r
        .policies
        .iter()
        .find(|p| p.parameter == Some(0.0) && p.family == "wdmoe")
        .unwrap();
    let one = r.primal_even.last().unwrap();
    assert_eq!(one.parameter, 1.0);
    assert_eq!(one.infeasible, 0);
    assert!(
        rel(one.mean_s, top.mean_s) < 1e-12,
        "{} vs {}",
        one.mean_s,
        top.mean_s
    );
    assert!((one.kept_weight - 1.0).abs() < 1e-12);
    assert_eq!(one.experts_per_token, 2.0);
    let inf = r.frontier_even.last().unwrap();
    assert!(rel(inf.mean_s, top.mean_s) < 1e-12);
    // ρ = 0 and λ = 0: the fastest expert alone, every token.
    assert_eq!(r.primal_even[0].experts_per_token, 1.0);
    assert_eq!(r.primal_even[0].mean_s, r.frontier_even[0].mean_s);
}

#[test]
fn with_even_bandwidth_the_joint_policy_equals_the_plain_one() {
    let cfg = FrontierConfig {
        joint: Some(Allocation::Even),
        ..FrontierConfig::default()
    };
    let (_, r) = run(small(13), &cfg);
    assert_eq!(r.min_max_solves, 0);
    for (e, j) in r.primal_even.iter().zip(&r.primal_joint) {
        assert!(rel(j.mean_s, e.mean_s) < 1e-12 && (j.kept_weight - e.kept_weight).abs() < 1e-12);
    }
    for (e, j) in r.frontier_even.iter().zip(&r.frontier_joint) {
        assert!(rel(j.mean_s, e.mean_s) < 1e-12 && (j.kept_weight - e.kept_weight).abs() < 1e-12);
    }
    for p in &r.policies {
        assert!(rel(p.joint_s.unwrap(), p.mean_s) < 1e-12, "{}", p.name);
        assert!(
            rel(p.joint_matched_s.unwrap(), p.matched_s) < 1e-12,
            "{}",
            p.name
        );
    }
}

#[test]
fn bad_config_is_an_error_naming_the_key() {
    let sim = Simulation::new(small(1)).unwrap();
    for (cfg, key) in [
        (
            FrontierConfig {
                rhos: vec![1.5],
                ..FrontierConfig::default()
            },
            "frontier.rhos",
        ),
        (
            FrontierConfig {
                budgets: vec![0.0],
                ..FrontierConfig::default()
            },
            "frontier.budgets",
        ),
        (
            FrontierConfig {
                lambda_factors: vec![f64::NAN],
                ..FrontierConfig::default()
            },
            "frontier.lambda_factors",
        ),
        (
            FrontierConfig {
                k_prime: 1,
                ..FrontierConfig::default()
            },
            "frontier.k_prime",
        ),
        (
            FrontierConfig {
                k_prime: 64,
                ..FrontierConfig::default()
            },
            "frontier.k_prime",
        ),
    ] {
        let e = frontier::run(&sim, &cfg, &|| {}).unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
    }
}

#[test]
fn bounded_joint_search_for_many_experts() {
    // 16 experts, k' = 4: the even-split selector stays exact over all 16;
    // the joint one searches the 4 heaviest reachable experts.
    let mut s = small(17);
    s.prompts = 2;
    s.prompt_tokens = 2;
    s.model.layers = 2;
    let mut devs = s.devices.clone();
    devs.extend(s.devices.iter().cloned());
    s.devices = devs;
    let cfg = FrontierConfig {
        k_prime: 4,
        ..FrontierConfig::default()
    };
    let (_, r) = run(s, &cfg);
    assert_eq!((r.experts, r.k_prime), (16, 4));
    for p in &r.policies {
        assert_eq!(p.violations, 0, "{}", p.name);
        assert!(p.frontier_bound_s <= p.mean_s * (1.0 + 1e-12));
    }
    // At most C(4,1)+C(4,2) = 10 subsets per decision are solved, cached per
    // slot; every replication's prompts × 2 tokens × 2 layers are decisions.
    let decisions = (r.replications * 2 * 2 * 2) as u64;
    assert!(r.min_max_solves > 0 && r.min_max_solves <= decisions * 10);
}

#[test]
fn results_do_not_depend_on_threads() {
    let sim = Simulation::new(small(19)).unwrap();
    let cfg = FrontierConfig::default();
    let go = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
            .install(|| frontier::run(&sim, &cfg, &|| {}))
            .unwrap()
    };
    assert_eq!(go(1), go(2));
}

// ---------------------------------------------------------- value stability

#[test]
fn value_stability() {
    let mut s = Scenario::paper();
    s.seed = 42;
    s.prompts = 4;
    s.replications = 2;
    s.prompt_tokens = 6;
    s.model.layers = 8;
    let (_, r) = run(s, &FrontierConfig::default());
    let mut got: Vec<(String, f64)> = Vec::new();
    got.push(("lambda_scale_s".into(), r.lambda_scale_s));
    for i in [0, 16, 32] {
        let c = &r.frontier_even[i];
        got.push((format!("frontier_even[{i}].mean_s"), c.mean_s));
        got.push((format!("frontier_even[{i}].kept"), c.kept_weight));
        let c = &r.frontier_joint[i];
        got.push((format!("frontier_joint[{i}].mean_s"), c.mean_s));
    }
    for p in &r.policies {
        got.push((format!("{}.mean_s", p.name), p.mean_s));
        got.push((format!("{}.kept", p.name), p.kept_weight));
        got.push((format!("{}.matched_s", p.name), p.matched_s));
        got.push((format!("{}.frontier_s", p.name), p.frontier_s.unwrap()));
        got.push((format!("{}.joint_s", p.name), p.joint_s.unwrap()));
        got.push((
            format!("{}.joint_frontier_s", p.name),
            p.joint_frontier_s.unwrap(),
        ));
    }
    if std::env::var_os("WDMOE_PRINT_VALUES").is_some() {
        for (k, v) in &got {
            println!("(\"{k}\", {v:e}),");
        }
    }
    let want: &[(&str, f64)] = &[
        ("lambda_scale_s", 5.98887294179612e-3),
        ("frontier_even[0].mean_s", 1.16490796650393e-1),
        ("frontier_even[0].kept", 2.0011563124351353e-1),
        ("frontier_joint[0].mean_s", 8.800634588142076e-2),
        ("frontier_even[16].mean_s", 2.9188106708595923e-1),
        ("frontier_even[16].kept", 9.506867779969329e-1),
        ("frontier_joint[16].mean_s", 2.517270655287902e-1),
        ("frontier_even[32].mean_s", 3.9391772636359207e-1),
        ("frontier_even[32].kept", 1e0),
        ("frontier_joint[32].mean_s", 3.508643133150305e-1),
        ("WDMoE θ=0 (top-k).mean_s", 3.9391772636359207e-1),
        ("WDMoE θ=0 (top-k).kept", 1e0),
        ("WDMoE θ=0 (top-k).matched_s", 3.9391772636359207e-1),
        ("WDMoE θ=0 (top-k).frontier_s", 3.9391772636359207e-1),
        ("WDMoE θ=0 (top-k).joint_s", 3.508643133150305e-1),
        ("WDMoE θ=0 (top-k).joint_frontier_s", 3.508643133150305e-1),
        ("WDMoE θ=0.1.mean_s", 3.63668455478322e-1),
        ("WDMoE θ=0.1.kept", 9.865499968405337e-1),
        ("WDMoE θ=0.1.matched_s", 3.63668455478322e-1),
        ("WDMoE θ=0.1.frontier_s", 3.3379824574732253e-1),
        ("WDMoE θ=0.1.joint_s", 3.214929291968074e-1),
        ("WDMoE θ=0.1.joint_frontier_s", 2.9177280814974e-1),
        ("WDMoE θ=0.2.mean_s", 3.2358255231477706e-1),
        ("WDMoE θ=0.2.kept", 9.356355087137135e-1),
        ("WDMoE θ=0.2.matched_s", 3.2358255231477706e-1),
        ("WDMoE θ=0.2.frontier_s", 2.8008671755786513e-1),
        ("WDMoE θ=0.2.joint_s", 2.8214276361897117e-1),
        ("WDMoE θ=0.2.joint_frontier_s", 2.3886321823083084e-1),
        ("WDMoE θ=0.3.mean_s", 2.7667389321456554e-1),
        ("WDMoE θ=0.3.kept", 8.359207815571539e-1),
        ("WDMoE θ=0.3.matched_s", 2.757465933517073e-1),
        ("WDMoE θ=0.3.frontier_s", 2.2272931320091e-1),
        ("WDMoE θ=0.3.joint_s", 2.3667327620414144e-1),
        ("WDMoE θ=0.3.joint_frontier_s", 1.8291290327062457e-1),
        ("weight-only β=0.25.mean_s", 3.710909454636074e-1),
        ("weight-only β=0.25.kept", 9.770481821003084e-1),
        ("weight-only β=0.25.matched_s", 3.710909454636074e-1),
        ("weight-only β=0.25.frontier_s", 3.200987349407606e-1),
        ("weight-only β=0.25.joint_s", 3.2859064362206536e-1),
        ("weight-only β=0.25.joint_frontier_s", 2.7815711782834224e-1),
        ("weight-only β=0.5.mean_s", 3.4522342702834774e-1),
        ("weight-only β=0.5.kept", 9.007452196671903e-1),
        ("weight-only β=0.5.matched_s", 3.4522342702834774e-1),
        ("weight-only β=0.5.frontier_s", 2.5648750191841835e-1),
        ("weight-only β=0.5.joint_s", 3.031084551072199e-1),
        ("weight-only β=0.5.joint_frontier_s", 2.1618373573073127e-1),
        ("channel-only.mean_s", 1.963917744188129e-1),
        ("channel-only.kept", 5.128593697812944e-1),
        ("channel-only.matched_s", 1.867653333867682e-1),
        ("channel-only.frontier_s", 1.4447873619971316e-1),
        ("channel-only.joint_s", 1.581341493445912e-1),
        ("channel-only.joint_frontier_s", 1.0875733558762837e-1),
    ];
    assert_eq!(got.len(), want.len(), "locked values missing: print them");
    for ((k, v), (wk, wv)) in got.iter().zip(want) {
        assert_eq!(k, wk);
        assert!(rel(*v, *wv) <= 1e-9, "{k}: {v:e} != {wv:e}");
    }
}

// ----------------------------------------------------------------- command

#[test]
fn command_writes_table_csv_json_svg() {
    let dir = std::env::temp_dir().join(format!("wdmoe-frontier-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wdmoe"))
        .args(["frontier", "--prompts", "2", "--tokens", "2", "-q", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 prompts × 2 tokens × 32 layers"), "{text}");
    assert!(text.contains("WDMoE θ=0.2") && text.contains("frontier, same mean kept"));
    let csv = std::fs::read_to_string(dir.join("frontier.csv")).unwrap();
    assert!(csv.starts_with("series,name,parameter,mean_s,kept_weight"));
    // 33 λ × 2 + 21 ρ × 2 + 12 budgets + 7 policies, plus the header.
    assert_eq!(csv.lines().count(), 1 + 66 + 42 + 12 + 7);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("frontier.json")).unwrap()).unwrap();
    assert_eq!(json["policies"].as_array().unwrap().len(), 7);
    assert_eq!(json["prompts"], 2);
    let svg = std::fs::read_to_string(dir.join("frontier.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(!svg.contains("NaN"));
    let _ = std::fs::remove_dir_all(&dir);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wdmoe"))
        .args(["frontier", "--scenario", "/nonexistent/f.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/f.toml"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wdmoe"))
        .args(["frontier", "--k-prime", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--k-prime: must be in [k, 63] = [2, 63] (got 1)"));
}

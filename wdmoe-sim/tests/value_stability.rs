//! Locks a small seeded run's table by value, and checks that the numbers do
//! not depend on the thread count. If a deliberate model change moves these
//! numbers, re-run with `WDMOE_PRINT_VALUES=1 cargo test -p wdmoe-sim --test
//! value_stability -- --nocapture` and update the table below, saying why in
//! the commit.

use wdmoe_sim::scenario::{Accounting, Scenario};
use wdmoe_sim::sim::{RunReport, Simulation};

fn small(accounting: Accounting) -> Scenario {
    let mut s = Scenario::paper();
    s.seed = 42;
    s.prompts = 12;
    s.prompt_tokens = 16;
    s.decode_tokens = 4;
    s.model.layers = 8;
    s.accounting = accounting;
    s
}

fn run(s: Scenario, threads: usize) -> RunReport {
    let sim = Simulation::new(s).unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| sim.run(&|| {}))
        .unwrap()
}

/// (name, mean_s, p50_s, p95_s, p99_s, experts_per_token, drop_rate, kept_weight, fallbacks)
type Row = (&'static str, f64, f64, f64, f64, f64, f64, f64, u64);

fn check(report: &RunReport, want: &[Row]) {
    if std::env::var_os("WDMOE_PRINT_VALUES").is_some() {
        for r in &report.rows {
            println!(
                "(\"{}\", {:e}, {:e}, {:e}, {:e}, {:e}, {:e}, {:e}, {}),",
                r.name,
                r.mean_s,
                r.p50_s,
                r.p95_s,
                r.p99_s,
                r.experts_per_token,
                r.drop_rate,
                r.kept_weight,
                r.fallbacks
            );
        }
    }
    assert_eq!(report.rows.len(), want.len());
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
    for (r, w) in report.rows.iter().zip(want) {
        assert_eq!(r.name, w.0);
        let got = [
            r.mean_s,
            r.p50_s,
            r.p95_s,
            r.p99_s,
            r.experts_per_token,
            r.drop_rate,
            r.kept_weight,
        ];
        let exp = [w.1, w.2, w.3, w.4, w.5, w.6, w.7];
        for (i, (g, e)) in got.iter().zip(exp).enumerate() {
            assert!(
                close(*g, e),
                "{} column {i}: got {g:e}, locked {e:e}",
                r.name
            );
        }
        assert_eq!(r.fallbacks, w.8, "{} fallbacks", r.name);
    }
}

const BATCHED: &[Row] = &[
    (
        "WDMoE θ=0 (top-k)",
        8.237597208067902e-1,
        8.096847326144552e-1,
        9.222043732587613e-1,
        9.222043732587613e-1,
        2e0,
        0e0,
        1e0,
        0,
    ),
    (
        "WDMoE θ=0.1",
        7.482151042192355e-1,
        7.453371346114145e-1,
        8.111292541004405e-1,
        8.111292541004405e-1,
        1.9098958333333333e0,
        4.505208333333333e-2,
        9.84254082974147e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        6.276032975609408e-1,
        6.198570652641358e-1,
        6.930823730566861e-1,
        6.930823730566861e-1,
        1.7140625e0,
        1.4296875e-1,
        9.241720141147127e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        5.043933536356293e-1,
        4.9895290623211075e-1,
        5.777978748770991e-1,
        5.777978748770991e-1,
        1.4708333333333334e0,
        2.6458333333333334e-1,
        8.313765865380713e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        7.805302344956006e-1,
        7.77175600360318e-1,
        8.646158301332338e-1,
        8.646158301332338e-1,
        1.8395833333333333e0,
        8.020833333333334e-2,
        9.778420084812327e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        6.989479361648628e-1,
        6.952602908630416e-1,
        7.541209394417927e-1,
        7.541209394417927e-1,
        1.5723958333333334e0,
        2.1380208333333334e-1,
        9.057805301556051e-1,
        0,
    ),
    (
        "channel-only",
        3.1150562377495833e-1,
        2.9965012850036976e-1,
        3.70087242086223e-1,
        3.70087242086223e-1,
        1e0,
        5e-1,
        5.006948153404884e-1,
        0,
    ),
];

const SEQUENTIAL: &[Row] = &[
    (
        "WDMoE θ=0 (top-k)",
        1.3403143069746122e0,
        1.331399036874434e0,
        1.4027722789975288e0,
        1.4027722789975288e0,
        1.9984375e0,
        7.8125e-4,
        9.994568578251036e-1,
        0,
    ),
    (
        "WDMoE θ=0.1",
        1.24818509401247e0,
        1.257569326140334e0,
        1.2842563429490017e0,
        1.2842563429490017e0,
        1.909375e0,
        4.53125e-2,
        9.839377167942636e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        1.087373896491937e0,
        1.0899999040264505e0,
        1.1434725131337629e0,
        1.1434725131337629e0,
        1.715625e0,
        1.421875e-1,
        9.24883288032039e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        9.350632603249074e-1,
        9.446025265009929e-1,
        9.7265901699885e-1,
        9.7265901699885e-1,
        1.4729166666666667e0,
        2.635416666666667e-1,
        8.319943731612497e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        1.2893297817686624e0,
        1.2850774270406697e0,
        1.3487332339345113e0,
        1.3487332339345113e0,
        1.8385416666666667e0,
        8.072916666666667e-2,
        9.773986977484886e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        1.1999185921838953e0,
        1.1759894214242468e0,
        1.2534680317076683e0,
        1.2534680317076683e0,
        1.571875e0,
        2.140625e-1,
        9.055073108173841e-1,
        0,
    ),
    (
        "channel-only",
        6.460789319830137e-1,
        6.565827234060037e-1,
        7.110544910970473e-1,
        7.110544910970473e-1,
        1e0,
        5e-1,
        5.001850019748024e-1,
        0,
    ),
];

#[test]
fn sequential_table_is_locked() {
    check(&run(small(Accounting::Sequential), 2), SEQUENTIAL);
}

#[test]
fn batched_table_is_locked() {
    check(&run(small(Accounting::Batched), 2), BATCHED);
}

#[test]
fn same_numbers_on_any_thread_count() {
    let mut s = small(Accounting::Sequential);
    s.channel.random_outages.probability_per_token = 0.05;
    let one = run(s.clone(), 1);
    let three = run(s, 3);
    assert_eq!(one, three);
}

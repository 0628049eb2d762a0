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
    s.replications = 1;
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
        4.1400507642712503e-1,
        4.0424953673622266e-1,
        5.025771031387137e-1,
        5.025771031387137e-1,
        2e0,
        0e0,
        1e0,
        0,
    ),
    (
        "WDMoE θ=0.1",
        3.934028552223507e-1,
        3.861681523711724e-1,
        4.7469809606751073e-1,
        4.7469809606751073e-1,
        1.9098958333333333e0,
        4.505208333333333e-2,
        9.85921276879106e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        3.491144882925094e-1,
        3.393399982795116e-1,
        4.1512554821131e-1,
        4.1512554821131e-1,
        1.7135416666666667e0,
        1.4322916666666666e-1,
        9.304252568591401e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        3.0699039247344206e-1,
        3.0590792951557916e-1,
        3.430047887750348e-1,
        3.430047887750348e-1,
        1.4708333333333334e0,
        2.6458333333333334e-1,
        8.369139079772985e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        3.99499621098218e-1,
        3.93541411783078e-1,
        4.746980960675107e-1,
        4.746980960675107e-1,
        1.8307291666666667e0,
        8.463541666666667e-2,
        9.774930562334069e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        3.726171933786584e-1,
        3.6549875373317575e-1,
        4.425900264084134e-1,
        4.425900264084134e-1,
        1.5552083333333333e0,
        2.2239583333333332e-1,
        9.023673495274646e-1,
        0,
    ),
    (
        "channel-only",
        2.1255733057546386e-1,
        2.1334220866060366e-1,
        2.2904830427429693e-1,
        2.2904830427429693e-1,
        1e0,
        5e-1,
        5.01193166056404e-1,
        0,
    ),
];

const SEQUENTIAL: &[Row] = &[
    (
        "WDMoE θ=0 (top-k)",
        1.3445266105218643e0,
        1.3214025537386855e0,
        1.466817069647178e0,
        1.466817069647178e0,
        1.9984375e0,
        7.8125e-4,
        9.991135340550719e-1,
        0,
    ),
    (
        "WDMoE θ=0.1",
        1.2637758113161255e0,
        1.2510134659152614e0,
        1.375116279552329e0,
        1.375116279552329e0,
        1.9104166666666667e0,
        4.479166666666667e-2,
        9.855352013430028e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        1.1118077355941096e0,
        1.1055370791823924e0,
        1.2245588413129858e0,
        1.2245588413129858e0,
        1.7109375e0,
        1.4453125e-1,
        9.290281612578191e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        9.50913280285858e-1,
        9.50832113874622e-1,
        1.0525141199220276e0,
        1.0525141199220276e0,
        1.4697916666666666e0,
        2.6510416666666664e-1,
        8.358696145421696e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        1.2946780572228958e0,
        1.2822998082971457e0,
        1.4220857246611214e0,
        1.4220857246611214e0,
        1.8291666666666666e0,
        8.541666666666667e-2,
        9.766065902884787e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        1.1926979467358965e0,
        1.1805327505981849e0,
        1.307010902832972e0,
        1.307010902832972e0,
        1.5541666666666667e0,
        2.2291666666666668e-1,
        9.016210598530815e-1,
        0,
    ),
    (
        "channel-only",
        6.62263571140469e-1,
        6.677563789923149e-1,
        7.078942278950768e-1,
        7.078942278950768e-1,
        1e0,
        5e-1,
        4.9925046687265967e-1,
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

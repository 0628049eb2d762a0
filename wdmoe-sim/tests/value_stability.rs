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
        8.185800845767429e-1,
        8.052295772230271e-1,
        9.519535011711576e-1,
        9.519535011711576e-1,
        2e0,
        0e0,
        1e0,
        0,
    ),
    (
        "WDMoE θ=0.1",
        7.400826720923015e-1,
        7.284317078241542e-1,
        8.336823971662721e-1,
        8.336823971662721e-1,
        1.9015625e0,
        4.921875e-2,
        9.835482317141497e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        6.108325681300104e-1,
        6.172555308681731e-1,
        6.909969522517185e-1,
        6.909969522517185e-1,
        1.7e0,
        1.5e-1,
        9.243056140548435e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        4.930821203635996e-1,
        4.9993546757667895e-1,
        5.397910344046013e-1,
        5.397910344046013e-1,
        1.4567708333333333e0,
        2.716145833333333e-1,
        8.285844789839351e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        7.672501616482993e-1,
        7.45136205883493e-1,
        9.007280235154296e-1,
        9.007280235154296e-1,
        1.8307291666666667e0,
        8.463541666666667e-2,
        9.774930562334069e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        6.702045677587476e-1,
        6.620893321834211e-1,
        7.581128007830217e-1,
        7.581128007830217e-1,
        1.5552083333333333e0,
        2.2239583333333332e-1,
        9.023673495274646e-1,
        0,
    ),
    (
        "channel-only",
        3.105555368368484e-1,
        3.013805441230709e-1,
        3.5451219162053965e-1,
        3.5451219162053965e-1,
        1e0,
        5e-1,
        5.005198493896726e-1,
        0,
    ),
];

const SEQUENTIAL: &[Row] = &[
    (
        "WDMoE θ=0 (top-k)",
        1.3448892702967141e0,
        1.3272204275678474e0,
        1.4670750035322417e0,
        1.4670750035322417e0,
        1.9994791666666667e0,
        2.6041666666666666e-4,
        9.995392039864861e-1,
        0,
    ),
    (
        "WDMoE θ=0.1",
        1.252272398104464e0,
        1.2376695220857066e0,
        1.3603040212871516e0,
        1.3603040212871516e0,
        1.9041666666666666e0,
        4.791666666666667e-2,
        9.840195522947889e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        1.0913545748003648e0,
        1.0981963267580466e0,
        1.1817274056148594e0,
        1.1817274056148594e0,
        1.7026041666666667e0,
        1.4869791666666668e-1,
        9.246450617789627e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        9.287305533190611e-1,
        9.348531866171671e-1,
        1.0254278466845892e0,
        1.0254278466845892e0,
        1.4567708333333333e0,
        2.716145833333333e-1,
        8.280765667455499e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        1.2929289662742036e0,
        1.2863781404757684e0,
        1.415013302229069e0,
        1.415013302229069e0,
        1.8307291666666667e0,
        8.463541666666667e-2,
        9.770922975397123e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        1.1891011990954383e0,
        1.1768762537283786e0,
        1.3252843724606505e0,
        1.3252843724606505e0,
        1.5552083333333333e0,
        2.2239583333333332e-1,
        9.0196659083377e-1,
        0,
    ),
    (
        "channel-only",
        6.434708864181703e-1,
        6.452830972544508e-1,
        6.998294896847823e-1,
        6.998294896847823e-1,
        1e0,
        5e-1,
        5.003307515746881e-1,
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

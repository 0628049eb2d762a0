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
        4.1361729671178143e-1,
        4.067848643247889e-1,
        5.029888952756807e-1,
        5.029888952756807e-1,
        2e0,
        0e0,
        1e0,
        0,
    ),
    (
        "WDMoE θ=0.1",
        3.9153464220519574e-1,
        3.8553339902787354e-1,
        4.7549939194852225e-1,
        4.7549939194852225e-1,
        1.909375e0,
        4.53125e-2,
        9.857451145510228e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        3.4983210584597146e-1,
        3.4037089832707e-1,
        4.1660717752800125e-1,
        4.1660717752800125e-1,
        1.7145833333333333e0,
        1.4270833333333333e-1,
        9.308844490464664e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        3.086443328339797e-1,
        3.05058082017657e-1,
        3.499018268760672e-1,
        3.499018268760672e-1,
        1.471875e0,
        2.640625e-1,
        8.374999217183579e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        3.991352638310885e-1,
        3.94774156719927e-1,
        4.754993919485222e-1,
        4.754993919485222e-1,
        1.8307291666666667e0,
        8.463541666666667e-2,
        9.774930562334069e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        3.721090999279996e-1,
        3.631043743556692e-1,
        4.433309986357955e-1,
        4.433309986357955e-1,
        1.5552083333333333e0,
        2.2239583333333332e-1,
        9.023673495274646e-1,
        0,
    ),
    (
        "channel-only",
        2.1323269098613754e-1,
        2.1478114234184478e-1,
        2.267150816246666e-1,
        2.267150816246666e-1,
        1e0,
        5e-1,
        5.00601481477736e-1,
        0,
    ),
];

const SEQUENTIAL: &[Row] = &[
    (
        "WDMoE θ=0 (top-k)",
        1.3440673822782456e0,
        1.3260948284207192e0,
        1.465344321160413e0,
        1.465344321160413e0,
        1.9994791666666667e0,
        2.6041666666666666e-4,
        9.995392039864861e-1,
        0,
    ),
    (
        "WDMoE θ=0.1",
        1.257648173474935e0,
        1.2395220251996635e0,
        1.3613522592451686e0,
        1.3613522592451686e0,
        1.9078125e0,
        4.609375e-2,
        9.850479809633582e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        1.1098761596262512e0,
        1.1084266919070733e0,
        1.19379200241975e0,
        1.19379200241975e0,
        1.715625e0,
        1.421875e-1,
        9.307017592097524e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        9.505962084892445e-1,
        9.508347196957454e-1,
        1.0350243291924504e0,
        1.0350243291924504e0,
        1.4697916666666666e0,
        2.6510416666666664e-1,
        8.363546265373216e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        1.2938557244017324e0,
        1.2873158350938336e0,
        1.4142594673522142e0,
        1.4142594673522142e0,
        1.8307291666666667e0,
        8.463541666666667e-2,
        9.770922975397123e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        1.1927194979309175e0,
        1.1813031379394472e0,
        1.3263361897414352e0,
        1.3263361897414352e0,
        1.5552083333333333e0,
        2.2239583333333332e-1,
        9.0196659083377e-1,
        0,
    ),
    (
        "channel-only",
        6.601556837923068e-1,
        6.600177413736839e-1,
        7.115394403190813e-1,
        7.115394403190813e-1,
        1e0,
        5e-1,
        4.9994092629178094e-1,
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

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
        1.438569292378301e-1,
        1.3461911345986236e-1,
        1.8477387718438168e-1,
        1.8477387718438168e-1,
        2e0,
        0e0,
        1e0,
        0,
    ),
    (
        "WDMoE θ=0.1",
        1.4015683533223497e-1,
        1.3306106690792532e-1,
        1.7758652000990177e-1,
        1.7758652000990177e-1,
        1.9791666666666667e0,
        1.0416666666666666e-2,
        9.969008821243868e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        1.2839922294193556e-1,
        1.2393166080550558e-1,
        1.5390888218528162e-1,
        1.5390888218528162e-1,
        1.8723958333333333e0,
        6.380208333333333e-2,
        9.713560107811213e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        1.1264596120884098e-1,
        1.1527765677987352e-1,
        1.3259878294539462e-1,
        1.3259878294539462e-1,
        1.659375e0,
        1.703125e-1,
        9.012370093701719e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        1.412196856813794e-1,
        1.3275245404030223e-1,
        1.7988366838963724e-1,
        1.7988366838963724e-1,
        1.9223958333333333e0,
        3.8802083333333334e-2,
        9.883487271773527e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        1.2851813801360618e-1,
        1.2263856222958402e-1,
        1.5832835067041828e-1,
        1.5832835067041828e-1,
        1.6567708333333333e0,
        1.7161458333333332e-1,
        9.153312271721799e-1,
        0,
    ),
    (
        "channel-only",
        7.754864895600962e-2,
        7.741209943561511e-2,
        8.315180498655432e-2,
        8.315180498655432e-2,
        1e0,
        5e-1,
        5.004253616813263e-1,
        0,
    ),
];

const SEQUENTIAL: &[Row] = &[
    (
        "WDMoE θ=0 (top-k)",
        2.565823815332495e-1,
        2.3394295992101097e-1,
        3.960777578771854e-1,
        3.960777578771854e-1,
        2e0,
        0e0,
        1e0,
        0,
    ),
    (
        "WDMoE θ=0.1",
        2.3275096786315244e-1,
        2.300401708598664e-1,
        2.5726950222491146e-1,
        2.5726950222491146e-1,
        1.9723958333333333e0,
        1.3802083333333333e-2,
        9.947318847384575e-1,
        0,
    ),
    (
        "WDMoE θ=0.2",
        2.1989337245283605e-1,
        2.2007734162948217e-1,
        2.3429409894772577e-1,
        2.3429409894772577e-1,
        1.8755208333333333e0,
        6.2239583333333334e-2,
        9.717277928336119e-1,
        0,
    ),
    (
        "WDMoE θ=0.3",
        2.02049836456177e-1,
        2.0344615503134114e-1,
        2.052604127820316e-1,
        2.052604127820316e-1,
        1.6609375e0,
        1.6953125e-1,
        9.012319386914044e-1,
        0,
    ),
    (
        "weight-only β=0.25",
        2.5371877120305675e-1,
        2.3042995085752907e-1,
        3.9391184103466703e-1,
        3.9391184103466703e-1,
        1.9223958333333333e0,
        3.8802083333333334e-2,
        9.883487271773527e-1,
        0,
    ),
    (
        "weight-only β=0.5",
        2.3853681080916714e-1,
        2.2344646728395848e-1,
        3.3407275719664314e-1,
        3.3407275719664314e-1,
        1.6567708333333333e0,
        1.7161458333333332e-1,
        9.153312271721799e-1,
        0,
    ),
    (
        "channel-only",
        1.5728717049736063e-1,
        1.5774076248801563e-1,
        1.6362545175359278e-1,
        1.6362545175359278e-1,
        1e0,
        5e-1,
        4.9665318346549553e-1,
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

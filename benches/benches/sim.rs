//! The simulator's throughput on one core: token-layer steps per second
//! (each step draws the channel, asks the router and runs every policy of
//! the scenario — 7 for the paper's default), and the policy decisions per
//! second that implies. Uses `Simulation::run_decisions`, the simulator's
//! benchmark helper, on the paper's default scenario.
//!
//! `cargo bench -p wdmoe-benches --bench sim`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use wdmoe_benches::{MEASUREMENT, WARM_UP};
use wdmoe_sim::scenario::Scenario;
use wdmoe_sim::sim::Simulation;

/// Token-layer steps per criterion iteration.
const STEPS: u64 = 4096;

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(20)
        .configure_from_args();
    let sim = Simulation::new(Scenario::paper()).expect("the paper's scenario is valid");
    let policies = sim.policies().len() as u64;

    let mut g = c.benchmark_group("sim/paper_scenario_one_core");
    g.throughput(Throughput::Elements(STEPS));
    g.bench_function("token_layer_steps", |b| {
        b.iter(|| black_box(sim.run_decisions(black_box(STEPS)).unwrap()).checksum)
    });
    g.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        // Decisions per second (criterion reports steps; each step runs every policy).
        let steps = 20 * STEPS;
        let start = Instant::now();
        let t = sim.run_decisions(steps).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(t.decisions, t.token_layers * policies);
        println!(
            "sim: {:.3} M token-layer steps/s, {:.3} M policy decisions/s on one core ({policies} policies per step)",
            t.token_layers as f64 / secs / 1e6,
            t.decisions as f64 / secs / 1e6,
        );
    }
}

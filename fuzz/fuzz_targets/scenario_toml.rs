//! The scenario TOML parser (`Scenario::from_toml_str`) on any text: never
//! a panic; an error names a key and a reason; an accepted scenario is
//! valid, prints back to TOML that parses to the same scenario, and a small
//! run of it simulates without error ("a validated scenario is always
//! simulable").
#![no_main]

use libfuzzer_sys::fuzz_target;
use wdmoe_sim::scenario::{RouterKind, Scenario};
use wdmoe_sim::sim::Simulation;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let s = match Scenario::from_toml_str(text) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.key.is_empty() && !e.reason.is_empty(), "{e:?}");
            return;
        }
    };
    s.validate().expect("an accepted scenario is valid");
    let printed = s.to_toml_string();
    let back = Scenario::from_toml_str(&printed)
        .unwrap_or_else(|e| panic!("printed scenario does not parse: {e}\n{printed}"));
    assert_eq!(back, s, "TOML round trip changed the scenario\n{printed}");

    // A tiny run: one prompt of two tokens, at most two layers; the trace
    // router needs a file, and large device counts are slow (bisection per
    // device), so those are left to the unit tests.
    if s.router.kind == RouterKind::Trace || s.devices.len() > 16 {
        return;
    }
    let mut small = s.clone();
    small.prompts = 1;
    small.replications = 1;
    small.prompt_tokens = small.prompt_tokens.min(2);
    small.decode_tokens = small.decode_tokens.min(1);
    small.model.layers = small.model.layers.min(2);
    if small.validate().is_err() {
        return;
    }
    let sim = Simulation::new(small).expect("a validated scenario is simulable");
    sim.run_decisions(4).expect("a validated scenario runs");
});

//! # wdmoe-sim
//!
//! The wireless WDMoE simulator: a base station runs attention and the router
//! of an MoE LLM, expert `q` of every layer lives on mobile device `q`, and
//! per token and layer a selection policy decides which devices serve the
//! token. This crate simulates the paper's latency study (and variations) by
//! composing the formulas and the policy of [`wdmoe_core`], which it never
//! re-implements.
//!
//! | module | what |
//! |---|---|
//! | [`scenario`] | base station, devices, radio, channel, router, policies; TOML in and out, validation |
//! | [`device`] | device compute: the roofline model (peak FLOP/s, memory bandwidth, memory) or the paper's `F / C_q`; presets with sources |
//! | [`channel`] | path loss (paper / 3GPP UMa / UMi), shadowing, Rayleigh / Rician fading, block or AR(1), outages |
//! | [`router`] | where router logits come from: synthetic Mixtral-like, recorded trace, (live hook) |
//! | [`trace`] | the `.npy` router-trace reader and recorder |
//! | [`policy`] | WDMoE θ, weight-only β, channel-only — one trait |
//! | [`sim`] | the Monte-Carlo engine and the latency accounting (sequential eq. 8, batched prefill, decode) |
//! | [`report`] | tables, CSV, JSON, SVG |
//! | [`frontier`] | the exact selector, the latency–kept-weight frontier, joint bandwidth allocation |
//! | [`frontier_cli`] | `wdmoe frontier` |
//! | [`select_cli`] | the `wdmoe select` line protocol |
//! | [`sensitivity`] | `wdmoe sensitivity`: the reduction against cell radius and compute spread |
//! | [`output`] | CLI plumbing: stdout that never panics, atomic output files checked before the run, bounded input |
//! | [`model`] | a Mixtral model on the CPU: HF checkpoints, decoder, WDMoE routing, generation |
//! | [`generate_cli`] | `wdmoe generate` |
//! | [`eval`] | perplexity and multiple-choice accuracy per θ, with routing and simulated latency |
//! | [`eval_cli`] | `wdmoe eval perplexity`, `wdmoe eval choice` |
//! | [`router_stats`] | trained vs synthetic router statistics (`wdmoe router-stats`) |
//! | [`rng`] | seeded, injected random streams |
//! | [`dist`] | `wdmoe dist`: experts on several GPUs through NCCL (feature `dist`), links emulated, measured against the model |
//!
//! Randomness is always seeded: prompt `p` of a run with seed `s` draws from
//! streams derived from `(s, p)` alone, so results are the same on any
//! number of threads.
//!
//! ## Example
//! ```
//! use wdmoe_sim::{scenario::Scenario, sim::Simulation, report};
//!
//! let mut s = Scenario::paper();        // 8 devices, 3.5 GHz, 10 W / 0.2 W, 100 MHz, Rayleigh
//! s.prompts = 8;                         // a small run
//! s.prompt_tokens = 16;
//! let sim = Simulation::new(s).unwrap();
//! let r = sim.run(&|| {}).unwrap();
//! // Rows: WDMoE θ = 0 (plain top-k), 0.1, 0.2, 0.3, weight-only β = 0.25, 0.5, channel-only.
//! let theta0 = &r.rows[0];
//! let theta2 = &r.rows[2];
//! assert!(theta2.mean_s <= theta0.mean_s);            // [s]
//! assert!(theta2.experts_per_token < 2.0);
//! println!("{}", report::table(&r, None));
//! ```
#![deny(missing_docs)]

pub mod channel;
pub mod device;
pub mod dist;
pub mod eval;
pub mod eval_cli;
pub mod frontier;
pub mod frontier_cli;
pub mod generate_cli;
pub mod layer;
pub mod model;
pub mod output;
pub mod policy;
pub mod progress;
pub mod report;
pub mod rng;
pub mod router;
pub mod router_stats;
pub mod scenario;
pub mod select_cli;
pub mod sensitivity;
pub mod sim;
pub mod stats;
pub mod trace;

//! Helpers shared by integration tests. Each test binary uses only part
//! of them, hence the module-wide `dead_code` allowance.
#![allow(dead_code)]

pub mod cli;
pub mod hf;

/// A router with the same logits at every token and layer: experts 3 and 5
/// are its top-2.
pub struct Fixed {
    /// Layers per token.
    pub layers: usize,
}

pub struct FixedStream;

impl wdmoe_sim::router::RouterStream for FixedStream {
    fn next_token(&mut self, out: &mut [f64]) {
        for (i, z) in out.iter_mut().enumerate() {
            *z = match i % 8 {
                3 => 2.0,
                5 => 1.5,
                _ => 0.0,
            };
        }
    }
}

impl wdmoe_sim::router::Router for Fixed {
    fn n_layers(&self) -> usize {
        self.layers
    }
    fn n_experts(&self) -> usize {
        8
    }
    fn describe(&self) -> String {
        "fixed".into()
    }
    fn start_prompt(
        &self,
        _: u64,
        _: wdmoe_sim::rng::Rng,
    ) -> Box<dyn wdmoe_sim::router::RouterStream + '_> {
        Box::new(FixedStream)
    }
}

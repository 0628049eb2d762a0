//! Measured against modeled latency of a distributed run, per layer and per
//! token: the model's eq. (7) per layer and eq. (8) per token (the
//! scenario's devices), the emulated airtime the device ranks held (eq. 6's
//! link terms), and the time the base station measured.

use std::fmt::Write as _;

use serde::Serialize;

/// One token through one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRecord {
    /// Token index.
    pub token: u32,
    /// Layer.
    pub layer: usize,
    /// Experts that served the token.
    pub experts: usize,
    /// Eq. (7) with the scenario's devices (link + their compute) \[s\].
    pub modeled_s: f64,
    /// The emulated airtime held: the slowest rank's downlink + uplink \[s\].
    pub airtime_s: f64,
    /// What the BS measured for the step (CUDA events) \[s\].
    pub measured_s: f64,
}

/// One token over all layers (eq. 8's sum for that token).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRecord {
    /// Token index.
    pub token: u32,
    /// Σ over layers of eq. (7) \[s\].
    pub modeled_s: f64,
    /// Σ of the airtime held \[s\].
    pub airtime_s: f64,
    /// Σ of the measured step times \[s\].
    pub measured_s: f64,
}

/// A distributed run's latency report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistReport {
    /// The GPUs (e.g. "2 x NVIDIA H200").
    pub machine: String,
    /// The placement (spec text).
    pub placement: String,
    /// Hidden size m and expert hidden size m_h.
    pub shape: (usize, usize),
    /// Whether the links were emulated (holds on the device ranks).
    pub links: bool,
    /// Per token and layer.
    pub layers: Vec<LayerRecord>,
}

impl DistReport {
    /// Per-token sums, tokens in order.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        let mut out: Vec<TokenRecord> = Vec::new();
        for r in &self.layers {
            if out.last().is_none_or(|t| t.token != r.token) {
                out.push(TokenRecord {
                    token: r.token,
                    modeled_s: 0.0,
                    airtime_s: 0.0,
                    measured_s: 0.0,
                });
            }
            if let Some(t) = out.last_mut() {
                t.modeled_s += r.modeled_s;
                t.airtime_s += r.airtime_s;
                t.measured_s += r.measured_s;
            }
        }
        out
    }

    /// The per-token table with a summary (what `wdmoe dist` prints).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "distributed MoE on {} (placement {}, m={}, m_h={}, links {})",
            self.machine,
            self.placement,
            self.shape.0,
            self.shape.1,
            if self.links { "emulated" } else { "off" }
        );
        let _ = writeln!(
            s,
            "{:>6} {:>14} {:>14} {:>14} {:>16}",
            "token", "modeled ms", "airtime ms", "measured ms", "measured-air ms"
        );
        let tokens = self.tokens();
        for t in &tokens {
            let _ = writeln!(
                s,
                "{:>6} {:>14.3} {:>14.3} {:>14.3} {:>16.3}",
                t.token,
                t.modeled_s * 1e3,
                t.airtime_s * 1e3,
                t.measured_s * 1e3,
                (t.measured_s - t.airtime_s) * 1e3
            );
        }
        let n = self.layers.len().max(1) as f64;
        let mean = |f: fn(&LayerRecord) -> f64| self.layers.iter().map(f).sum::<f64>() / n;
        let _ = writeln!(
            s,
            "per layer (mean of {}): modeled (eq. 7) {:.3} ms, airtime held {:.3} ms, measured {:.3} ms; \
             measured − airtime = {:.3} ms is the GPUs' compute plus NCCL and launch overhead, \
             where the model charges the scenario devices' compute (eq. 6's L_comp/C_q)",
            self.layers.len(),
            mean(|r| r.modeled_s) * 1e3,
            mean(|r| r.airtime_s) * 1e3,
            mean(|r| r.measured_s) * 1e3,
            (mean(|r| r.measured_s) - mean(|r| r.airtime_s)) * 1e3
        );
        s
    }

    /// One CSV line per token and layer.
    pub fn csv(&self) -> String {
        let mut s = String::from("token,layer,experts,modeled_s,airtime_s,measured_s\n");
        for r in &self.layers {
            let _ = writeln!(
                s,
                "{},{},{},{:e},{:e},{:e}",
                r.token, r.layer, r.experts, r.modeled_s, r.airtime_s, r.measured_s
            );
        }
        s
    }

    /// The whole report as JSON (layers and per-token sums).
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a DistReport,
            tokens: Vec<TokenRecord>,
        }
        serde_json::to_string_pretty(&Out {
            report: self,
            tokens: self.tokens(),
        })
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(token: u32, layer: usize, m: f64, a: f64, x: f64) -> LayerRecord {
        LayerRecord {
            token,
            layer,
            experts: 2,
            modeled_s: m,
            airtime_s: a,
            measured_s: x,
        }
    }

    #[test]
    fn tokens_sum_their_layers_and_outputs_list_every_layer() {
        let r = DistReport {
            machine: "2 x test".into(),
            placement: "1:0-7".into(),
            shape: (4096, 14336),
            links: true,
            layers: vec![
                rec(0, 0, 1e-3, 4e-4, 6e-4),
                rec(0, 1, 2e-3, 5e-4, 7e-4),
                rec(1, 0, 3e-3, 1e-4, 2e-4),
            ],
        };
        let t = r.tokens();
        assert_eq!(t.len(), 2);
        assert!((t[0].modeled_s - 3e-3).abs() < 1e-15);
        assert!((t[0].airtime_s - 9e-4).abs() < 1e-15);
        assert!((t[0].measured_s - 1.3e-3).abs() < 1e-15);
        assert_eq!(t[1].token, 1);
        let csv = r.csv();
        assert_eq!(csv.lines().count(), 4);
        assert!(
            csv.lines().nth(2).unwrap().starts_with("0,1,2,2e-3,"),
            "{csv}"
        );
        let table = r.table();
        assert!(table.contains("placement 1:0-7"), "{table}");
        assert!(table.contains("modeled (eq. 7) 2.000 ms"), "{table}");
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
        assert_eq!(v["layers"].as_array().unwrap().len(), 3);
        assert_eq!(v["shape"][1], 14336);
    }
}

//! The planning of one distributed MoE step, host-side only: which rows go
//! to which rank and in what order ([`StepPlan`]), the fixed-size header
//! each device rank receives first ([`Header`]: the per-expert row counts,
//! so it can post receives of the right sizes), the rows of one rank's
//! experts ([`rank_segments`], used by both sides), and the emulated link
//! airtimes ([`holds_ns`], eq. 6's link terms through wdmoe-core).

use wdmoe_core::latency::expert_latency_s;

use super::placement::Placement;
use crate::error::{Error, Result};
use crate::moe::encode::RowTables;
use crate::moe::MAX_EXPERTS;

/// `u32` words of a [`Header`].
pub const HEADER_WORDS: usize = 10 + MAX_EXPERTS;
/// First word of every header ("WDME").
pub const MAGIC: u32 = 0x5744_4d45;

/// What a header asks of a device rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run one layer's experts on the rows that follow.
    Step,
    /// Leave the serve loop.
    Stop,
}

/// The message a device rank receives before each step: layer, per-expert
/// row counts (all experts; a rank reads its own), and the link holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Step or stop.
    pub cmd: Command,
    /// Step number (wrapping; a check that both sides agree).
    pub seq: u32,
    /// MoE layer.
    pub layer: u32,
    /// Experts in all.
    pub n_experts: u32,
    /// Rows for this rank (the sum of its experts' counts).
    pub rows: u32,
    /// Downlink hold \[ns\] before the experts run (emulated airtime).
    pub hold_down_ns: u64,
    /// Uplink hold \[ns\] before the outputs are sent back.
    pub hold_up_ns: u64,
    /// Rows per expert (global ids; other ranks' experts included).
    pub counts: Vec<u32>,
}

impl Header {
    /// The wire form.
    pub fn encode(&self) -> [u32; HEADER_WORDS] {
        let mut w = [0u32; HEADER_WORDS];
        w[0] = MAGIC;
        w[1] = match self.cmd {
            Command::Step => 1,
            Command::Stop => 2,
        };
        w[2] = self.seq;
        w[3] = self.layer;
        w[4] = self.n_experts;
        w[5] = self.rows;
        w[6] = self.hold_down_ns as u32;
        w[7] = (self.hold_down_ns >> 32) as u32;
        w[8] = self.hold_up_ns as u32;
        w[9] = (self.hold_up_ns >> 32) as u32;
        for (d, &c) in w[10..].iter_mut().zip(&self.counts) {
            *d = c;
        }
        w
    }

    /// Parses and checks the wire form against this rank's placement: magic,
    /// command, expert count, and that its experts' counts add up to `rows`.
    pub fn decode(w: &[u32], placement: &Placement, rank: usize) -> Result<Header> {
        let bad = |detail: String| Error::Dist {
            op: "Header::decode",
            detail,
        };
        if w.len() != HEADER_WORDS || w[0] != MAGIC {
            return Err(bad(format!(
                "{} words, first {:#x} (expected {HEADER_WORDS} words starting {MAGIC:#x})",
                w.len(),
                w.first().copied().unwrap_or(0)
            )));
        }
        let cmd = match w[1] {
            1 => Command::Step,
            2 => Command::Stop,
            c => return Err(bad(format!("unknown command {c}"))),
        };
        let n = placement.n_experts();
        if w[4] as usize != n {
            return Err(bad(format!(
                "{} experts, this rank's placement has {n}",
                w[4]
            )));
        }
        let counts = w[10..10 + n].to_vec();
        let mine: u64 = placement
            .experts_on(rank)
            .iter()
            .map(|&q| counts[q] as u64)
            .sum();
        if cmd == Command::Step && mine != w[5] as u64 {
            return Err(bad(format!(
                "rank {rank}: its experts' counts add to {mine}, header says {} rows",
                w[5]
            )));
        }
        Ok(Header {
            cmd,
            seq: w[2],
            layer: w[3],
            n_experts: w[4],
            rows: w[5],
            hold_down_ns: w[6] as u64 | (w[7] as u64) << 32,
            hold_up_ns: w[8] as u64 | (w[9] as u64) << 32,
            counts,
        })
    }
}

/// The rows of `rank`'s experts in a step with per-expert `counts`:
/// `(expert, first row within the rank's block, rows)` for each of its
/// experts with rows, experts ascending (the order rows travel in).
pub fn rank_segments(
    placement: &Placement,
    rank: usize,
    counts: &[u32],
) -> Vec<(usize, usize, usize)> {
    let mut off = 0;
    let mut out = Vec::new();
    for q in placement.experts_on(rank) {
        let c = counts.get(q).copied().unwrap_or(0) as usize;
        if c > 0 {
            out.push((q, off, c));
            off += c;
        }
    }
    out
}

/// One step's plan on the BS: the rows in travel order (by rank, then
/// expert, then token) as [`RowTables`] (the gather indices, and the slots
/// and weights of the combine), and each rank's block of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// Rows in travel order (groups permuted by [`Placement::send_order`]).
    pub tables: RowTables,
    /// Per rank: (first row, rows).
    pub blocks: Vec<(usize, usize)>,
    /// Rows per expert (global ids).
    pub counts: Vec<u32>,
}

impl StepPlan {
    /// Plans a step of `n_tokens` tokens whose experts serve `groups`
    /// (`groups[q]`: expert q's (token, weight) pairs; an empty group, e.g.
    /// a dropped expert, sends and computes nothing).
    pub fn new(
        placement: &Placement,
        n_tokens: usize,
        groups: &[Vec<(usize, f32)>],
    ) -> Result<StepPlan> {
        let n = placement.n_experts();
        if groups.len() != n {
            return Err(Error::Dist {
                op: "StepPlan::new",
                detail: format!("{} groups for {n} placed experts", groups.len()),
            });
        }
        let order = placement.send_order();
        let permuted: Vec<Vec<(usize, f32)>> = order.iter().map(|&q| groups[q].clone()).collect();
        let tables = RowTables::new(n_tokens, &permuted)?;
        let mut row = 0;
        let blocks = (0..placement.world())
            .map(|r| {
                let rows: usize = placement
                    .experts_on(r)
                    .iter()
                    .map(|&q| groups[q].len())
                    .sum();
                row += rows;
                (row - rows, rows)
            })
            .collect();
        Ok(StepPlan {
            tables,
            blocks,
            counts: groups.iter().map(|g| g.len() as u32).collect(),
        })
    }

    /// The header of device rank `rank` (holds from [`holds_ns`]).
    pub fn header(&self, rank: usize, seq: u32, layer: usize, holds: (u64, u64)) -> Header {
        Header {
            cmd: Command::Step,
            seq,
            layer: layer as u32,
            n_experts: self.counts.len() as u32,
            rows: self.blocks[rank].1 as u32,
            hold_down_ns: holds.0,
            hold_up_ns: holds.1,
            counts: self.counts.clone(),
        }
    }
}

/// One device link's rates (eq. 2–3) \[bit/s\].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkRates {
    /// Downlink (BS → device).
    pub down_bps: f64,
    /// Uplink (device → BS).
    pub up_bps: f64,
}

/// Airtime \[s\] of `bits` over `rate_bps`: eq. (6)'s link term, computed by
/// wdmoe-core's `expert_latency_s` with no compute and the other direction
/// free (so a zero rate is `+∞` there, and NaN or negative rates are its
/// errors).
pub fn airtime_s(bits: f64, rate_bps: f64) -> Result<f64> {
    expert_latency_s(bits, 0.0, rate_bps, 1.0, f64::INFINITY).map_err(Error::Policy)
}

/// Per rank, the (downlink, uplink) hold in nanoseconds for a step with
/// per-expert row `counts`: expert q is device q of the scenario wherever it
/// runs (an expert on the BS rank too: the BS then holds on its own
/// stream), with link `rates[q]`, carrying `payload_bits` per row (eq. 5)
/// one way and back; links work in parallel, so a rank holds for its
/// slowest served expert in each direction. A served expert over a link of
/// rate 0 is an error.
pub fn holds_ns(
    placement: &Placement,
    counts: &[u32],
    rates: &[LinkRates],
    payload_bits: f64,
) -> Result<Vec<(u64, u64)>> {
    let n = placement.n_experts();
    if counts.len() != n || rates.len() != n {
        return Err(Error::Dist {
            op: "holds_ns",
            detail: format!(
                "{} counts and {} link rates for {n} experts",
                counts.len(),
                rates.len()
            ),
        });
    }
    let mut out = vec![(0u64, 0u64); placement.world()];
    for q in 0..n {
        let r = placement.rank_of(q);
        if counts[q] == 0 {
            continue;
        }
        let bits = payload_bits * counts[q] as f64;
        let down = airtime_s(bits, rates[q].down_bps)?;
        let up = airtime_s(bits, rates[q].up_bps)?;
        if !(down.is_finite() && up.is_finite()) {
            return Err(Error::Dist {
                op: "holds_ns",
                detail: format!("expert {q} serves {} rows over a link of rate 0", counts[q]),
            });
        }
        let ns = |s: f64| (s * 1e9).round() as u64;
        out[r].0 = out[r].0.max(ns(down));
        out[r].1 = out[r].1.max(ns(up));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wdmoe_core::latency::{DeviceLink, LatencyModel};

    #[test]
    fn step_plan_orders_rows_by_rank_then_expert_and_skips_dropped_experts() {
        // 4 experts: 0 and 2 on the BS, 1 and 3 on rank 1; expert 2 dropped.
        let p = Placement::parse("0:0,2;1:1,3", 4, 2).unwrap();
        let groups = vec![
            vec![(0, 0.7f32), (2, 1.0)],
            vec![(0, 0.3), (1, 0.6)],
            vec![],
            vec![(1, 0.4)],
        ];
        let plan = StepPlan::new(&p, 3, &groups).unwrap();
        // Travel order: expert 0 (BS), 2 (BS, none), 1, 3.
        assert_eq!(plan.tables.idx, vec![0, 2, 0, 1, 1]);
        assert_eq!(plan.blocks, vec![(0, 2), (2, 3)]);
        assert_eq!(plan.counts, vec![2, 2, 0, 1]);
        // Token 0: row 0 (w 0.7) and row 2 (w 0.3).
        assert_eq!(&plan.tables.slot[0..2], &[0, 2]);
        assert_eq!(&plan.tables.wts[0..2], &[0.7, 0.3]);
        assert_eq!(
            rank_segments(&p, 1, &plan.counts),
            vec![(1, 0, 2), (3, 2, 1)]
        );
        assert_eq!(rank_segments(&p, 0, &plan.counts), vec![(0, 0, 2)]);
        let h = plan.header(1, 7, 3, (1500, 2_000_000_000_123));
        let w = h.encode();
        assert_eq!(Header::decode(&w, &p, 1).unwrap(), h);
        assert!(StepPlan::new(&p, 3, &groups[..3]).is_err());
        assert!(StepPlan::new(&p, 2, &groups).is_err(), "token 2 of 2");
    }

    #[test]
    fn header_decode_rejects_what_does_not_fit_the_placement() {
        let p = Placement::parse("1:0-3;2:4-7", 8, 3).unwrap();
        let groups: Vec<Vec<(usize, f32)>> = (0..8)
            .map(|q| if q < 2 { vec![(0, 0.5)] } else { vec![] })
            .collect();
        let plan = StepPlan::new(&p, 1, &groups).unwrap();
        let mut w = plan.header(1, 0, 0, (0, 0)).encode();
        assert!(Header::decode(&w, &p, 1).is_ok());
        assert!(
            Header::decode(&w, &p, 2).is_err(),
            "rank 2 has no rows, header says 2"
        );
        w[0] ^= 1;
        assert!(Header::decode(&w, &p, 1).is_err());
        w[0] ^= 1;
        w[1] = 9;
        assert!(Header::decode(&w, &p, 1).is_err());
        w[1] = 1;
        w[4] = 7;
        assert!(Header::decode(&w, &p, 1).is_err());
        assert!(Header::decode(&w[..5], &p, 1).is_err());
        let stop = Header {
            cmd: Command::Stop,
            seq: 0,
            layer: 0,
            n_experts: 8,
            rows: 0,
            hold_down_ns: 0,
            hold_up_ns: 0,
            counts: vec![0; 8],
        };
        assert_eq!(
            Header::decode(&stop.encode(), &p, 2).unwrap().cmd,
            Command::Stop
        );
    }

    #[test]
    fn holds_are_eq6_link_terms_of_wdmoe_core() {
        // One row each way over a device link: down + compute + up must be
        // wdmoe-core's eq. (6) for that link.
        let model = LatencyModel::new(65_536.0_f64, 352_393_216.0, 1e-21).unwrap();
        let dev = DeviceLink::new(1.0, 1e-9, 0.1, 1e-9, 1e12).unwrap();
        let bw = 1e6;
        let (rd, ru) = model.rates_bps(&dev, bw).unwrap();
        let eq6 = model.expert_latency_s(&dev, bw).unwrap();
        let down = airtime_s(65_536.0, rd).unwrap();
        let up = airtime_s(65_536.0, ru).unwrap();
        let compute = 352_393_216.0 / 1e12;
        assert!(
            (down + compute + up - eq6).abs() <= 1e-15 * eq6,
            "{down} {up} {eq6}"
        );
        assert_eq!(airtime_s(65_536.0, 0.0).unwrap(), f64::INFINITY);
        assert!(airtime_s(65_536.0, f64::NAN).is_err());

        // Rank 1 hosts experts 0, 1; rank 2 expert 2; the BS expert 3.
        let p = Placement::parse("1:0,1;2:2;0:3", 4, 3).unwrap();
        let rates = [
            LinkRates {
                down_bps: 1e8,
                up_bps: 1e7,
            },
            LinkRates {
                down_bps: 5e7,
                up_bps: 2e7,
            },
            LinkRates {
                down_bps: 1e9,
                up_bps: 0.0,
            },
            LinkRates {
                down_bps: 1.0,
                up_bps: 1.0,
            },
        ];
        let h = holds_ns(&p, &[1, 2, 0, 4], &rates, 65_536.0).unwrap();
        // Rank 1: expert 0 (1 row) down 655.36 µs, up 6553.6 µs; expert 1 (2
        // rows) down 2621.44 µs, up 6553.6 µs: the slower of each.
        assert_eq!(h[1], (2_621_440, 6_553_600));
        assert_eq!(h[2], (0, 0), "expert 2 serves nothing");
        // The BS's expert 3: 4 rows at 1 bit/s each way.
        assert_eq!(h[0], (262_144_000_000_000, 262_144_000_000_000));
        let e = holds_ns(&p, &[0, 0, 1, 0], &rates, 65_536.0).unwrap_err();
        assert!(e.to_string().contains("rate 0"), "{e}");
        assert!(holds_ns(&p, &[0, 0, 1], &rates, 65_536.0).is_err());
    }
}

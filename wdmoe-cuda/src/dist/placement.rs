//! Which rank hosts which expert (the same experts of every layer), validated.
//!
//! Rank 0 is the base station (BS: attention, router, policy, combine); ranks
//! `1..world` are devices. The BS may host experts too (their emulated
//! links are then held on the BS's stream, see `plan::holds_ns`). Spec text (`--placement`): `RANK:EXPERTS;RANK:EXPERTS…`
//! with EXPERTS a comma list of ids and ranges, e.g. `1:0-3;2:4-7`; or
//! `spread` (experts round-robin over the device ranks) or `spread-bs` (over
//! all ranks, the BS included).

use std::fmt;

/// Rank of the base station.
pub const BS_RANK: usize = 0;

/// What is wrong with a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// Fewer than 2 ranks (a BS and at least one device).
    TooFewRanks {
        /// Ranks given.
        world: usize,
    },
    /// No experts, or more than the kernels support.
    ExpertCount {
        /// Experts given.
        n_experts: usize,
        /// The most supported.
        max: usize,
    },
    /// A rank outside `0..world`.
    RankOutOfRange {
        /// The rank named.
        rank: usize,
        /// Ranks in all.
        world: usize,
    },
    /// An expert id outside `0..n_experts`.
    ExpertOutOfRange {
        /// The id named.
        expert: usize,
        /// Experts in all.
        n_experts: usize,
    },
    /// An expert no rank hosts.
    Nowhere {
        /// The expert.
        expert: usize,
    },
    /// An expert placed on two ranks (or twice on one).
    Twice {
        /// The expert.
        expert: usize,
        /// Its first rank.
        first: usize,
        /// The second.
        second: usize,
    },
    /// Spec text that does not parse.
    Parse {
        /// The text.
        spec: String,
        /// Why.
        detail: String,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFewRanks { world } => write!(
                f,
                "placement needs at least 2 ranks (the BS and a device), got {world}"
            ),
            Self::ExpertCount { n_experts, max } => {
                write!(f, "placement of {n_experts} experts (1..={max})")
            }
            Self::RankOutOfRange { rank, world } => {
                write!(f, "placement names rank {rank}, ranks are 0..{world}")
            }
            Self::ExpertOutOfRange { expert, n_experts } => {
                write!(
                    f,
                    "placement names expert {expert}, experts are 0..{n_experts}"
                )
            }
            Self::Nowhere { expert } => write!(f, "placement leaves expert {expert} on no rank"),
            Self::Twice {
                expert,
                first,
                second,
            } => write!(
                f,
                "placement puts expert {expert} on rank {first} and again on rank {second}"
            ),
            Self::Parse { spec, detail } => write!(f, "placement {spec:?}: {detail}"),
        }
    }
}

impl std::error::Error for PlacementError {}

impl From<PlacementError> for crate::Error {
    fn from(e: PlacementError) -> Self {
        crate::Error::Dist {
            op: "placement",
            detail: e.to_string(),
        }
    }
}

/// Expert → rank, for `world` ranks. Built only through validating
/// constructors: every expert is on exactly one rank in range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    world: usize,
    rank_of: Vec<usize>,
}

impl Placement {
    /// From per-rank expert lists: `(rank, experts)`; a rank may appear
    /// once or not at all (then it hosts nothing).
    pub fn new(
        n_experts: usize,
        world: usize,
        lists: &[(usize, Vec<usize>)],
    ) -> Result<Placement, PlacementError> {
        check_counts(n_experts, world)?;
        let mut rank_of: Vec<Option<usize>> = vec![None; n_experts];
        for (rank, experts) in lists {
            if *rank >= world {
                return Err(PlacementError::RankOutOfRange { rank: *rank, world });
            }
            for &q in experts {
                let slot = rank_of.get_mut(q).ok_or(PlacementError::ExpertOutOfRange {
                    expert: q,
                    n_experts,
                })?;
                if let Some(first) = *slot {
                    return Err(PlacementError::Twice {
                        expert: q,
                        first,
                        second: *rank,
                    });
                }
                *slot = Some(*rank);
            }
        }
        let rank_of = rank_of
            .iter()
            .enumerate()
            .map(|(q, r)| r.ok_or(PlacementError::Nowhere { expert: q }))
            .collect::<Result<_, _>>()?;
        Ok(Placement { world, rank_of })
    }

    /// Experts round-robin: over the device ranks `1..world`, or with
    /// `with_bs` over all ranks (`q % world`).
    pub fn spread(
        n_experts: usize,
        world: usize,
        with_bs: bool,
    ) -> Result<Placement, PlacementError> {
        check_counts(n_experts, world)?;
        let rank_of = (0..n_experts)
            .map(|q| {
                if with_bs {
                    q % world
                } else {
                    1 + q % (world - 1)
                }
            })
            .collect();
        Ok(Placement { world, rank_of })
    }

    /// Parses spec text (see the module doc).
    pub fn parse(spec: &str, n_experts: usize, world: usize) -> Result<Placement, PlacementError> {
        let t = spec.trim();
        match t {
            "spread" => return Self::spread(n_experts, world, false),
            "spread-bs" => return Self::spread(n_experts, world, true),
            _ => {}
        }
        let perr = |detail: String| PlacementError::Parse {
            spec: spec.to_string(),
            detail,
        };
        let num = |s: &str, what: &str| -> Result<usize, PlacementError> {
            s.trim()
                .parse::<usize>()
                .map_err(|_| perr(format!("{what} {:?} is not a number", s.trim())))
        };
        let mut lists = Vec::new();
        for part in t.split(';').filter(|p| !p.trim().is_empty()) {
            let (rank, experts) = part
                .split_once(':')
                .ok_or_else(|| perr(format!("{:?} is not RANK:EXPERTS", part.trim())))?;
            let rank = num(rank, "rank")?;
            let mut list = Vec::new();
            for item in experts.split(',').filter(|i| !i.trim().is_empty()) {
                if let Some((a, b)) = item.split_once('-') {
                    let (a, b) = (num(a, "expert")?, num(b, "expert")?);
                    if a > b {
                        return Err(perr(format!("empty range {a}-{b}")));
                    }
                    list.extend(a..=b);
                } else {
                    list.push(num(item, "expert")?);
                }
            }
            lists.push((rank, list));
        }
        if lists.is_empty() {
            return Err(perr("no RANK:EXPERTS part".into()));
        }
        Self::new(n_experts, world, &lists)
    }

    /// Ranks in all.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Experts in all.
    pub fn n_experts(&self) -> usize {
        self.rank_of.len()
    }

    /// The rank of expert `q` (`q < n_experts`).
    pub fn rank_of(&self, q: usize) -> usize {
        self.rank_of[q]
    }

    /// The experts of `rank`, ascending.
    pub fn experts_on(&self, rank: usize) -> Vec<usize> {
        (0..self.rank_of.len())
            .filter(|&q| self.rank_of[q] == rank)
            .collect()
    }

    /// All experts in the order their rows travel: by rank, then id.
    pub fn send_order(&self) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.rank_of.len()).collect();
        o.sort_by_key(|&q| (self.rank_of[q], q));
        o
    }

    /// The spec text of this placement (parses back to it).
    pub fn spec(&self) -> String {
        (0..self.world)
            .filter_map(|r| {
                let e = self.experts_on(r);
                (!e.is_empty()).then(|| {
                    let list: Vec<String> = e.iter().map(|q| q.to_string()).collect();
                    format!("{r}:{}", list.join(","))
                })
            })
            .collect::<Vec<_>>()
            .join(";")
    }
}

fn check_counts(n_experts: usize, world: usize) -> Result<(), PlacementError> {
    if world < 2 {
        return Err(PlacementError::TooFewRanks { world });
    }
    let max = crate::moe::MAX_EXPERTS;
    if n_experts == 0 || n_experts > max {
        return Err(PlacementError::ExpertCount { n_experts, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_lists_and_round_trips() {
        let p = Placement::parse("1:0-3; 2:4,5 ,6-7", 8, 3).unwrap();
        assert_eq!(
            (0..8).map(|q| p.rank_of(q)).collect::<Vec<_>>(),
            vec![1, 1, 1, 1, 2, 2, 2, 2]
        );
        assert_eq!(p.experts_on(0), Vec::<usize>::new());
        assert_eq!(p.experts_on(2), vec![4, 5, 6, 7]);
        assert_eq!(p.spec(), "1:0,1,2,3;2:4,5,6,7");
        assert_eq!(Placement::parse(&p.spec(), 8, 3).unwrap(), p);
        // The BS may host experts; the send order is by rank, then id.
        let p = Placement::parse("1:1,3,5,7;0:0,2,4,6", 8, 2).unwrap();
        assert_eq!(p.send_order(), vec![0, 2, 4, 6, 1, 3, 5, 7]);
    }

    #[test]
    fn spread_puts_experts_round_robin() {
        let p = Placement::spread(8, 3, false).unwrap();
        assert_eq!(p.experts_on(1), vec![0, 2, 4, 6]);
        assert_eq!(p.experts_on(2), vec![1, 3, 5, 7]);
        assert!(p.experts_on(0).is_empty());
        let p = Placement::spread(8, 8, false).unwrap();
        assert_eq!(p.rank_of(7), 1, "7 device ranks: expert 7 wraps to rank 1");
        let p = Placement::spread(8, 2, true).unwrap();
        assert_eq!(p.experts_on(0), vec![0, 2, 4, 6]);
        let p = Placement::parse("spread", 8, 9).unwrap();
        assert_eq!(
            (0..8).map(|q| p.rank_of(q)).collect::<Vec<_>>(),
            (1..9).collect::<Vec<_>>()
        );
    }

    #[test]
    fn invalid_placements_are_named() {
        use PlacementError::*;
        assert_eq!(Placement::parse("1:0-6", 8, 2), Err(Nowhere { expert: 7 }));
        assert_eq!(
            Placement::parse("1:0-7;2:3", 8, 3),
            Err(Twice {
                expert: 3,
                first: 1,
                second: 2
            })
        );
        assert_eq!(
            Placement::parse("1:0-3;1:3", 8, 2),
            Err(Twice {
                expert: 3,
                first: 1,
                second: 1
            })
        );
        assert_eq!(
            Placement::parse("2:0-7", 8, 2),
            Err(RankOutOfRange { rank: 2, world: 2 })
        );
        assert_eq!(
            Placement::parse("1:0-8", 8, 2),
            Err(ExpertOutOfRange {
                expert: 8,
                n_experts: 8
            })
        );
        assert_eq!(
            Placement::spread(8, 1, false),
            Err(TooFewRanks { world: 1 })
        );
        assert!(matches!(
            Placement::spread(0, 2, false),
            Err(ExpertCount { n_experts: 0, .. })
        ));
        for bad in ["", "1", "x:0", "1:a", "1:5-2"] {
            let e = Placement::parse(bad, 8, 2).unwrap_err();
            assert!(matches!(e, Parse { .. }), "{bad:?}: {e}");
        }
        let msg = Placement::parse("1:0-6", 8, 2).unwrap_err().to_string();
        assert!(msg.contains("expert 7 on no rank"), "{msg}");
        let e: crate::Error = Placement::parse("1:0-6", 8, 2).unwrap_err().into();
        assert!(e.to_string().contains("expert 7"), "{e}");
    }
}

//! Multiple choice by log-likelihood, as lm-evaluation-harness scores it.
//!
//! # Format
//! JSON Lines, one item per line (blank lines skipped, other keys ignored):
//! `{"context": "…", "choices": ["…", …], "label": 2}` with text through the
//! checkpoint's `tokenizer.json`, or, for a model without a tokenizer,
//! `{"context_ids": [1, 5, …], "choices_ids": [[7, 9], [8], …], "label": 0}`.
//! `label` is the index of the right choice.
//!
//! # Scoring
//! Text items: context tokens = `[bos] + encode(context)` (`bos_token_id`
//! of config.json, when it has one; `encode` never adds special tokens
//! itself, so a tokenizer that would add its own BOS does not add a
//! second), and each choice's continuation either
//! * [`Continuation::Separate`] (default): `encode(choice)`, tokenised on
//!   its own (a choice carries its own leading space, `" Paris"`): the
//!   protocol of the tiny model's card (`models/train`), right for
//!   byte-level BPE tokenizers; or
//! * [`Continuation::Joint`]: lm-evaluation-harness's split, for
//!   SentencePiece tokenizers such as Mixtral's that add a word-start
//!   marker to whatever they encode: trailing whitespace of the context
//!   moves to the choice, then the continuation is `encode(context +
//!   choice)` past the first `len(encode(context))` tokens.
//!
//! Id items: the ids as given. The
//! log-likelihood of a choice is the sum over its continuation tokens of
//! the log-softmax (f64) of the model's logits at the position before each;
//! `acc` picks the choice with the largest sum, `acc_norm` the largest sum
//! divided by the choice's UTF-8 byte length (id items: its token count);
//! ties go to the first such choice. The context runs once per item and
//! its KV cache is reused for every choice.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{log_softmax_at, wilson_95, LatencySource, RoutingRow, RoutingTotals};
use crate::model::{Backend, ExpertLatency, Logits, Model, MoeConfig};
use crate::progress::Progress;

/// How a text choice is tokenised (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Continuation {
    /// `encode(choice)` on its own.
    #[default]
    Separate,
    /// `encode(context + choice)` past the context's tokens (lm-evaluation-harness).
    Joint,
}

/// One item, tokenised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceItem {
    /// Context tokens (at least one).
    pub context: Vec<u32>,
    /// Continuation tokens of every choice (each at least one).
    pub choices: Vec<Vec<u32>>,
    /// Length of every choice for acc_norm: UTF-8 bytes (text) or tokens (ids).
    pub lengths: Vec<usize>,
    /// Index of the right choice.
    pub label: usize,
}

#[derive(Deserialize)]
struct RawItem {
    context: Option<String>,
    choices: Option<Vec<String>>,
    context_ids: Option<Vec<u32>>,
    choices_ids: Option<Vec<Vec<u32>>>,
    label: i64,
}

/// Parses a JSONL task file's text (`path` names it in errors: `FILE:LINE:`).
/// Text items need `model`'s tokenizer; `split` says how their choices are
/// tokenised.
pub fn parse_items(
    text: &str,
    path: &Path,
    model: &Model,
    split: Continuation,
) -> Result<Vec<ChoiceItem>, String> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let raw: RawItem = serde_json::from_str(line).map_err(|e| format!("{at}: {e}"))?;
        let (context, choices, lengths) = match (raw.context, raw.choices, raw.context_ids, raw.choices_ids) {
            (Some(ctx), Some(ch), None, None) => {
                let tok = model.tokenizer().ok_or_else(|| {
                    format!(
                        "{at}: text items need {}; give context_ids/choices_ids instead",
                        model.dir().join("tokenizer.json").display()
                    )
                })?;
                let enc = |s: &str| tok.encode_plain(s).map_err(|e| format!("{at}: {e}"));
                let mut context: Vec<u32> = model.config().bos_token_id.into_iter().collect();
                let lengths = ch.iter().map(|c| c.len()).collect();
                let choices = match split {
                    Continuation::Separate => {
                        context.extend(enc(&ctx)?);
                        ch.iter().map(|c| enc(c)).collect::<Result<Vec<_>, _>>()?
                    }
                    Continuation::Joint => {
                        let trimmed = ctx.trim_end();
                        let moved = &ctx[trimmed.len()..];
                        let ctx_ids = enc(trimmed)?;
                        let conts = ch
                            .iter()
                            .map(|c| {
                                let whole = enc(&format!("{trimmed}{moved}{c}"))?;
                                Ok(whole[ctx_ids.len().min(whole.len())..].to_vec())
                            })
                            .collect::<Result<Vec<_>, String>>()?;
                        context.extend(ctx_ids);
                        conts
                    }
                };
                (context, choices, lengths)
            }
            (None, None, Some(ctx), Some(ch)) => {
                let lengths = ch.iter().map(Vec::len).collect();
                (ctx, ch, lengths)
            }
            _ => {
                return Err(format!(
                    "{at}: an item has \"context\" and \"choices\" (text) or \"context_ids\" and \"choices_ids\" (token ids)"
                ))
            }
        };
        if context.is_empty() {
            return Err(format!(
                "{at}: the context has no token (and the config no bos_token_id)"
            ));
        }
        if choices.len() < 2 {
            return Err(format!(
                "{at}: {} choice(s); at least 2 are needed",
                choices.len()
            ));
        }
        if let Some(c) = choices.iter().position(Vec::is_empty) {
            return Err(format!("{at}: choice {c} has no token"));
        }
        let label = usize::try_from(raw.label)
            .ok()
            .filter(|&l| l < choices.len())
            .ok_or_else(|| {
                format!(
                    "{at}: label {} is not a choice index (0..{})",
                    raw.label,
                    choices.len()
                )
            })?;
        let v = model.config().vocab_size;
        if let Some(&id) = context
            .iter()
            .chain(choices.iter().flatten())
            .find(|&&id| id as usize >= v)
        {
            return Err(format!(
                "{at}: token id {id} is outside the vocabulary ({v})"
            ));
        }
        items.push(ChoiceItem {
            context,
            choices,
            lengths,
            label,
        });
    }
    if items.is_empty() {
        return Err(format!("{}: no item", path.display()));
    }
    Ok(items)
}

/// The scores of one item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemScore {
    /// Log-likelihood of every choice \[nats\].
    pub log_likelihoods: Vec<f64>,
    /// argmax of the log-likelihoods.
    pub pred: usize,
    /// argmax of the log-likelihoods per unit of length.
    pub pred_norm: usize,
}

fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Scores one item (see the module docs) under `moe` with the latencies
/// `latency` (the same for every choice's positions).
pub fn score_item(
    model: &mut dyn Backend,
    item: &ChoiceItem,
    moe: &MoeConfig,
    latency: &mut dyn ExpertLatency,
    totals: &mut RoutingTotals,
) -> Result<ItemScore, String> {
    let v = model.config().vocab_size;
    model.truncate(0);
    let ctx = model
        .forward(&item.context, moe, latency, Logits::Last)
        .map_err(|e| e.to_string())?;
    let base = model.cached();
    totals.add(&ctx)?;
    let mut lls = Vec::with_capacity(item.choices.len());
    for cont in &item.choices {
        model.truncate(base);
        let out = model
            .forward(cont, moe, latency, Logits::All)
            .map_err(|e| e.to_string())?;
        totals.add(&out)?;
        let mut ll = log_softmax_at(&ctx.logits, cont[0]);
        for (i, &t) in cont.iter().enumerate().skip(1) {
            ll += log_softmax_at(&out.logits[(i - 1) * v..i * v], t);
        }
        lls.push(ll);
    }
    Ok(ItemScore {
        pred: argmax(lls.iter().copied()),
        pred_norm: argmax(
            lls.iter()
                .zip(&item.lengths)
                .map(|(ll, &n)| ll / n.max(1) as f64),
        ),
        log_likelihoods: lls,
    })
}

/// One θ's choice accuracy and routing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceRow {
    /// WDMoE threshold θ (0: plain top-k).
    pub theta: f64,
    /// Items scored.
    pub items: usize,
    /// Accuracy (argmax of the log-likelihood).
    pub acc: f64,
    /// 95 % Wilson interval of `acc`, low end.
    pub acc_ci95_lo: f64,
    /// 95 % Wilson interval of `acc`, high end.
    pub acc_ci95_hi: f64,
    /// Length-normalised accuracy.
    pub acc_norm: f64,
    /// 95 % Wilson interval of `acc_norm`, low end.
    pub acc_norm_ci95_lo: f64,
    /// 95 % Wilson interval of `acc_norm`, high end.
    pub acc_norm_ci95_hi: f64,
    /// Routing and simulated latency.
    #[serde(flatten)]
    pub routing: RoutingRow,
}

/// Scores every item under `moe`; item `i` draws its latencies as sequence
/// `i` of `latency`. Returns the row and the per-item scores.
pub fn evaluate(
    model: &mut dyn Backend,
    items: &[ChoiceItem],
    moe: &MoeConfig,
    latency: &LatencySource<'_>,
    totals: &mut RoutingTotals,
    progress: &Progress,
) -> Result<(ChoiceRow, Vec<ItemScore>), String> {
    let mut scores = Vec::with_capacity(items.len());
    let (mut hits, mut hits_norm) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let mut lat = latency.for_sequence(i as u64).map_err(|e| e.to_string())?;
        let s = score_item(model, item, moe, lat.as_mut(), totals)
            .map_err(|e| format!("item {i}: {e}"))?;
        hits += (s.pred == item.label) as usize;
        hits_norm += (s.pred_norm == item.label) as usize;
        scores.push(s);
        progress.tick();
    }
    let n = items.len();
    let (lo, hi) = wilson_95(hits, n);
    let (nlo, nhi) = wilson_95(hits_norm, n);
    let row = ChoiceRow {
        theta: moe.policy.theta(),
        items: n,
        acc: hits as f64 / n.max(1) as f64,
        acc_ci95_lo: lo,
        acc_ci95_hi: hi,
        acc_norm: hits_norm as f64 / n.max(1) as f64,
        acc_norm_ci95_lo: nlo,
        acc_norm_ci95_hi: nhi,
        routing: totals.row(),
    };
    Ok((row, scores))
}

#!/usr/bin/env python3
"""Train wdmoe-tiny-mixtral: a small Mixtral-architecture MoE (8 experts,
top-2) with its own byte-level BPE tokenizer, on the Python 3.11
documentation (models/train/make_corpus.sh), with a held-out split.

    bash models/train/make_corpus.sh                   # -> .corpus/python-3.11-docs.jsonl
    python3 models/train/train_tiny_mixtral.py .corpus/python-3.11-docs.jsonl OUT_DIR [SECONDS]

Needs PyTorch, transformers 5 and tokenizers, and a CUDA GPU (it ran on one
H200 in about six minutes). Writes to OUT_DIR: the weights in the Hugging
Face hub layout (bf16, two shards + index), config.json, tokenizer.json,
train_log.json, and two evaluation files made from the held-out split only:
heldout.txt (test text for perplexity) and heldout-choice.jsonl (a four-way
next-sentence choice task in the format of `wdmoe eval choice`).

Recipe (fixed, not tuned to any target): the source files are split by the
SHA-1 of their path mod 20: 0 = test (heldout.txt, heldout-choice.jsonl and
every reported figure; never seen in training or checkpoint choice), 1 =
validation (checkpoint choice), the rest = training; BPE vocabulary 4096
trained on the training split; sequences of 256 tokens; AdamW (lr 1e-3, betas 0.9/0.95, weight decay
0.1), 200 warm-up steps then cosine to 10 %; batch 32 sequences; bf16
autocast; Mixtral's load-balancing loss with coefficient 0.02; a wall-clock
budget (default 150 s; the cosine spans 3000 steps) instead of a step count;
the checkpoint with the best validation loss (checked every 200 steps) is the
one exported. A first 450 s run showed the validation loss bottoming out near
step 2000 (about 5 epochs over 3 M tokens) and rising after: the model
overfits a corpus this small, hence the short budget and the checkpoint
choice.
"""

import hashlib
import json
import math
import os
import random
import re
import sys
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import MixtralConfig, MixtralForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "wdmoe-sim", "scripts"))
from make_hf_fixtures import hub_state_dict, round_to, write_weights  # noqa: E402

SEQ = 256
BATCH = 32
VOCAB = 4096
SPECIALS = ["<unk>", "<s>", "</s>"]
SMOKE_WINDOWS = int(os.environ.get("WDMOE_TRAIN_SMOKE_WINDOWS", "0"))  # >0: smoke test
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: smoke tests only


def split(docs):
    """train / validation (checkpoint choice) / test (every reported figure)."""
    train, val, test = [], [], []
    for d in docs:
        h = int(hashlib.sha1(d["path"].encode()).hexdigest(), 16) % 20
        (test if h == 0 else val if h == 1 else train).append(d)
    return train, val, test


def train_tokenizer(texts):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def stream(tok, docs):
    ids = []
    for d in docs:
        ids.append(1)
        ids.extend(tok.encode(d["text"]).ids)
        ids.append(2)
    return torch.tensor(ids, dtype=torch.long)


def heldout_loss(model, data, max_windows=64):
    model.eval()
    n = min(max_windows, (len(data) - 1) // SEQ)
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16):
        for i in range(0, n, 16):
            rows = [data[j * SEQ:(j + 1) * SEQ] for j in range(i, min(n, i + 16))]
            x = torch.stack(rows).to(DEV)
            out = model(x, labels=x, output_router_logits=False)
            total += float(out.loss) * len(rows)
            count += len(rows)
    model.train()
    return total / count


SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def prose_paragraphs(text):
    """Paragraphs of plain prose (no directives, code or tables)."""
    for para in text.split("\n\n"):
        p = " ".join(line.strip() for line in para.splitlines())
        if len(p) < 200 or any(c in p for c in ("::", "..", "|", ">>>", "==", "**", "``")):
            continue
        yield p


def choice_items(held, rng, n_items=200):
    sents, paras = [], []
    for d in held:
        for p in prose_paragraphs(d["text"]):
            s = SENT.split(p)
            if len(s) >= 3:
                paras.append(s)
            sents.extend(x for x in s if 30 <= len(x) <= 200)
    rng.shuffle(paras)
    items = []
    for s in paras:
        cut = rng.randrange(1, len(s) - 1)
        context, true = " ".join(s[:cut]), s[cut]
        if not (30 <= len(true) <= 200):
            continue
        distract = []
        while len(distract) < 3:
            c = rng.choice(sents)
            if c != true and c not in distract:
                distract.append(c)
        choices = distract + [true]
        rng.shuffle(choices)
        items.append({"context": context, "choices": [" " + c for c in choices],
                      "label": choices.index(true)})
        if len(items) == n_items:
            break
    return items


def choice_accuracy(model, tok, items):
    """Log-likelihood multiple choice as `wdmoe eval choice` scores it:
    context = <s> + encode(context), continuation = encode(choice); acc picks
    the largest summed log-probability of the continuation tokens, acc_norm
    the largest per UTF-8 byte of the choice."""
    hits = hits_norm = 0
    with torch.no_grad():
        for it in items:
            ctx = [1] + tok.encode(it["context"]).ids
            scores, norms = [], []
            for c in it["choices"]:
                cont = tok.encode(c).ids
                x = torch.tensor([ctx + cont], device=DEV)
                logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
                ll = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
                scores.append(ll)
                norms.append(ll / len(c.encode("utf-8")))
            hits += scores.index(max(scores)) == it["label"]
            hits_norm += norms.index(max(norms)) == it["label"]
    return hits / len(items), hits_norm / len(items)


def main():
    corpus, out = sys.argv[1], sys.argv[2]
    budget_s = float(sys.argv[3]) if len(sys.argv) > 3 else 150.0
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    rng = random.Random(0)
    t0 = time.time()
    docs = [json.loads(line) for line in open(corpus, encoding="utf-8")]
    train_docs, val_docs, held_docs = split(docs)
    tok = train_tokenizer(d["text"] for d in train_docs)
    tok.save(os.path.join(out, "tokenizer.json"))
    train_ids, val_ids, held_ids = (stream(tok, d) for d in (train_docs, val_docs, held_docs))
    print(f"docs train {len(train_docs)} validation {len(val_docs)} test {len(held_docs)}; tokens"
          f" train {len(train_ids)} validation {len(val_ids)} test {len(held_ids)};"
          f" tokenizer {time.time() - t0:.0f} s", flush=True)

    cfg = dict(architectures=["MixtralForCausalLM"], model_type="mixtral", hidden_act="silu",
               vocab_size=VOCAB, hidden_size=256, intermediate_size=384, num_hidden_layers=4,
               num_attention_heads=8, num_key_value_heads=4, head_dim=32,
               max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-5,
               num_local_experts=8, num_experts_per_tok=2, router_jitter_noise=0.0,
               router_aux_loss_coef=0.02, tie_word_embeddings=True, sliding_window=None,
               attention_dropout=0.0, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    config = MixtralConfig.from_pretrained(out)
    config.output_router_logits = True
    model = MixtralForCausalLM(config).to(DEV).train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), fused=DEV == "cuda")
    est_steps = 3000  # the cosine's length; the time budget usually ends first
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / est_steps)))))

    n_train = (len(train_ids) - 1) // SEQ
    log, best, best_state, step = [], float("inf"), None, 0
    start = time.time()
    while time.time() - start < budget_s:
        idx = torch.randint(0, n_train, (BATCH,))
        x = torch.stack([train_ids[i * SEQ:(i + 1) * SEQ] for i in idx.tolist()]).to(DEV)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            out_ = model(x, labels=x)
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        last = time.time() - start >= budget_s
        if step % 200 == 0 or last:
            h = heldout_loss(model, val_ids)
            log.append({"step": step, "seconds": round(time.time() - start, 1),
                        "train_loss": round(float(out_.loss.detach()), 4),
                        "validation_loss": round(h, 4)})
            print(log[-1], flush=True)
            if h < best:
                best = h
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model = model.float().eval()
    round_to(model, torch.bfloat16)
    write_weights(out, hub_state_dict(model, torch.bfloat16), 2)

    reread = MixtralForCausalLM.from_pretrained(out, dtype=torch.float32).to(DEV).eval()
    probe = held_ids[:SEQ].unsqueeze(0).to(DEV)
    with torch.no_grad():
        diff = float((model(probe, output_router_logits=False).logits
                      - reread(probe, output_router_logits=False).logits).abs().max())
    # held-out perplexity of the exported (bf16-rounded) weights, f32 compute,
    # every full 256-token window of the held-out stream
    total, count = 0.0, 0
    with torch.no_grad():
        for j in range(min(SMOKE_WINDOWS or 10**9, (len(held_ids) - 1) // SEQ)):
            x = held_ids[j * SEQ:(j + 1) * SEQ].unsqueeze(0).to(DEV)
            total += float(reread(x, labels=x, output_router_logits=False).loss) * (SEQ - 1)
            count += SEQ - 1
    ppl = math.exp(total / count)

    with open(os.path.join(out, "heldout.txt"), "w") as f:
        text = "\n\n".join(d["text"] for d in held_docs)
        f.write(text[:60000])
    items = choice_items(held_docs, rng)
    with open(os.path.join(out, "heldout-choice.jsonl"), "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    acc, acc_norm = choice_accuracy(reread, tok, items)
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump({"transformers_version": transformers.__version__,
                   "torch_version": torch.__version__, "gpu": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
                   "parameters": n_params, "steps": step, "budget_s": budget_s,
                   "tokens_seen": step * BATCH * SEQ, "train_tokens": len(train_ids),
                   "validation_tokens": len(val_ids), "test_tokens": len(held_ids), "train_docs": len(train_docs),
                   "validation_docs": [d["path"] for d in val_docs],
                   "test_docs": [d["path"] for d in held_docs],
                   "best_validation_loss_bf16_autocast": best,
                   "test_ppl_exported_f32_windows256": ppl,
                   "test_tokens_scored": count, "reload_max_abs_logit_diff": diff,
                   "choice_items": len(items), "test_choice_acc_top2": acc,
                   "test_choice_acc_norm_top2": acc_norm, "log": log}, f, indent=1)
    print(f"params {n_params}, steps {step}, test ppl {ppl:.3f}, reload diff {diff:.2e},"
          f" {len(items)} choice items (acc {acc:.3f}, acc_norm {acc_norm:.3f}), total {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()

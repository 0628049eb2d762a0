#!/usr/bin/env python3
"""Tiny random Mixtral checkpoints in the Hugging Face hub layout, with HF's
prompt logits and greedy tokens, for wdmoe's CPU model tests.

Run where PyTorch and transformers are installed (the project ran it with
transformers 5.17 on the GPU machine, on its CPU, in float32):

    python3 wdmoe-sim/scripts/make_hf_fixtures.py OUT_DIR

It writes OUT_DIR/<model>/{config.json, weights, cases.json, *.logits.npy}.

Why the hub names are written by hand: transformers 5 keeps a layer's experts
fused in memory (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`) and
converts the hub's per-expert tensors
(`block_sparse_moe.experts.E.{w1,w2,w3}.weight`) when it loads them. The
script writes the hub names from the in-memory model, reads the directory back
with `from_pretrained` and checks that the logits are the same, so the files
are exactly what HF reads from a hub checkpoint.

Cases:
- "top2": HF's own MoE block (softmax, top-2, renormalise).
- "wdmoe": HF's block with its router patched by `wdmoe_select` below, a
  float64 port of wdmoe-core's `select` (fixed per-expert latencies, the same
  for every token and layer). Dropped experts are given weight 0 in HF's
  top-k slots, so HF's own expert code computes the rest.

Greedy tokens are computed by recomputing the whole sequence at every step
(no cache): the reference for both the cached and uncached paths. A case is
kept only when its decisions are robust to float rounding: every greedy step's
top-1/top-2 logit margin, and every router decision's margins (top-k boundary,
kappa against theta), are above the thresholds below; otherwise the prompt is
redrawn. The smallest margins seen are written into cases.json.
"""

import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM

LOGIT_MARGIN = 2e-3  # relative to max |logit|: greedy argmax must not be a near-tie
ROUTER_MARGIN = 1e-4  # probability / kappa margins of routing decisions
NEW_TOKENS = 16


def wdmoe_select(logits, k, theta, max_drops, latency_s):
    """wdmoe-core's select in float64: returns (experts, weights, margin)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    p = e / e.sum()
    n = len(p)
    order = sorted(range(n), key=lambda i: (-p[i], i))
    margin = float("inf")
    if k < n:
        margin = min(margin, p[order[k - 1]] - p[order[k]])
    chosen = [i for i in order[:k] if math.isfinite(latency_s[i])]
    assert chosen, "fixtures use finite latencies"
    drops = 0
    while len(chosen) > 1 and (max_drops is None or drops < max_drops):
        wlr = {i: p[i] / latency_s[i] for i in chosen}
        lo, hi = min(wlr.values()), max(wlr.values())
        kappa = lo / (lo + hi)
        margin = min(margin, abs(kappa - theta))
        if kappa > theta:
            break
        victim = min(chosen, key=lambda i: (wlr[i], p[i], -i))
        chosen.remove(victim)
        drops += 1
    w = np.array([p[i] for i in chosen])
    return chosen, w / w.sum(), margin


class PolicyRouter:
    """Replaces a MixtralTopKRouter's forward with the WDMoE policy."""

    def __init__(self, router, k, theta, max_drops, latency_s, log):
        self.router, self.k, self.theta = router, k, theta
        self.max_drops, self.latency_s, self.log = max_drops, latency_s, log

    def __call__(self, hidden_states):
        r = self.router
        hs = hidden_states.reshape(-1, r.hidden_dim)
        logits = torch.nn.functional.linear(hs, r.weight)
        idx = torch.zeros((hs.shape[0], self.k), dtype=torch.long)
        wts = torch.zeros((hs.shape[0], self.k), dtype=torch.float32)
        for t in range(hs.shape[0]):
            experts, w, margin = wdmoe_select(
                logits[t].double().numpy(), self.k, self.theta, self.max_drops, self.latency_s
            )
            self.log.append((len(experts), margin))
            for s in range(self.k):
                # a dropped slot repeats the first survivor with weight 0
                idx[t, s] = experts[s] if s < len(experts) else experts[0]
                wts[t, s] = float(w[s]) if s < len(experts) else 0.0
        return logits, wts.to(hs.dtype), idx


def top2_margins(model, ids):
    """Router margins of HF's own top-k for every token and layer."""
    margins = []
    hooks = []
    for layer in model.model.layers:
        def hook(mod, inp, out, k=model.config.num_experts_per_tok):
            p = torch.softmax(out[0].double(), dim=-1)
            top = torch.topk(p, min(k + 1, p.shape[-1]), dim=-1).values
            if top.shape[-1] > k:
                margins.append(float((top[:, k - 1] - top[:, k]).min()))
        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return min(margins) if margins else float("inf")


def greedy(model, ids, steps):
    """Prompt logits, greedy tokens by full recomputation, smallest margin."""
    seq = list(ids)
    margin = float("inf")
    prompt_logits = None
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([seq])).logits[0].float()
            if prompt_logits is None:
                prompt_logits = logits.numpy().copy()
            last = logits[-1]
            top = torch.topk(last, 2).values
            margin = min(margin, float((top[0] - top[1]) / last.abs().max()))
            seq.append(int(last.argmax()))
    return prompt_logits, seq[len(ids):], margin


def init_weights(model, gen):
    """Random weights with enough scale that routing and greedy are decisive."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("gate.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 2.0 / math.sqrt(p.shape[-1]))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def round_to(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def hub_state_dict(model, dtype):
    """The hub's tensor names (per-expert w1/w2/w3, block_sparse_moe)."""
    out = {}
    tied = model.config.tie_word_embeddings
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        name = name.replace(".mlp.", ".block_sparse_moe.")
        if name.endswith("experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{base}{e}.w1.weight"] = t[e, :inter]
                out[f"{base}{e}.w3.weight"] = t[e, inter:]
        elif name.endswith("experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.w2.weight"] = t[e]
        else:
            out[name] = t
    return {k: v.to(dtype).contiguous().clone() for k, v in out.items()}


def write_weights(d, sd, shards):
    if shards == 1:
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(sd)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: sd[n] for n in part}, os.path.join(d, fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += sd[n].numel() * sd[n].element_size()
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


MODELS = [
    dict(name="gqa", dtype=torch.float32, shards=1, prompt_len=12, seed=1,
         config=dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                     max_position_embeddings=128, rope_theta=1000000.0, tie_word_embeddings=False,
                     sliding_window=None),
         wdmoe=dict(theta=0.2, max_drops=None,
                    latency_s=[0.010, 0.013, 0.020, 0.031, 0.045, 0.060, 0.090, 0.140])),
    dict(name="tied-bf16", dtype=torch.bfloat16, shards=3, prompt_len=23, seed=2,
         config=dict(vocab_size=288, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=4, head_dim=12,
                     max_position_embeddings=96, rope_theta=10000.0, tie_word_embeddings=True,
                     sliding_window=16),
         wdmoe=dict(theta=0.3, max_drops=1,
                    latency_s=[0.050, 0.012, 0.033, 0.020, 0.090, 0.015, 0.041, 0.027])),
    dict(name="f16", dtype=torch.float16, shards=1, prompt_len=9, seed=3,
         config=dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                     max_position_embeddings=64, rope_theta=1000000.0, tie_word_embeddings=False,
                     sliding_window=None),
         wdmoe=dict(theta=0.25, max_drops=None,
                    latency_s=[0.020, 0.020, 0.060, 0.011, 0.075, 0.030, 0.016, 0.110])),
]

DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def make(spec, root):
    d = os.path.join(root, spec["name"])
    os.makedirs(d, exist_ok=True)
    cfg = dict(architectures=["MixtralForCausalLM"], model_type="mixtral", hidden_act="silu",
               rms_norm_eps=1e-5, num_local_experts=8, num_experts_per_tok=2,
               router_jitter_noise=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
               torch_dtype=DTYPE_NAME[spec["dtype"]], **spec["config"])
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    config = MixtralConfig.from_pretrained(d)
    config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(spec["seed"])
    model = MixtralForCausalLM(config).float().eval()
    init_weights(model, gen)
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight, "embeddings not tied"
    round_to(model, spec["dtype"])
    rope = config.rope_parameters["rope_theta"]
    assert rope == spec["config"]["rope_theta"], ("rope_theta read back as", rope)
    write_weights(d, hub_state_dict(model, spec["dtype"]), spec["shards"])

    reread = MixtralForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    probe = torch.randint(3, config.vocab_size, (1, spec["prompt_len"]), generator=gen)
    with torch.no_grad():
        a, b = model(probe).logits, reread(probe).logits
    assert torch.equal(a, b), f"{spec['name']}: from_pretrained logits differ by {(a - b).abs().max()}"

    cases = []
    wd = spec["wdmoe"]
    for attempt in range(200):
        ids = torch.randint(3, config.vocab_size, (spec["prompt_len"],), generator=gen).tolist()
        # top-2: HF's own block
        logits, new_ids, lmargin = greedy(reread, ids, NEW_TOKENS)
        rmargin = min(top2_margins(reread, ids + new_ids[:-1]), float("inf"))
        if lmargin < LOGIT_MARGIN or rmargin < ROUTER_MARGIN:
            continue
        # WDMoE: the same model with the policy patched into every router
        log = []
        saved = [layer.mlp.gate.forward for layer in reread.model.layers]
        for layer in reread.model.layers:
            layer.mlp.gate.forward = PolicyRouter(layer.mlp.gate, config.num_experts_per_tok,
                                                  wd["theta"], wd["max_drops"], wd["latency_s"], log)
        w_logits, w_new, w_lmargin = greedy(reread, ids, NEW_TOKENS)
        for layer, fwd in zip(reread.model.layers, saved):
            layer.mlp.gate.forward = fwd
        w_rmargin = min(m for _, m in log)
        dropped = sum(1 for n, _ in log if n < config.num_experts_per_tok)
        if w_lmargin < LOGIT_MARGIN or w_rmargin < ROUTER_MARGIN or dropped == 0:
            continue
        np.save(os.path.join(d, "top2.logits.npy"), logits.astype(np.float32))
        np.save(os.path.join(d, "wdmoe.logits.npy"), w_logits.astype(np.float32))
        cases = [
            dict(name="top2", prompt_ids=ids, k=2, theta=0.0, max_drops=None, latency_s=None,
                 logits_npy="top2.logits.npy", greedy_new_ids=new_ids, max_new_tokens=NEW_TOKENS,
                 min_logit_margin_rel=lmargin, min_router_margin=rmargin),
            dict(name="wdmoe", prompt_ids=ids, k=2, theta=wd["theta"], max_drops=wd["max_drops"],
                 latency_s=wd["latency_s"], logits_npy="wdmoe.logits.npy", greedy_new_ids=w_new,
                 max_new_tokens=NEW_TOKENS, min_logit_margin_rel=w_lmargin,
                 min_router_margin=w_rmargin,
                 decisions_with_a_drop=dropped, decisions=len(log)),
        ]
        break
    assert cases, f"{spec['name']}: no prompt with robust margins"
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(dict(transformers_version=transformers.__version__,
                       torch_version=torch.__version__, model=spec["name"],
                       generator="wdmoe-sim/scripts/make_hf_fixtures.py",
                       prompt_attempts=attempt + 1, cases=cases), f, indent=1)
    print(spec["name"], "ok after", attempt + 1, "prompts; margins",
          [(c["min_logit_margin_rel"], c["min_router_margin"]) for c in cases])


def main():
    torch.set_num_threads(4)
    torch.backends.cuda.matmul.allow_tf32 = False
    root = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    for spec in MODELS:
        make(spec, root)


if __name__ == "__main__":
    main()

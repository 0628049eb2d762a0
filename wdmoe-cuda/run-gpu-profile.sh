#!/usr/bin/env bash
# Where the whole model's prefill time goes (issue 14): every kernel of a
# 2-layer model at Mixtral width timed alone by ncu (gpu__time_duration, the
# kernels serialised, caches as the previous kernel left them), summed per
# kernel name per forward and layer. From the repo root after
# wdmoe-cuda/gpu-build.sh (needs .device/model_bench[.gz]):
#   bash wdmoe-cuda/run-gpu-profile.sh [PROMPT=2048] [DECODE=0]
# With DECODE > 0 the model also decodes that many tokens after a 4-token
# prompt (per-launch averages then mix prefill and decode launches: read
# the launch counts).
set -uo pipefail
prompt=${1:-2048}
decode=${2:-0}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/.device"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
[ -f model_bench.gz ] && gunzip -f model_bench.gz
chmod +x model_bench
# One warm-up forward and one timed forward of 2 layers: 2 x 2 layer passes.
timeout 300 ncu --metrics gpu__time_duration.sum --csv \
  --kernel-name regex:"^(attn|gemm|packed|gemv|rope|add_rms|embed|route|router|combine|gather|splitk|argmax|slot)" \
  ./model_bench --layers 2 --prompts "$prompt" --iters 1 --decode "$decode" > "$out/ncu_prefill_$prompt.csv" 2> "$out/ncu_prefill_$prompt.err"
echo "ncu exit $?"
python3 - "$out/ncu_prefill_$prompt.csv" "$prompt" <<'PY'
import csv, sys, collections
# (model_bench's own lines, e.g. ROWS, may precede ncu's header)
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hi = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
head = rows[hi]; rows = rows[hi + 1:]
ki, mi, vi, ui = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value"), head.index("Metric Unit")
tot = collections.Counter(); cnt = collections.Counter()
for r in rows:
    if r[mi] != "gpu__time_duration.sum": continue
    v = float(r[vi].replace(",", "")); u = r[ui]
    v *= {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(u, 1.0)
    name = r[ki].split("(")[0]
    tot[name] += v; cnt[name] += 1
passes = 4  # 2 forwards x 2 layers
all_us = sum(tot.values())
print(f"prompt {sys.argv[2]} tokens, per layer (2 layers x 2 forwards, kernels alone): {all_us / passes:.1f} us")
for name, v in tot.most_common():
    print(f"  {name:28s} {v / passes:9.1f} us/layer  {cnt[name] / passes:5.1f} launches  {v / cnt[name]:8.1f} us/launch  {100 * v / all_us:5.1f} %")
PY

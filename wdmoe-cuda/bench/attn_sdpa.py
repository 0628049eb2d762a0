# Times torch.nn.functional.scaled_dot_product_attention (fp16, causal,
# grouped-query: 32 query heads, 8 kv heads, head size 128) at the shapes
# attn_prefill_bench.cu times, for the ratio to the prefill kernel.
# Run on the GPU machine: python3 wdmoe-cuda/bench/attn_sdpa.py
import torch
import torch.nn.functional as F


def bench(fn, batch=10, reps=25):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms = []
    for _ in range(reps):
        e0.record()
        for _ in range(batch):
            fn()
        e1.record()
        e1.synchronize()
        ms.append(e0.elapsed_time(e1) / batch)
    ms.sort()
    return ms[len(ms) // 2]


def main():
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    print(f"{'variant':<22} {'T':>5} {'start':>5} {'ms':>10} {'TFLOP/s':>9}")
    H, KVH, hd = 32, 8, 128
    for T, start in [(2048, 0), (512, 0), (128, 0), (512, 1536), (2048, 2048)]:
        S = start + T
        q = torch.randn(1, H, T, hd, device="cuda", dtype=torch.float16)
        k = torch.randn(1, KVH, S, hd, device="cuda", dtype=torch.float16)
        v = torch.randn(1, KVH, S, hd, device="cuda", dtype=torch.float16)
        flops = 4.0 * hd * H * (T * start + T * T / 2)
        runs = []
        if start == 0:
            runs.append(("sdpa_gqa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)))
            ke, ve = k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1)
            runs.append(("sdpa_expanded_kv", lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True)))
        else:
            # A chunk after history: causal aligned to the bottom right.
            try:
                from torch.nn.attention.bias import causal_lower_right

                mask = causal_lower_right(T, S)
                ke, ve = k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1)
                runs.append(("sdpa_lower_right_exp", lambda: F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask)))
            except Exception as e:  # noqa: BLE001
                print("no causal_lower_right:", e)
        for name, fn in runs:
            try:
                m = bench(fn)
                print(f"{name:<22} {T:>5} {start:>5} {m:>10.4f} {flops / (m * 1e-3) / 1e12:>9.1f}")
            except Exception as e:  # noqa: BLE001
                print(f"{name:<22} {T:>5} {start:>5} failed: {e}")


if __name__ == "__main__":
    main()

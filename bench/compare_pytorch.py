#!/usr/bin/python3
"""End-to-end comparison with PyTorch on one machine, in one run.

1. Writes (once) a random-weight InstructBLIP-Flan-T5-XL checkpoint in HF layout as bf16
   safetensors shards (bench/tools/random_checkpoint.cpp -> instructblip-random-checkpoint).
2. Runs instructblip-generate on it (1 image, 20 new tokens: --min-new-tokens 20
   --max-new-tokens 20, greedy) with --weights f32, bf16 and q8_0, --reps times each, and reads
   the stage timings and peak RSS from its --json output.
3. Runs bench/pytorch_reference.py --only e2e (the same shapes in plain PyTorch, f32 and bf16,
   its best configuration: OpenBLAS with 2 threads, torch's pool at 1 thread).
4. Prints a markdown table of medians and the speed-up ratios, and writes everything as JSON.

usage: /usr/bin/python3 bench/compare_pytorch.py --build BUILD_DIR [--checkpoint DIR] [--reps 3]
                                                  [--image FILE] [--json out.json] [--skip-pytorch]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_ours(build, ckpt, image, weights):
    cmd = [os.path.join(build, "examples", "instructblip-generate"), "--model", ckpt, "--image", image,
           "--prompt", "Describe the image in detail.", "--max-new-tokens", "20", "--min-new-tokens", "20",
           "--weights", weights, "--json", "--quiet"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    j = json.loads(out.strip().splitlines()[-1])
    t = j["timings_ms"]
    assert len(j["sequences"][0]) >= 21, "expected 20 new tokens"
    compute = t["vision"] + t["qformer"] + t["prefill"] + t["decode"]
    return {"load": t["load"], "vision": t["vision"], "qformer": t["qformer"], "prefill": t["prefill"],
            "ms_per_token": t["decode_per_token"], "compute_total": compute, "peak_rss_mb": j["peak_rss_mb"]}


def median_record(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--checkpoint", default="/tmp/instructblip-flan-t5-xl-random-bf16")
    ap.add_argument("--image", default=os.path.join(ROOT, "examples", "images", "Confusing-Pictures.jpg"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--formats", default="f32,bf16,q8_0")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-pytorch", action="store_true")
    a = ap.parse_args()
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
    print(f"CPU: {model}, {os.cpu_count()} threads")

    if not os.path.exists(os.path.join(a.checkpoint, "model.safetensors.index.json")):
        subprocess.run([os.path.join(a.build, "bench", "instructblip-random-checkpoint"), a.checkpoint, "--dtype",
                        "bf16", "--max-shard-gb", "2", "--processor-from",
                        os.path.join(ROOT, "models", "tiny-random-flan-t5")], check=True)

    # the formats alternate rep by rep, so that a drift of the machine's speed during the run (its
    # memory bandwidth moves between minutes here) falls on every format alike
    fmts = a.formats.split(",")
    runs = {fmt: [] for fmt in fmts}
    for _ in range(a.reps):
        for fmt in fmts:
            runs[fmt].append(run_ours(a.build, a.checkpoint, a.image, fmt))
    ours = {}
    for fmt in fmts:
        ours[fmt] = {"median": median_record(runs[fmt]), "runs": runs[fmt]}
        print(f"instructblip.cpp {fmt}: {ours[fmt]['median']}", file=sys.stderr, flush=True)

    torch = {}
    if not a.skip_pytorch:
        tj = "/tmp/ib_pytorch_e2e.json"
        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "pytorch_reference.py"), "--only", "e2e", "--dtype",
                        "f32,bf16", "--reps", str(a.reps), "--json", tj], check=True, stdout=sys.stderr)
        for rec in json.load(open(tj)):
            torch[f"{rec['dtype']}/{rec.get('variant', '')}"] = rec

    def torch_total(dtype):
        recs = [r for k, r in torch.items() if k.startswith(dtype + "/")]
        return {r.get("variant", ""): r["median_ms"] for r in recs}

    rows = ["| weights | load | vision | Q-Former | prefill | ms/token | total (compute) | peak RSS |",
            "|---|---|---|---|---|---|---|---|"]
    for fmt, r in ours.items():
        m = r["median"]
        rows.append(f"| instructblip.cpp {fmt} | {m['load'] / 1e3:.1f} s | {m['vision']:.0f} ms | {m['qformer']:.0f} ms | "
                    f"{m['prefill']:.0f} ms | {m['ms_per_token']:.1f} | {m['compute_total'] / 1e3:.2f} s | "
                    f"{m['peak_rss_mb'] / 1e3:.1f} GB |")
    for key, rec in torch.items():
        st = rec.get("stages_median_ms", {})
        rows.append(f"| PyTorch {key} | - | {st.get('vision_ms', float('nan')):.0f} ms | "
                    f"{st.get('qformer_ms', float('nan')):.0f} ms | "
                    f"{st.get('encoder_ms', float('nan')):.0f} ms | {st.get('ms_per_token', float('nan')):.1f} | "
                    f"{rec['median_ms'] / 1e3:.2f} s | - |")
    print("\n".join(rows))
    if torch:
        print()
        print("| ours | PyTorch | speed-up (PyTorch total / ours) |")
        print("|---|---|---|")
        pairs = [("f32", "f32"), ("bf16", "bf16"), ("q8_0", "bf16")]
        for ofmt, tdt in pairs:
            if ofmt not in ours:
                continue
            for variant, ms in torch_total(tdt).items():
                ratio = ms / ours[ofmt]["median"]["compute_total"]
                print(f"| {ofmt} | {tdt} ({variant}) | {ratio:.2f}x |")
    if a.json:
        json.dump({"ours": ours, "pytorch": torch}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()

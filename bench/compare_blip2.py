#!/usr/bin/python3
"""BLIP-2 OPT end to end: instructblip.cpp against PyTorch on one machine, in one run.

1. Writes (once) a random-weight BLIP-2 checkpoint in HF layout as bf16 safetensors shards
   (bench/tools/random_checkpoint.cpp -> instructblip-random-checkpoint --model blip2-opt-2.7b or
   blip2-opt-6.7b), in /tmp/<model>-random-bf16 unless --checkpoint says otherwise.
2. Runs instructblip-generate on it (1 image, 20 new tokens exactly: --min-new-tokens 20
   --max-new-tokens 20, greedy) with --weights bf16, q8_0 and q4_0 (--formats), --reps times each,
   and reads the stage timings and peak RSS from its --json output. The first run also writes
   --dump: the processor's pixel_values / input_ids, our first-step logits and tokens.
3. Runs bench/pytorch_reference.py --blip2 on the same checkpoint and the same inputs (the dump):
   plain-PyTorch BLIP-2-OPT with transformers 4.36.2 semantics, bf16 as torch_dtype=torch.bfloat16
   runs it, greedy with a KV cache, the same 20 tokens; --torch-threads threads.
4. Prints, headed by the CPU model, a markdown table of medians per stage (vision, Q-Former,
   prefill, decode ms/token) and totals, and the speed-up of each of our formats over PyTorch bf16.

Smoke test (a reduced-depth model: 1 vision, 2 Q-Former, 1 OPT layer; seconds, not a measurement):
  /usr/bin/python3 bench/compare_blip2.py --reduced --reps 1

usage: /usr/bin/python3 bench/compare_blip2.py [--build BUILD_DIR] [--model blip2-opt-2.7b|blip2-opt-6.7b]
           [--checkpoint DIR] [--reps 3] [--formats bf16,q8_0,q4_0] [--image FILE] [--prompt TEXT]
           [--torch-threads 2] [--json out.json] [--skip-pytorch] [--reduced]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NEW_TOKENS = 20


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run_ours(a, weights, dump=None):
    cmd = [os.path.join(a.build, "examples", "instructblip-generate"), "--model", a.checkpoint, "--image", a.image,
           "--prompt", a.prompt, "--max-new-tokens", str(NEW_TOKENS), "--min-new-tokens", str(NEW_TOKENS),
           "--weights", weights, "--json", "--quiet"]
    if dump:
        cmd += ["--dump", dump]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    j = json.loads(out.strip().splitlines()[-1])
    t = j["timings_ms"]
    # sequences = the dummy bos + the new tokens (transformers 4.36.2 BLIP-2 OPT)
    assert len(j["sequences"][0]) >= NEW_TOKENS + 1, f"expected {NEW_TOKENS} new tokens, got {j['sequences'][0]}"
    compute = t["vision"] + t["qformer"] + t["prefill"] + t["decode"]
    return {"load": t["load"], "vision": t["vision"], "qformer": t["qformer"], "prefill": t["prefill"],
            "ms_per_token": t["decode_per_token"], "decode": t["decode"], "compute_total": compute,
            "peak_rss_mb": j["peak_rss_mb"], "sequence": j["sequences"][0]}


def median_record(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "sequence"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model", default="blip2-opt-2.7b", choices=["blip2-opt-2.7b", "blip2-opt-6.7b"])
    ap.add_argument("--checkpoint", default=None, help="default /tmp/<model>-random-bf16 (written if missing)")
    ap.add_argument("--image", default=os.path.join(ROOT, "examples", "images", "Confusing-Pictures.jpg"))
    ap.add_argument("--prompt", default="Question: what is unusual about this image? Answer:")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--formats", default="bf16,q8_0,q4_0")
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="torch.set_num_threads for PyTorch (default 2: bf16 products run on torch's own pool)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-pytorch", action="store_true")
    ap.add_argument("--reduced", action="store_true",
                    help="smoke test: a reduced-depth checkpoint (1 vision, 2 Q-Former, 1 OPT layer) in "
                         "/tmp/<model>-reduced-random-bf16; its times are not the model's")
    a = ap.parse_args()
    suffix = "-reduced-random-bf16" if a.reduced else "-random-bf16"
    a.checkpoint = a.checkpoint or f"/tmp/{a.model}{suffix}"
    print(f"CPU: {cpu_model()}, {os.cpu_count()} threads", flush=True)

    if not os.path.exists(os.path.join(a.checkpoint, "config.json")):
        cmd = [os.path.join(a.build, "bench", "instructblip-random-checkpoint"), a.checkpoint, "--model", a.model,
               "--dtype", "bf16", "--max-shard-gb", "2", "--processor-from",
               os.path.join(ROOT, "tests", "data", "blip2-opt-tiny", "model")]
        if a.reduced:
            cmd += ["--vision-layers", "1", "--qformer-layers", "2", "--text-layers", "1"]
        print(f"# {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)

    tmp = tempfile.mkdtemp(prefix="compare_blip2_")
    dump = os.path.join(tmp, "inputs.safetensors")
    ours = {}
    for fmt in a.formats.split(","):
        runs = []
        for _ in range(a.reps):
            runs.append(run_ours(a, fmt, dump if not os.path.exists(dump) else None))
        ours[fmt] = {"median": median_record(runs), "runs": runs}
        print(f"instructblip.cpp {fmt}: {ours[fmt]['median']}", file=sys.stderr, flush=True)

    torch = None
    if not a.skip_pytorch:
        tj = os.path.join(tmp, "pytorch.json")
        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "pytorch_reference.py"), "--blip2", a.checkpoint,
                        "--blip2-input", dump, "--dtype", "bf16", "--reps", str(a.reps), "--new-tokens",
                        str(NEW_TOKENS), "--decode-linear", "linear", "--torch-threads", str(a.torch_threads),
                        "--json", tj], check=True, stdout=sys.stderr)
        with open(tj) as f:
            torch = json.load(f)[0]

    cfg = json.load(open(os.path.join(a.checkpoint, "config.json")))
    layers = (f"vision {cfg['vision_config']['num_hidden_layers']} / Q-Former {cfg['qformer_config']['num_hidden_layers']}"
              f" / OPT {cfg['text_config']['num_hidden_layers']} layers")
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} threads")
    print(f"Model: {a.model} shapes, random weights ({a.checkpoint}; {layers}"
          f"{', REDUCED DEPTH: not a measurement' if a.reduced else ''}); 1 image 224x224, "
          f"{NEW_TOKENS} new tokens greedy; medians of {a.reps}\n")
    rows = ["| engine | load | vision | Q-Former | prefill | decode ms/token | total (compute) | peak RSS |",
            "|---|---|---|---|---|---|---|---|"]
    for fmt, r in ours.items():
        m = r["median"]
        rows.append(f"| instructblip.cpp {fmt} | {m['load'] / 1e3:.1f} s | {m['vision']:.0f} ms | {m['qformer']:.0f} ms | "
                    f"{m['prefill']:.0f} ms | {m['ms_per_token']:.1f} | {m['compute_total'] / 1e3:.2f} s | "
                    f"{m['peak_rss_mb'] / 1e3:.1f} GB |")
    if torch:
        st = torch["stages_median_ms"]
        rows.append(f"| PyTorch bf16 ({a.torch_threads} threads) | - | {st['vision_ms']:.0f} ms | {st['qformer_ms']:.0f} ms | "
                    f"{st['prefill_ms']:.0f} ms | {st['ms_per_token']:.1f} | {st['total_ms'] / 1e3:.2f} s | - |")
    print("\n".join(rows))
    if torch:
        st = torch["stages_median_ms"]
        print("\n| ours | speed-up vs PyTorch bf16: total (compute) | decode ms/token |")
        print("|---|---|---|")
        for fmt, r in ours.items():
            m = r["median"]
            print(f"| {fmt} | {st['total_ms'] / m['compute_total']:.2f}x | {st['ms_per_token'] / m['ms_per_token']:.2f}x |")
        if "vs_dump" in torch:
            first = next(iter(ours))
            v = torch["vs_dump"]
            print(f"\nSame input, PyTorch bf16 vs instructblip.cpp {first}: first-step logits max |diff| "
                  f"{v['first_step_logits_max_abs_diff']:.3g}; greedy tokens {'equal' if v['sequences_equal'] else 'differ'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu_model(), "model": a.model, "checkpoint": a.checkpoint, "reduced": a.reduced,
                       "ours": ours, "pytorch": torch}, f, indent=1)


if __name__ == "__main__":
    main()

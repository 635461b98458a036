#!/usr/bin/python3
"""Bulk captioning throughput: instructblip.cpp's BatchEngine against PyTorch, in one run.

1. Writes (once) the random-weight InstructBLIP-Flan-T5-XL checkpoint compare_pytorch.py uses.
2. For each weight format (--formats, default bf16,q8_0) runs build/bench/instructblip-bench-bulk:
   the decode step time by rows in flight, and images/minute for 16 images by batch size (rows in
   flight) and answer length (fixed 20 / 100 tokens; "natural": 10..100 tokens over the requests),
   with the time per stage.
3. Runs bench/pytorch_reference.py --bulk (the same shapes: 16 images, batches of 8, batched greedy
   decoding of exactly N tokens, bf16, its best torch thread count) for the fixed lengths.
4. Prints the tables (headed by the CPU model) and the targets of the bulk-captioning issue:
   q8_0 decode step at 8 rows <= 1.5x one row; images/minute at batch 8 >= 2.5x batch 1 with
   100-token answers; bf16 at batch 8 >= 2x PyTorch bf16 with 20-token answers.

Usage: /usr/bin/python3 bench/compare_bulk.py [--build build] [--json out.json] [--formats bf16,q8_0]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--checkpoint", default="/tmp/instructblip-flan-t5-xl-random-bf16")
    ap.add_argument("--formats", default="bf16,q8_0")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--tokens", default="20,100,natural")
    ap.add_argument("--pytorch-tokens", default="20,100")
    ap.add_argument("--skip-pytorch", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} threads", flush=True)

    if not os.path.exists(os.path.join(a.checkpoint, "model.safetensors.index.json")):
        subprocess.run([os.path.join(a.build, "bench", "instructblip-random-checkpoint"), a.checkpoint, "--dtype",
                        "bf16", "--max-shard-gb", "2", "--processor-from",
                        os.path.join(ROOT, "models", "tiny-random-flan-t5")], check=True)
    images = [os.path.join(ROOT, "examples", "images", "Confusing-Pictures.jpg"),
              os.path.join(ROOT, "tests", "data", "images", "merlion.png")]
    records = []
    for fmt in a.formats.split(","):
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as tf:
            path = tf.name
        cmd = [os.path.join(a.build, "bench", "instructblip-bench-bulk"), "--model", a.checkpoint, "--weights", fmt,
               "--images", str(a.images), "--batches", a.batches, "--tokens", a.tokens, "--json", path]
        for im in images:
            cmd += ["--image", im]
        print(f"# {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        with open(path) as f:
            records += [json.loads(l) for l in f if l.strip()]
        os.unlink(path)
    torch_recs = []
    if not a.skip_pytorch:
        for n in a.pytorch_tokens.split(","):
            out = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench", "pytorch_reference.py"), "--bulk",
                                  "--new-tokens", n, "--bulk-images", str(a.images), "--bulk-batch", "8"],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            torch_recs.append(rec)

    print(f"\nCPU: {cpu_model()}")
    print("\n| weights | rows in flight | decode step ms | vs 1 row |")
    print("|---|---|---|---|")
    step = {}
    for r in records:
        if r["kind"] == "decode_step":
            step[(r["weights"], r["rows"])] = r["ms_per_step"]
    for (w, rows), ms in sorted(step.items()):
        print(f"| {w} | {rows} | {ms:.1f} | {ms / step[(w, 1)]:.2f}x |")
    print("\n| engine | answer | batch | images/min | vs batch 1 | vision | Q-Former | prefill | decode (ms/image) |")
    print("|---|---|---|---|---|---|---|---|---|")
    ipm = {}
    for r in records:
        if r["kind"] != "bulk":
            continue
        ipm[(r["weights"], r["answer"], r["batch"])] = r["images_per_minute"]
        base = ipm.get((r["weights"], r["answer"], 1))
        print(f"| instructblip.cpp {r['weights']} | {r['answer']} | {r['batch']} | {r['images_per_minute']:.1f} | "
              f"{r['images_per_minute'] / base:.2f}x | {r['vision_ms_per_image']:.0f} | {r['qformer_ms_per_image']:.0f} | "
              f"{r['prefill_ms_per_image']:.0f} | {r['decode_ms_per_image']:.0f} |" if base else "")
    for t in torch_recs:
        s = t["stages_ms"]
        n = t["images"]
        print(f"| PyTorch {t['dtype']} ({t['threads']['torch_threads']} threads) | {t['new_tokens']} | {t['batch']} | "
              f"{t['images_per_minute']:.1f} | | {s['vision_ms'] / n:.0f} | {s['qformer_ms'] / n:.0f} | "
              f"{s['prefill_ms'] / n:.0f} | {s['decode_ms'] / n:.0f} |")

    print("\nTargets:")
    if ("q8_0", 8) in step and ("q8_0", 1) in step:
        r = step[("q8_0", 8)] / step[("q8_0", 1)]
        print(f"  q8_0 decode step, 8 rows vs 1: {r:.2f}x (target <= 1.5x): {'met' if r <= 1.5 else 'NOT met'}")
    for w in a.formats.split(","):
        if (w, "100", 8) in ipm and (w, "100", 1) in ipm:
            r = ipm[(w, "100", 8)] / ipm[(w, "100", 1)]
            print(f"  {w} images/min, batch 8 vs 1, 100-token answers: {r:.2f}x (target >= 2.5x): "
                  f"{'met' if r >= 2.5 else 'NOT met'}")
    for t in torch_recs:
        key = ("bf16", str(t["new_tokens"]), 8)
        if key in ipm:
            r = ipm[key] / t["images_per_minute"]
            print(f"  bf16 batch 8 vs PyTorch bf16 batch 8, {t['new_tokens']}-token answers: {r:.2f}x"
                  + (f" (target >= 2x): {'met' if r >= 2 else 'NOT met'}" if t["new_tokens"] == 20 else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), engine=records, pytorch=torch_recs), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

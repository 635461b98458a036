#!/usr/bin/python3
"""A portable build (INSTRUCTBLIP_NATIVE=OFF) against a native one, in one run on one machine.

Runs the same Google Benchmark programs of both build directories, alternating A, B, A, B ... for
--reps rounds, and prints the medians and the ratio (portable speed / native speed) per stage:
ViT-g/14 forward f32 and bf16 (bench_vision), Flan-T5-XL decode step f32 / bf16 / q8_0 / q4_0
(bench_decode_t5). Prints the CPU model and the kernel levels first.

usage: /usr/bin/python3 bench/compare_builds.py --native build --portable build-portable [--reps 3]
                                                [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = [
    # (label, program, filter, counter: "time" = real time in ms, else a counter name)
    ("ViT-g/14 forward, f32", "bench_vision", "BM_VisionForward/batch:1/format:0/", "time"),
    ("ViT-g/14 forward, bf16", "bench_vision", "BM_VisionForward/batch:1/format:1/", "time"),
    ("Q-Former + projection, bf16", "bench_vision", "BM_QFormerForward/batch:1/format:1/", "time"),
    ("Flan-T5-XL decode step, f32", "bench_decode_t5", "BM_t5_xl_decode_step/format:0/", "ms/token"),
    ("Flan-T5-XL decode step, bf16", "bench_decode_t5", "BM_t5_xl_decode_step/format:1/", "ms/token"),
    ("Flan-T5-XL decode step, q8_0", "bench_decode_t5", "BM_t5_xl_decode_step/format:2/", "ms/token"),
    ("Flan-T5-XL decode step, q4_0", "bench_decode_t5", "BM_t5_xl_decode_step/format:3/", "ms/token"),
]


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run(build, program, flt):
    exe = os.path.join(build, "bench", program)
    out = subprocess.run([exe, "--benchmark_filter=" + flt, "--benchmark_format=json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def value(doc, flt, counter):
    b = [x for x in doc["benchmarks"] if x["name"].startswith(flt) and x.get("run_type", "iteration") == "iteration"][0]
    if counter == "time":
        scale = {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b["time_unit"]]
        return b["real_time"] * scale
    return b[counter]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--native", default="build")
    ap.add_argument("--portable", default="build-portable")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} threads")
    res = {label: {"native": [], "portable": []} for label, _, _, _ in CASES}
    programs = sorted({p for _, p, _, _ in CASES})
    kernels = {}
    for _ in range(a.reps):
        for program in programs:  # one process per program and build: all of its cases
            cases = [c for c in CASES if c[1] == program]
            flt = "|".join(f for _, _, f, _ in cases)
            for name in ("native", "portable"):
                doc = run(a.native if name == "native" else a.portable, program, flt)
                kernels[name] = doc.get("context", {}).get("kernels", "?")
                for label, _, f, counter in cases:
                    res[label][name].append(value(doc, f, counter))
                print(f"{program} {name}: " + ", ".join(f"{l} {res[l][name][-1]:.1f}" for l, _, _, _ in cases),
                      file=sys.stderr, flush=True)
    for name, k in kernels.items():
        print(f"{name}: {k}")
    print("\n| stage | native (ms) | portable (ms) | portable speed / native |")
    print("|---|---|---|---|")
    for label, vals in res.items():
        n, p = statistics.median(vals["native"]), statistics.median(vals["portable"])
        print(f"| {label} | {n:.1f} | {p:.1f} | {n / p * 100:.0f}% |")
    if a.json:
        json.dump({"cpu": cpu_model(), "results": res}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()

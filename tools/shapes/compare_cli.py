#!/usr/bin/env python3
"""Compares instructblip-generate's answers with the PyTorch model's on a set written by
`tools/train_shapes_demo.py eval --dir DIR` (DIR/answers.json + the image files) or by make_test_data.py.

    /usr/bin/python3 tools/shapes/compare_cli.py --cli build/examples/instructblip-generate \
        --model models/shapes-demo --dir /tmp/shapes-eval [--weights f32] [--beams 1 3]

For each question type and each decoding (greedy, beam 3) the CLI answers all images of the set (one batch per
question: every row has the same prompt, so no padding) with max_new_tokens 32; its token ids (trailing
padding removed) are compared with the PyTorch ids. At --weights other than f32 only the accuracy is reported.
Exit status 1 when an f32 answer differs.
"""
import argparse
import json
import os
import subprocess
import sys

QTYPES = ["shape", "color", "background", "describe"]


def run_cli(cli, model, images, prompt, beams, weights):
    cmd = [cli, "--model", model, "--prompt", prompt, "--max-new-tokens", "32", "--num-beams", str(beams),
           "--json", "--quiet", "--threads", "1", "--weights", weights]
    for im in images:
        cmd += ["--image", im]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    seqs = []
    for s in out["sequences"]:
        if 1 in s[1:]:
            s = s[: s.index(1, 1) + 1]  # up to </s>; the rest is the batch's padding
        seqs.append(s)
    return seqs, out["texts"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default="build/examples/instructblip-generate")
    ap.add_argument("--model", default="models/shapes-demo")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json", default="answers.json", help="file in --dir with the PyTorch answers")
    ap.add_argument("--weights", default="f32")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()
    data = json.load(open(os.path.join(args.dir, args.json)))
    items = data["items"]
    failed = False
    for nb in args.beams:
        key = "greedy" if nb == 1 else f"beam{nb}"
        same = total = 0
        correct = {qt: 0 for qt in QTYPES}
        for qi, qt in enumerate(QTYPES):
            for start in range(0, len(items), args.batch):
                chunk = items[start: start + args.batch]
                prompt = chunk[0]["qa"][qi]["question"]
                seqs, texts = run_cli(args.cli, args.model, [os.path.join(args.dir, it["image"]) for it in chunk],
                                      prompt, nb, args.weights)
                for it, s, t in zip(chunk, seqs, texts):
                    qa = it["qa"][qi]
                    assert qa["qtype"] == qt and qa["question"] == prompt
                    total += 1
                    correct[qt] += t == qa["answer"]
                    if key in qa:
                        if s == qa[key]["ids"]:
                            same += 1
                        elif args.weights == "f32":
                            print(f"DIFF {key} {it['image']} {prompt!r}: cli {s} {t!r} pytorch {qa[key]['ids']} "
                                  f"{qa[key]['text']!r}")
        n = len(items)
        print(f"{args.weights} {key}: " + " ".join(f"{qt} {correct[qt]}/{n}" for qt in QTYPES) +
              f" all {sum(correct.values())}/{4 * n}; token ids equal to PyTorch's: {same}/{total}")
        if args.weights == "f32" and same != total:
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

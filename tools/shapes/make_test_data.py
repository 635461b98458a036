#!/usr/bin/env python3
"""Writes the data the C++ side uses with the trained demo model models/shapes-demo:

  * tests/data/shapes-demo-trained/: 32 scenes from the evaluation distribution (seeds 30,000,000 + i, which
    training and the README's evaluation never draw), each image file as evaluated (PNG, or JPEG at its
    quality), and expected.json with the truth and the PyTorch model's greedy and beam-3 ids and texts for the
    four canonical questions (tests/test_shapes_demo_trained.cpp compares instructblip's answers with them);
  * examples/images/shapes/red-circle-on-blue.png and yellow-star-on-purple.png (scripts/setup.sh's demo).

    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-serial /usr/bin/python3 tools/shapes/make_test_data.py
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import instructblip_t5 as ib  # noqa: E402
import shapes_data as sd  # noqa: E402
import train_shapes_demo as tsd  # noqa: E402
from PIL import Image  # noqa: E402

# (file name, shape, colour, background, seed, radius range): big, centred enough to be an easy first example
EXAMPLES = [("red-circle-on-blue.png", "circle", "red", "blue", 40_000_001, (60.0, 70.0)),
            ("yellow-star-on-purple.png", "star", "yellow", "purple", 40_000_002, (60.0, 70.0))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "shapes-demo"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--tests", default=os.path.join(ROOT, "tests", "data", "shapes-demo-trained"))
    ap.add_argument("--examples", default=os.path.join(ROOT, "examples", "images", "shapes"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ib.load_model(args.model)
    vocab = tsd.Vocab(args.model)
    size = model.config["vision_config"]["image_size"]

    items = tsd.write_set(model, vocab, tsd.TEST_SEED_BASE, args.n, args.tests, (1, 3))
    table = tsd.accuracy_table(items, (1, 3))
    with open(os.path.join(args.tests, "expected.json"), "w") as f:
        json.dump({"made_by": "tools/shapes/make_test_data.py (PyTorch model tools/shapes/instructblip_t5.py)",
                   "model": "models/shapes-demo", "seed_base": tsd.TEST_SEED_BASE,
                   "generate": "greedy and num_beams=3, max_new_tokens=32, one image + one question per call",
                   "accuracy": table, "items": items}, f, indent=1)
        f.write("\n")
    for key, t in table.items():
        print(key, " ".join(f"{qt} {c}/{t['images']}" for qt, c in t["per_question_type"].items()),
              f"all {t['correct']}/{t['total']}")

    os.makedirs(args.examples, exist_ok=True)
    for name, shape, color, bg, seed, r_range in EXAMPLES:
        p = sd.sample_params(np.random.RandomState(seed), r_range=r_range, shape=shape, color=color, bg=bg)
        path = os.path.join(args.examples, name)
        sd.render(p).save(path, format="PNG", optimize=True)
        px = torch.from_numpy(ib.preprocess(Image.open(path), size))
        ans = tsd.answer_all(model, vocab, px, (1, 3))
        for qt in sd.QTYPES:
            truth = sd.answer(qt, shape, color, bg)
            for nb in (1, 3):
                text = ans[(qt, nb)][1]
                print(f"{name}: {sd.CANONICAL[qt]} -> {text}" + ("" if text == truth else f"   WRONG ({truth})"))


if __name__ == "__main__":
    main()

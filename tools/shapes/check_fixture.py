#!/usr/bin/env python3
"""Checks tools/shapes/instructblip_t5.py against transformers 4.36.2: on the fixture checkpoint
(tests/data/shapes-demo/model) its prompt ids, greedy ids, beam-3 ids and beam sequence scores must equal
expected.json (transformers' outputs on the 16 fixture images x 4 questions).

    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-serial /usr/bin/python3 tools/shapes/check_fixture.py
"""
import json
import os
import sys
import time

import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import instructblip_t5 as ib  # noqa: E402

FIX = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data", "shapes-demo"))


def main():
    torch.set_num_threads(1)
    m = ib.load_model(FIX + "/model")
    t5 = ib.T5Tok(FIX + "/model")
    bt = ib.BertTok(FIX + "/model/qformer_tokenizer/vocab.txt")
    exp = json.load(open(FIX + "/expected.json"))
    size = m.config["vision_config"]["image_size"]
    ng = nb = tot = 0
    max_dev = 0.0
    t0 = time.time()
    for it in exp["items"]:
        px = torch.from_numpy(ib.preprocess(Image.open(FIX + "/" + it["image"]), size))
        for qa in it["qa"]:
            assert t5.encode(qa["question"]) == qa["input_ids"]
            assert bt.encode(qa["question"]) == qa["qformer_input_ids"]
            g = m.greedy(px, qa["qformer_input_ids"], qa["input_ids"])
            b, s = m.beam_search(px, qa["qformer_input_ids"], qa["input_ids"], num_beams=3)
            tot += 1
            ng += g == qa["greedy"]["ids"]
            nb += b == qa["beam3"]["ids"]
            max_dev = max(max_dev, abs(s - qa["beam3"]["sequences_score"]))
            if g != qa["greedy"]["ids"] or b != qa["beam3"]["ids"]:
                print("DIFF", it["image"], qa["question"], g, qa["greedy"]["ids"], b, qa["beam3"]["ids"])
            assert t5.decode(g) == qa["greedy"]["text"]
    print(f"greedy ids equal transformers' {ng}/{tot}, beam-3 ids {nb}/{tot}; "
          f"max |beam sequence score - transformers'| {max_dev:.1e} ({time.time() - t0:.1f}s)")
    sys.exit(0 if ng == tot and nb == tot else 1)


if __name__ == "__main__":
    main()

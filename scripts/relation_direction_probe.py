"""Diagnostic: does a cascade place 'A left of B' differently from 'A right of B' (and above /
below)? Four colour-shape pairs x 8 seeds per relation, detected with the shapes scorer; prints
the mean of A's minus B's centre on the relation's axis and how often A is the smaller.

    python scripts/relation_direction_probe.py MODEL_DIR
"""
import sys
import numpy as np
from pixcade.pipeline import Cascade
from pixcade.eval.shapes import detect
c = Cascade.from_pretrained(sys.argv[1])
pairs = [("red", "circle", "blue", "square"), ("green", "star", "yellow", "diamond"),
         ("black", "triangle", "orange", "circle"), ("purple", "square", "cyan", "star")]
for rel, axis in (("to the left of", 0), ("to the right of", 0), ("above", 1), ("below", 1)):
    prompts = [f"a {a} {b} {rel} a {c2} {d}" for a, b, c2, d in pairs]
    ims = c.generate(prompts, n=8, seed=3, progress=False)
    diffs = []
    for k, im in enumerate(ims):
        a, b, c2, d = pairs[k // 8]
        det = detect(im)
        A = [x for x in det if x.colour == a]; B = [x for x in det if x.colour == c2]
        if len(A) == 1 and len(B) == 1:
            diffs.append((A[0].cx, A[0].cy)[axis] - (B[0].cx, B[0].cy)[axis])
    diffs = np.array(diffs)
    print(f"{rel:16s} n={len(diffs)} mean(A-B)={diffs.mean():+.3f} frac A<B={np.mean(diffs < 0):.2f}")

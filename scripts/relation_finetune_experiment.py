"""Experiment (ninth session), not a pixcade command: does the base stage learn relations when
its training is put where they are decided, at high noise?

Fine-tunes a cascade's base stage on relation images only (the first 3,000 of
RUNS/data/shapes128-mix7), t ~ U[TLO, 1], AdamW lr 1e-4, batch 32, bf16 autocast, no EMA,
and every 500 steps prints the denoising loss on 128 other relation images (shapes128-mix6)
with their captions vs with the relation word swapped (left <-> right, above <-> below) at
the same t and noise: a net that ignores the word scores both alike. Saves the result when
OUT is given (then: python scripts/relation_direction_probe.py OUT).

    python scripts/relation_finetune_experiment.py MODEL TLO STEPS [OUT]

RUNS is $PIXCADE_RUNS or ~/pixcade-runs. Measured on phase 7's step-24,000 cascade, TLO 0.85,
2,500 steps: see docs/shapes-model-notes.md.
"""
import glob, json, os, sys, time
import torch
from PIL import Image
from pixcade.pipeline import Cascade
from pixcade.data.captions import RELATION_WORDS
from pixcade.data.transforms import resize_center_crop, to_tensor
from pixcade.diffusion.losses import diffusion_loss

RUNS = os.environ.get("PIXCADE_RUNS", os.path.expanduser("~/pixcade-runs"))
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
def swap(c):
    """The caption with its relation phrase replaced by the opposite relation's (same phrasing
    where it has one: "left of" -> "right of", "beneath" -> "above")."""
    rel, i, phrase = max(((r, i, p) for r, ps in RELATION_WORDS.items() for i, p in enumerate(ps) if f" {p} " in c),
                         key=lambda f: len(f[2]))  # "to the left of" over "left of", as the caption parser does
    other = RELATION_WORDS[OPPOSITE[rel]]
    return c.replace(f" {phrase} ", f" {other[min(i, len(other) - 1)]} ", 1)

def load(folder, n):
    caps, ims = [], []
    for f in sorted(glob.glob(f"{RUNS}/data/{folder}/*.json")):
        d = json.load(open(f))
        if d["kind"] == "relation":
            caps.append(d["caption"]); ims.append(to_tensor(resize_center_crop(Image.open(f[:-5] + ".png").convert("RGB"), 32)))
            if len(caps) == n: break
    return caps, torch.stack(ims)

model, tlo, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
c = Cascade.from_pretrained(model); st = c.stage("base"); enc = c.encoder
tr_caps, tr_x = load("shapes128-mix7", 3000)
te_caps, te_x = load("shapes128-mix6", 128)
# The test captions' text is fixed, so it is encoded once, true and swapped.
te_text = [enc.encode(cs) for cs in (te_caps, [swap(x) for x in te_caps])]
def gap(tvals=(0.97, 0.93, 0.9, 0.8)):
    st.net.eval(); out = []
    g = torch.Generator().manual_seed(0); noise = torch.randn(te_x.shape, generator=g)
    for tv in tvals:
        t = torch.full((len(te_caps),), tv); L = []
        for emb, mask in te_text:
            cond = st.conditioning(emb, mask, None, None, None, resolution=32)
            with torch.no_grad():
                L.append(diffusion_loss(lambda z, tt: st.net(z, tt, **cond), te_x, st.schedule, "v", t=t, noise=noise))
        out.append(f"t={tv}: {L[0].mean():.5f} vs swapped {L[1].mean():.5f} ({(L[1] > L[0]).float().mean():.2f} worse)")
    st.net.train(); return "; ".join(out)
print("before:", gap(), flush=True)
emb_all, mask_all = enc.encode(tr_caps)
opt = torch.optim.AdamW(st.net.parameters(), lr=1e-4, weight_decay=0.0)
g = torch.Generator().manual_seed(1); t0 = time.time()
for step in range(1, steps + 1):
    idx = torch.randint(0, len(tr_caps), (32,), generator=g)
    t = tlo + (1 - tlo) * torch.rand(32, generator=g)
    cond = st.conditioning(emb_all[idx], mask_all[idx], None, None, None, resolution=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion_loss(lambda z, tt: st.net(z, tt, **cond), tr_x[idx], st.schedule, "v", t=t, generator=g).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 500 == 0:
        print(step, f"{time.time() - t0:.0f}s", gap(), flush=True)
if len(sys.argv) > 4:
    st.net.eval(); c.save_pretrained(sys.argv[4]); print("saved", sys.argv[4])

"""Peak accelerator memory of the paper's cascade (2B base at 64 px, 600M SR to 256, 400M SR
to 1024, T5-XXL encoder), computed on the meta device: nothing is allocated.

Weights: parameter counts of the presets (pixcade.nn.configs) and of a T5-XXL encoder built
from its config. Activations of one U-Net call (one image under guidance: 2 rows): the
down path's outputs the up path keeps (skips), plus the largest module's input and output
alive at once, plus the largest self-attention score matrix (rows x heads x N^2). fp32
runs keep 4-byte weights and activations; bf16 (autocast, what --dtype bf16 does) keeps
the fp32 weights and casts each to bf16 when used (2 more bytes per parameter of the
running network at worst) and 2-byte activations. Offloading holds one network at a time;
without it every network's weights stay resident.

    PYTHONPATH=. python scripts/memory_table.py
"""

from __future__ import annotations

import torch

from pixcade.nn.configs import get_preset
from pixcade.train.memory import TEXT_TOKENS, meta_unet

STAGES = [("base (2B, 64 px)", "base64", 64, None), ("SR 64->256 (600M)", "sr256", 256, 64),
          ("SR 256->1024 (400M)", "sr1024", 1024, 256)]
T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
              feed_forward_proj="gated-gelu")
GIB = 2**30


def unet_numbers(preset: str, res: int, rows: int = 2) -> tuple[int, int]:
    """(parameters, activation elements at peak) of one forward at ``res``."""
    cfg = get_preset(preset)
    net = meta_unet(cfg).eval()
    params = sum(p.numel() for p in net.parameters())
    largest = 0
    skip_elems = 0

    def hook(module, inputs, output):
        nonlocal largest
        n_in = sum(x.numel() for x in inputs if isinstance(x, torch.Tensor))
        n_out = output.numel() if isinstance(output, torch.Tensor) else 0
        largest = max(largest, n_in + n_out)

    def keep(module, inputs, output):
        nonlocal skip_elems
        skip_elems += output.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    handles += [b.register_forward_hook(keep) for b in net.down]
    with torch.no_grad(), torch.device("meta"):
        x = torch.zeros(rows, 3, res, res)
        kw = {}
        if cfg.lowres_cond:
            kw = {"lowres": torch.zeros(rows, 3, res, res), "aug_t": torch.zeros(rows)}
        net(x, torch.zeros(rows), torch.zeros(rows, TEXT_TOKENS, cfg.text_dim), torch.ones(rows, TEXT_TOKENS, dtype=torch.bool), **kw)
    for h in handles:
        h.remove()
    attn = 0
    levels = cfg.attn_levels or ()
    if levels:
        lvl = min(levels)
        n = (res // 2**lvl) ** 2
        heads = cfg.channels * cfg.channel_mult[lvl] // cfg.head_dim
        attn = rows * heads * n * n
    return params, skip_elems + largest + attn


def t5_xxl_params() -> int:
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**T5_XXL))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    rows = []
    for label, preset, res, _ in STAGES:
        p, a = unet_numbers(preset, res)
        rows.append((label, p, a))
    t5 = t5_xxl_params()
    t5_act = 4 * TEXT_TOKENS * T5_XXL["d_ff"]  # one prompt and its negative: a few d_ff-wide tensors
    print(f"| network | parameters | fp32 weights GiB | activations fp32 / bf16 GiB |")
    print("|---|---|---|---|")
    for label, p, a in rows + [("T5-XXL encoder", t5, t5_act)]:
        print(f"| {label} | {p / 1e9:.2f}B | {4 * p / GIB:.1f} | {4 * a / GIB:.2f} / {2 * a / GIB:.2f} |")
    nets = [(p, a, True) for _, p, a in rows] + [(t5, t5_act, False)]  # the encoder is not autocast
    all_weights = sum(p for p, _, _ in nets)
    print()
    print("| setting | peak GiB, no offload | peak GiB, --offload |")
    print("|---|---|---|")
    for dtype, wb, ab, cast in (("fp32", 4, 4, 0), ("bf16 (autocast)", 4, 2, 2)):
        no_off = max(4 * all_weights + cast * p * unet + ab * a for p, a, unet in nets) / GIB
        off = max(wb * p + cast * p * unet + ab * a for p, a, unet in nets) / GIB
        print(f"| {dtype} | {no_off:.1f} | {off:.1f} |")


if __name__ == "__main__":
    main()

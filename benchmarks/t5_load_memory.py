"""CPU memory of loading a T5 encoder in bfloat16 the way pixcade does (`text.encoders`).

    python benchmarks/t5_load_memory.py [--layers 12 --d-model 1024]

Saves a random T5 encoder (fp32 safetensors, like the hub's T5 checkpoints) to a temporary
directory, then loads it in a fresh process in bf16 and prints how much anonymous memory
(RssAnon: what cannot be dropped like file pages) the load added, against the model's bf16
and fp32 sizes. Built on the meta device and filled from the file, the load should add the
bf16 size, never the fp32 one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import T5Config, T5EncoderModel

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

LOADER = """
import json, sys, torch
from transformers import T5EncoderModel
from pixcade.text.encoders import _from_pretrained

def anon_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon"))
    return int(line.split()[1]) / 1024

before = anon_mb()
model = _from_pretrained(T5EncoderModel, sys.argv[1], True, torch.bfloat16)
print(json.dumps({"added_anon_mb": anon_mb() - before, "dtypes": sorted({str(p.dtype) for p in model.parameters()})}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=1024)
    a = p.parse_args(argv)
    cfg = T5Config(vocab_size=32128, d_model=a.d_model, d_kv=64, num_heads=a.d_model // 64, d_ff=4 * a.d_model,
                   num_layers=a.layers, dropout_rate=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        model = T5EncoderModel(cfg)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        out = subprocess.run([sys.executable, "-c", LOADER, tmp], capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(parameters=params, bf16_mb=params * 2 / 2**20, fp32_mb=params * 4 / 2**20,
                  torch=torch.__version__)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

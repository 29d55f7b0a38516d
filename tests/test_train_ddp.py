"""Two CPU processes under DDP (gloo), started the way torchrun starts them (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): identical weights, each sample once per epoch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from pixcade.nn.unet import EfficientUNet
from pixcade.stage import StageConfig
from pixcade.train.config import resolve_unet
from train_support import REPO, build_cache, make_shapes, state_equal, tiny_config_dict

WORKER = textwrap.dedent("""
    import json, os, sys
    from safetensors.torch import save_file
    from pixcade.train.config import CascadeTrainConfig
    from pixcade.train.trainer import train

    config = CascadeTrainConfig.from_dict(json.load(open(sys.argv[1])))
    result = train(config, "base", sys.argv[2], device="cpu")
    rank = os.environ["RANK"]
    # What each process ends with (only rank 0 writes checkpoints).
    save_file({k: v.contiguous() for k, v in result.net.state_dict().items()},
              os.path.join(sys.argv[2], f"net-rank{rank}.safetensors"))
    save_file(result.ema.state_dict(), os.path.join(sys.argv[2], f"ema-rank{rank}.safetensors"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp(tmp_path):
    n = 24
    data = make_shapes(tmp_path / "data", n, resolution=16)
    build_cache(tmp_path / "cache", data)
    # Global batch 8 = 2 ranks x 4: an epoch is 12 samples per rank = 3 steps; run 5 steps.
    conf = tiny_config_dict(data, tmp_path / "cache", "base", batch_size=8, max_steps=5, log_every=1,
                            checkpoint_every=1000, sample_every=1000, num_workers=0, log_sample_keys=True)
    (tmp_path / "c.json").write_text(json.dumps(conf))
    (tmp_path / "worker.py").write_text(WORKER)
    run = tmp_path / "run"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "c.json"),
                                       str(run)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    for part in ("net", "ema"):
        a, b = (load_file(run / f"{part}-rank{r}.safetensors") for r in range(2))
        assert state_equal(a, b), part
    # They trained: the weights moved away from the (shared, seeded) initialisation.
    torch.manual_seed(0)
    init = EfficientUNet(StageConfig.from_dict(resolve_unet(conf["stages"][0]["stage"])).unet).state_dict()
    assert not state_equal(init, load_file(run / "net-rank0.safetensors"))
    assert ckpt_step(run) == 5

    batches = {r: [json.loads(line) for line in (run / f"sample_keys/rank-{r}.jsonl").read_text().splitlines()]
               for r in range(2)}
    assert all(len(b) == 5 and all(len(x["keys"]) == 4 for x in b) for b in batches.values())
    epoch0 = [k for r in range(2) for x in batches[r] if x["epoch"] == 0 for k in x["keys"]]
    assert sorted(epoch0) == sorted(f"{i:05d}" for i in range(n))  # every sample, exactly once
    mine = [{k for x in batches[r] if x["epoch"] == 0 for k in x["keys"]} for r in range(2)]
    assert not mine[0] & mine[1]
    # The second epoch is reshuffled, not a replay of the first.
    epoch1 = [k for x in batches[0] if x["epoch"] == 1 for k in x["keys"]]
    assert epoch1 and epoch1 != [k for x in batches[0] if x["epoch"] == 0 for k in x["keys"]][: len(epoch1)]


def ckpt_step(run) -> int:
    from pixcade.train.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run / "checkpoints")).step

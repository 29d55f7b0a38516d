"""Two CPU processes under DDP (gloo), started the way torchrun starts them (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): identical weights, each sample once per epoch."""

from __future__ import annotations

import json
import textwrap

import torch
from safetensors.torch import load_file

from pixcade.nn.unet import EfficientUNet
from pixcade.stage import StageConfig
from pixcade.train.config import resolve_unet
from train_support import (RERUN_ON_RANK_CRASH, build_cache, launch, make_shapes, sample_keys_by_rank, state_equal,
                           tiny_config_dict, wait_all)

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


@RERUN_ON_RANK_CRASH
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
    wait_all(launch([str(tmp_path / "worker.py"), str(tmp_path / "c.json"), str(run)], 2))

    for part in ("net", "ema"):
        a, b = (load_file(run / f"{part}-rank{r}.safetensors") for r in range(2))
        assert state_equal(a, b), part
    # They trained: the weights moved away from the (shared, seeded) initialisation.
    torch.manual_seed(0)
    init = EfficientUNet(StageConfig.from_dict(resolve_unet(conf["stages"][0]["stage"])).unet).state_dict()
    assert not state_equal(init, load_file(run / "net-rank0.safetensors"))
    assert ckpt_step(run) == 5

    batches = sample_keys_by_rank(run, 2, steps=5, micro_batch=4, n=n)
    # The second epoch is reshuffled, not a replay of the first.
    epoch1 = [k for x in batches[0] if x["epoch"] == 1 for k in x["keys"]]
    assert epoch1 and epoch1 != [k for x in batches[0] if x["epoch"] == 0 for k in x["keys"]][: len(epoch1)]


def ckpt_step(run) -> int:
    from pixcade.train.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run / "checkpoints")).step

"""`pixcade train` with train.parallel "fsdp": two CPU processes (gloo) shard the U-Net, read
disjoint shares of the data, write sharded checkpoints, previews and the final export from
the gathered EMA; one process resumes their checkpoint."""

from __future__ import annotations

import json
import textwrap

import torch
from safetensors.torch import load_file

from pixcade.cli import main as pixcade_main
from pixcade.train import sharded_checkpoint as sc
from pixcade.train.config import CascadeTrainConfig
from pixcade.train.trainer import train
from train_support import (RERUN_ON_RANK_CRASH, build_cache, launch, make_shapes, sample_keys_by_rank,
                           tiny_config_dict, wait_all)

WORKER = textwrap.dedent("""
    import json, sys
    from pixcade.train.config import CascadeTrainConfig
    from pixcade.train.trainer import train

    train(CascadeTrainConfig.from_dict(json.load(open(sys.argv[1]))), "base", sys.argv[2], device="cpu")
""")


@RERUN_ON_RANK_CRASH
def test_two_process_fsdp_run_and_a_one_process_resume(tmp_path):
    n = 24
    data = make_shapes(tmp_path / "data", n, resolution=16)
    build_cache(tmp_path / "cache", data)
    # Global batch 8 = 2 ranks x 4: an epoch is 12 samples per rank = 3 steps; run 5 steps.
    conf = tiny_config_dict(data, tmp_path / "cache", "base", batch_size=8, max_steps=5, log_every=1,
                            checkpoint_every=4, sample_every=5, num_workers=0, log_sample_keys=True,
                            parallel="fsdp", checkpoint_res_blocks=True)
    (tmp_path / "c.json").write_text(json.dumps(conf))
    (tmp_path / "worker.py").write_text(WORKER)
    run = tmp_path / "run"
    wait_all(launch([str(tmp_path / "worker.py"), str(tmp_path / "c.json"), str(run)], 2))

    sample_keys_by_rank(run, 2, steps=5, micro_batch=4, n=n)

    last = run / "checkpoints" / "step-00000005"
    assert sc.is_sharded_checkpoint(run / "checkpoints" / "step-00000004") and sc.is_sharded_checkpoint(last)
    assert len(list(last.glob("*.distcp"))) == 2  # each rank wrote its shards
    final = load_file(run / "final" / "ema.safetensors")  # gathered from both ranks' EMA shards
    assert final.keys() == sc.read_full(last, "ema").keys()
    assert all(torch.equal(v, sc.read_full(last, "ema")[k]) for k, v in final.items())
    assert (run / "samples" / "step-00000005.png").is_file()
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([m for m in losses if m.get("loss") is not None]) == 5

    # One process resumes the two ranks' checkpoint: same weights, then trains on.
    config = CascadeTrainConfig.from_dict(conf)
    loaded = train(config, "base", run, resume=True, device="cpu", max_steps=5)
    whole = sc.read_full(last, "model")
    assert all(torch.equal(v, whole[k]) for k, v in loaded.net.state_dict().items())
    result = train(config, "base", run, resume=True, device="cpu", max_steps=6)
    assert result.step == 6 and sc.is_sharded_checkpoint(result.last_checkpoint)
    assert not all(torch.equal(v, whole[k]) for k, v in result.net.state_dict().items())


def test_cli_parallel_override_and_export_of_a_one_process_fsdp_run(tmp_path, capsys):
    data = make_shapes(tmp_path / "data", 8, resolution=16)
    build_cache(tmp_path / "cache", data)
    conf = tiny_config_dict(data, tmp_path / "cache", "base", batch_size=4, max_steps=2, log_every=1,
                            checkpoint_every=1, sample_every=1000, num_workers=0)
    (tmp_path / "c.json").write_text(json.dumps(conf))
    run = tmp_path / "run"
    base = ["train", "--config", str(tmp_path / "c.json"), "--stage", "base", "--out", str(run), "--device", "cpu"]
    assert pixcade_main([*base, "--parallel", "zero"]) == 2
    assert "invalid choice: 'zero'" in capsys.readouterr().err
    assert pixcade_main([*base, "--parallel", "fsdp"]) == 0
    first = run / "checkpoints" / "step-00000001"
    assert sc.is_sharded_checkpoint(first) and sc.is_sharded_checkpoint(run / "checkpoints" / "step-00000002")
    assert pixcade_main(["train", "export", "--run", str(run), "--checkpoint", "1"]) == 0
    exported = load_file(run / "exports" / "step-00000001" / "ema.safetensors")
    assert all(torch.equal(v, sc.read_full(first, "ema")[k]) for k, v in exported.items())

"""Shared helpers for the trainer tests: shapes data, its embedding cache, tiny configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pixcade.train.config import CascadeTrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny-shapes.json"


def make_shapes(directory: Path, n: int, resolution: int = 32, seed: int = 0) -> Path:
    """A folder dataset of ``n`` shapes scenes: NNNNN.png + NNNNN.txt."""
    from pixcade.data.render import render
    from pixcade.data.shapes import sample_scenes

    directory.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(sample_scenes(n, seed=seed)):
        render(scene, resolution).save(directory / f"{i:05d}.png")
        (directory / f"{i:05d}.txt").write_text(scene.caption)
    return directory


def build_cache(cache_dir: Path, data_dir: Path, max_length: int = 32) -> None:
    from pixcade.text.cache import EmbeddingCache
    from pixcade.text.encoders import load_text_encoder

    captions = sorted({p.read_text() for p in data_dir.glob("*.txt")})
    EmbeddingCache(cache_dir, "minilm", max_length).build(captions, load_text_encoder("minilm", max_length),
                                                          progress=False)


def tiny_config_dict(data: Path, cache: Path, stage: str, **train: Any) -> dict[str, Any]:
    """configs/tiny-shapes.json with one stage, pointed at ``data``/``cache``, train overrides."""
    d = json.loads(TINY_CONFIG.read_text())
    d["embedding_cache"] = str(cache)
    d["stages"] = [s for s in d["stages"] if s["stage"]["name"] == stage]
    d["stages"][0]["train"].update({"data": str(data), **train})
    return d


def tiny_config(data: Path, cache: Path, stage: str, **train: Any) -> CascadeTrainConfig:
    return CascadeTrainConfig.from_dict(tiny_config_dict(data, cache, stage, **train))


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], world_size: int, **env: str) -> list[subprocess.Popen]:
    """``world_size`` processes of ``python argv...`` with the variables torchrun sets (gloo
    on CPU, one thread each), importing this checkout's pixcade."""
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        full = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **env)
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, env=full, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    return procs


class RankCrashed(AssertionError):
    """A rank was killed by a signal (SIGABRT, SIGSEGV, ...): a crash in native code, which
    our Python cannot cause by a wrong result; any rank that merely failed is an ordinary
    AssertionError."""


# gloo on CPU (torch 2.13) crashes now and then in a rank that did nothing wrong: heap
# corruption ("malloc(): unaligned tcache chunk detected") while resuming the two-rank FSDP
# run, once in CI, never in 45 runs here (also under glibc's malloc checker); "terminate
# called without an active exception" at exit of the two-rank embed (about 1 run in 7 one
# session, 0 in 13 the next). A multi-process test therefore reruns once, from scratch, on
# RankCrashed only; the rerun is listed in the summary, and a second crash or any wrong
# result still fails.
RERUN_ON_RANK_CRASH = pytest.mark.flaky(reruns=1, only_rerun=["RankCrashed"])


def wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Their outputs; asserts every process exited 0 (RankCrashed if one died by a signal)."""
    outputs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    codes = [p.returncode for p in procs]
    tail = "\n".join(outputs)[-4000:]
    crashed = [f"rank {r}: {signal.Signals(-c).name}" for r, c in enumerate(codes) if c < 0]
    if crashed:
        raise RankCrashed(f"{', '.join(crashed)}\n{tail}")
    assert codes == [0] * len(procs), tail
    return outputs


def sample_keys_by_rank(run: Path, world_size: int, steps: int, micro_batch: int, n: int) -> dict[int, list[dict]]:
    """RUN/sample_keys of a ``log_sample_keys`` run, checked: ``steps`` batches of
    ``micro_batch`` per rank, and epoch 0 held every one of the ``n`` samples exactly once,
    each on one rank only."""
    batches = {r: [json.loads(line) for line in (run / f"sample_keys/rank-{r}.jsonl").read_text().splitlines()]
               for r in range(world_size)}
    assert all(len(b) == steps and all(len(x["keys"]) == micro_batch for x in b) for b in batches.values())
    epoch0 = [k for r in range(world_size) for x in batches[r] if x["epoch"] == 0 for k in x["keys"]]
    assert sorted(epoch0) == sorted(f"{i:05d}" for i in range(n))  # every sample, exactly once
    mine = [{k for x in batches[r] if x["epoch"] == 0 for k in x["keys"]} for r in range(world_size)]
    assert sum(len(m) for m in mine) == len(set().union(*mine))  # no sample on two ranks
    return batches

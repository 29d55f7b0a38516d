"""`pixcade embed` under torchrun (two CPU processes, gloo): the ranks' shards make the same
cache as one process, and a run killed midway resumes without re-encoding what it finished."""

from __future__ import annotations

import itertools
import json
import signal
import textwrap
import time

import pytest
import torch
from safetensors import safe_open

from pixcade.cli import main as pixcade_main
from pixcade.text.cache import EmbeddingCache, cache_key
from pixcade.text.distributed import PARTS, merge_parts, parts_root
from pixcade.text.encoders import encoder_name
from tiny_text import WORDS
from train_support import RERUN_ON_RANK_CRASH, launch, wait_all

CAPTIONS = [" ".join(w) for w in itertools.islice(itertools.combinations(WORDS[3:12], 3), 30)]


@RERUN_ON_RANK_CRASH
def test_two_process_embed_equals_one_process_entry_for_entry(t5_dir, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS + CAPTIONS[:5]) + "\n")
    args = ["embed", "--captions", str(captions), "--encoder", str(t5_dir), "--max-length", "32",
            "--batch-size", "4", "--shard-mb", "0.001"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert pixcade_main([*args, "--out", str(one)]) == 0
    outputs = wait_all(launch(["-m", "pixcade.cli", *args, "--out", str(two)], 2))
    assert "35 captions (30 distinct): 30 embedded, 0 already cached" in outputs[0]

    name = encoder_name(t5_dir)
    a, b = EmbeddingCache(one, name, 32), EmbeddingCache(two, name, 32)
    assert a.keys() == b.keys() and len(b) == 30
    for caption, x, y in zip(CAPTIONS, a.get(CAPTIONS), b.get(CAPTIONS)):
        assert x.shape == y.shape and torch.equal(x, y), caption
    assert not (two / PARTS).exists()  # every part merged and removed
    assert len(list(two.glob("shard-*.safetensors"))) >= 4  # several shards, from both ranks


BUILDER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    from pixcade.text.distributed import build_distributed
    from pixcade.train import distributed as dist

    class LoggingEncoder:  # embeds a caption as a function of it; logs what it encoded
        name, max_length, dim = "fake", 8, 2

        def encode_each(self, captions, batch_size=32):
            time.sleep(float(os.environ["ENCODE_SLEEP"]))
            with open(os.environ["ENCODE_LOG"] + os.environ["RANK"], "a") as f:
                f.writelines(c + "\\n" for c in captions)
            return [torch.full((len(c.split()), 2), float(len(c))) for c in captions]

    info = dist.setup("cpu")
    n = build_distributed(info, sys.argv[1], sys.argv[2:], LoggingEncoder(), batch_size=1, progress=False,
                          shard_bytes=1)
    print("computed", n)
    dist.teardown(info)
""")


@RERUN_ON_RANK_CRASH
def test_killed_distributed_embed_resumes_without_reencoding(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILDER)
    cache_dir = tmp_path / "cache"
    first = launch([str(script), str(cache_dir), *CAPTIONS], 2, ENCODE_SLEEP="0.3",
                   ENCODE_LOG=str(tmp_path / "first-"))
    deadline = time.monotonic() + 120
    while len(list(cache_dir.glob(f"{PARTS}/*/rank-*/shard-*.safetensors"))) < 4:
        assert time.monotonic() < deadline and all(p.poll() is None for p in first), "no shards written"
        time.sleep(0.05)
    for p in first:
        p.send_signal(signal.SIGKILL)
        p.wait()
    finished = {c for c in CAPTIONS if c in _shard_captions(cache_dir)}
    assert 4 <= len(finished) < len(CAPTIONS)

    outputs = wait_all(launch([str(script), str(cache_dir), *CAPTIONS], 2, ENCODE_SLEEP="0",
                              ENCODE_LOG=str(tmp_path / "second-")))
    again = [c for r in range(2) if (tmp_path / f"second-{r}").exists()
             for c in (tmp_path / f"second-{r}").read_text().splitlines()]
    assert not set(again) & finished and sorted(again) == sorted(set(CAPTIONS) - finished)
    assert f"computed {len(CAPTIONS) - len(finished)}" in outputs[0]
    cache = EmbeddingCache(cache_dir, "fake", 8)
    assert cache.missing(CAPTIONS) == [] and not (cache_dir / PARTS).exists()
    for caption, emb in zip(CAPTIONS, cache.get(CAPTIONS)):
        assert torch.equal(emb, torch.full((len(caption.split()), 2), float(len(caption))))


def _shard_captions(cache_dir) -> set[str]:
    """Captions whose embedding sits in a finished shard file of any part (from the shards'
    own metadata, as a resumed build sees them, index or not)."""
    keys = set()
    for path in cache_dir.glob(f"{PARTS}/*/rank-*/shard-*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            keys |= {k for k, _, _ in json.loads(f.metadata()["entries"])}
    return {c for c in CAPTIONS if cache_key("fake", 8, c) in keys}


class _Fake:
    name, max_length, dim = "fake", 8, 2

    def encode_each(self, captions, batch_size=32):
        return [torch.full((len(c.split()), 2), float(len(c))) for c in captions]


def test_a_damaged_part_shard_is_left_where_it_is(tmp_path):
    main = EmbeddingCache(tmp_path / "cache", "fake", 8)
    part_dir = parts_root(main) / "rank-00000-of-00002"
    EmbeddingCache(part_dir, "fake", 8).build(CAPTIONS[:3], _Fake(), batch_size=1, progress=False, shard_bytes=1)
    shards = sorted(part_dir.glob("shard-*.safetensors"))
    data = bytearray(shards[0].read_bytes())
    data[-1] ^= 0xFF
    shards[0].write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        assert merge_parts(main) == 2
    assert shards[0].exists() and len(EmbeddingCache(tmp_path / "cache", "fake", 8).missing(CAPTIONS[:3])) == 1

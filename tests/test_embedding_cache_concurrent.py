"""Two processes building into one embedding cache at once (two stages starting to train
together): neither loses the other's captions, and every shard checks out."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from pixcade.text.cache import EmbeddingCache
from train_support import REPO

BUILDER = textwrap.dedent("""
    import sys, time
    import torch
    from pixcade.text.cache import EmbeddingCache

    class SlowEncoder:  # one shard per caption, slowly: the two builds overlap in time
        name, max_length, dim = "fake", 8, 2

        def encode_each(self, captions, batch_size=32):
            time.sleep(0.05)
            return [torch.full((len(c.split()), 2), float(len(c))) for c in captions]

    EmbeddingCache(sys.argv[1], "fake", 8).build(sys.argv[2:], SlowEncoder(), batch_size=1, progress=False,
                                                  shard_bytes=1)
""")


def test_concurrent_builds_keep_every_caption(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILDER)
    cache_dir = tmp_path / "cache"
    sets = [[f"{who} caption {k}" + " word" * (k % 3) for k in range(15)] for who in ("base", "super-res")]
    procs = [subprocess.Popen([sys.executable, str(script), str(cache_dir), *captions], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for captions in sets]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    everything = sets[0] + sets[1]
    cache = EmbeddingCache(cache_dir, "fake", 8)
    assert cache.missing(everything) == [] and len(cache) == 30
    for caption, emb in zip(everything, cache.get(everything)):  # checksums verified on open
        assert torch.equal(emb, torch.full((len(caption.split()), 2), float(len(caption))))
    assert len(list(cache_dir.glob("shard-*.safetensors"))) == 30  # no shard overwritten or orphaned

"""Embedding cache and `pixcade embed`: round trips, no recomputation, misses on a changed
encoder or length, detection and rebuild of truncated/corrupt shards, the CLI end to end."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from pixcade.cli import main as pixcade_main
from pixcade.errors import PixcadeError
from pixcade.text.cache import INDEX_NAME, EmbeddingCache, cache_key
from pixcade.text.encoders import encoder_name, load_text_encoder
from tiny_text import TINY_DIM, make_tiny_t5

CAPTIONS = ["a red cube", "two blue spheres", "a small green cone on the left of a cube", "",
            "a yellow cylinder above a big red sphere", "three cones"]


class Counting:
    """Wraps an encoder, recording every caption it is asked to embed."""

    def __init__(self, encoder):
        self.encoder, self.calls, self.seen = encoder, 0, []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_each(self, captions, batch_size=32):
        self.calls += 1
        self.seen += list(captions)
        return self.encoder.encode_each(captions, batch_size=batch_size)


class HugeEncoder:
    """An encoder whose outputs overflow float16: 1e6 * (word index + 1)."""

    name, max_length, dim = "huge", 8, 3

    def encode_each(self, captions, batch_size=32):
        return [torch.arange(1, len(c.split()) + 1, dtype=torch.float32)[:, None].repeat(1, 3) * 1e6
                for c in captions]


def expected(encoder, captions):
    return [encoder.encode_each([c])[0] for c in captions]


def assert_matches(got, want):
    # float16 storage: relative rounding error at most 2**-11.
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2**-10, atol=1e-6)


def built_cache(directory, encoder, captions=CAPTIONS, **kw):
    cache = EmbeddingCache(directory, encoder.name, encoder.max_length)
    counting = Counting(encoder)
    computed = cache.build(captions, counting, progress=False, **kw)
    return cache, counting, computed


def shard_of(directory, encoder, caption):
    index = json.loads((directory / INDEX_NAME).read_text())
    return index["entries"][cache_key(encoder.name, encoder.max_length, caption)][0]


def test_round_trip_stores_only_real_tokens(t5, tmp_path):
    cache, counting, computed = built_cache(tmp_path, t5, CAPTIONS + CAPTIONS[:2])  # duplicates
    assert computed == len(CAPTIONS) and sorted(counting.seen) == sorted(CAPTIONS)  # each once
    got = cache.get(CAPTIONS[::-1])
    assert_matches(got, expected(t5, CAPTIONS[::-1]))
    assert got[CAPTIONS[::-1].index("")].shape == (0, TINY_DIM)  # the unconditional caption
    assert len(cache) == len(CAPTIONS) and cache.missing(CAPTIONS) == []
    # Variable length: the shards hold exactly the real tokens, no padding to max_length.
    total = 0
    for shard in tmp_path.glob("shard-*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += f.get_slice("embeddings").get_shape()[0]
    assert total == sum(g.shape[0] for g in got)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_second_run_computes_nothing(t5, tmp_path):
    built_cache(tmp_path, t5)
    cache, counting, computed = built_cache(tmp_path, t5)  # a fresh reader, like a new process
    assert computed == 0 and counting.calls == 0
    more = ["a big cube", "a small cone"]
    cache, counting, computed = built_cache(tmp_path, t5, CAPTIONS + more)
    assert computed == 2 and sorted(counting.seen) == sorted(more)
    assert_matches(cache.get(more + CAPTIONS[:1]), expected(t5, more + CAPTIONS[:1]))


def test_changed_encoder_or_max_length_is_a_miss(t5, t5_dir, tmp_path):
    built_cache(tmp_path, t5)
    other = load_text_encoder(str(make_tiny_t5(tmp_path / "other-t5", seed=1)), max_length=32)
    assert other.name != t5.name
    with pytest.raises(PixcadeError, match="not in the embedding cache"):
        EmbeddingCache(tmp_path, other.name, 32).get(CAPTIONS[:1])
    cache, counting, computed = built_cache(tmp_path, other)
    assert computed == len(CAPTIONS) and sorted(counting.seen) == sorted(CAPTIONS)
    assert_matches(cache.get(CAPTIONS), expected(other, CAPTIONS))
    shorter = load_text_encoder(str(t5_dir), max_length=8)
    with pytest.raises(PixcadeError, match="max_length 8"):
        EmbeddingCache(tmp_path, t5.name, 8).get(CAPTIONS[:1])
    with pytest.warns(UserWarning, match="truncated to 8 tokens"):
        cache, _, computed = built_cache(tmp_path, shorter)
    assert computed == len(CAPTIONS)
    # Both configurations live side by side in one directory.
    assert_matches(EmbeddingCache(tmp_path, t5.name, 32).get(CAPTIONS), expected(t5, CAPTIONS))
    with pytest.raises(PixcadeError, match="does not match this cache"):
        EmbeddingCache(tmp_path, t5.name, 32).build(CAPTIONS, other)


def test_missing_caption_error_names_it_and_says_what_to_run(t5, tmp_path):
    cache, _, _ = built_cache(tmp_path, t5)
    with pytest.raises(PixcadeError, match=r"1 caption\(s\).*'a purple torus'.*pixcade embed") as err:
        cache.get(["a red cube", "a purple torus"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_shard_is_detected_and_rebuilt(t5, tmp_path, damage):
    # One shard per batch of two captions, so damage hits exactly two captions.
    built_cache(tmp_path, t5, batch_size=2, shard_bytes=1)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 3
    victim = tmp_path / shard_of(tmp_path, t5, "a red cube")
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[:-20]
    else:
        data[-5] ^= 0xFF  # same size, one float's bits changed
    victim.write_bytes(bytes(data))
    in_victim = [c for c in CAPTIONS if shard_of(tmp_path, t5, c) == victim.name]
    elsewhere = [c for c in CAPTIONS if c not in in_victim and c]

    reader = EmbeddingCache(tmp_path, t5.name, 32)
    message = "truncated" if damage == "truncate" else "corrupt"
    with pytest.raises(PixcadeError, match=message):
        reader.get(["a red cube"])
    assert_matches(reader.get(elsewhere), expected(t5, elsewhere))  # other shards still fine

    cache = EmbeddingCache(tmp_path, t5.name, 32)
    counting = Counting(t5)
    with pytest.warns(UserWarning, match="recomputing"):
        computed = cache.build(CAPTIONS, counting, progress=False)
    assert computed == len(in_victim) == 2 and sorted(counting.seen) == sorted(in_victim)
    assert (tmp_path / "set-aside" / victim.name).read_bytes() == bytes(data)  # kept, not deleted
    assert_matches(EmbeddingCache(tmp_path, t5.name, 32).get(CAPTIONS), expected(t5, CAPTIONS))


@pytest.mark.parametrize("damage", ["truncate by one byte", "garbage"])
def test_unreadable_index_is_an_error_then_rebuilt_from_the_shards(t5, tmp_path, damage):
    built_cache(tmp_path, t5, batch_size=2, shard_bytes=1)
    index = tmp_path / INDEX_NAME
    original = index.read_bytes()
    index.write_bytes(original[:-1] if damage == "truncate by one byte" else b"\x00\xff not json")
    with pytest.raises(PixcadeError, match="unreadable.*rebuilds it"):
        EmbeddingCache(tmp_path, t5.name, 32).get(CAPTIONS[:1])
    with pytest.warns(UserWarning, match="rebuilt it from 3 shard"):
        cache, counting, computed = built_cache(tmp_path, t5)
    assert computed == 0 and counting.seen == []  # nothing lost, nothing recomputed
    assert json.loads(index.read_text()) == json.loads(original)
    assert_matches(cache.get(CAPTIONS), expected(t5, CAPTIONS))
    kept = list(tmp_path.glob(INDEX_NAME + ".unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes() != original  # the damaged index, kept


def test_shards_that_cannot_be_adopted_are_set_aside_never_deleted(t5, tmp_path):
    built_cache(tmp_path, t5, CAPTIONS[:2])
    shard = next(tmp_path.glob("shard-*.safetensors"))
    # A shard written without its entries (as by an older pixcade) cannot be re-indexed.
    with safe_open(str(shard), "pt") as f:
        tensors, meta = {"embeddings": f.get_tensor("embeddings")}, f.metadata()
    from safetensors.torch import save_file

    save_file(tensors, str(shard), metadata={k: v for k, v in meta.items() if k != "entries"})
    legacy = shard.read_bytes()
    (tmp_path / INDEX_NAME).write_text("{")
    with pytest.warns(UserWarning) as warned:
        cache, _, computed = built_cache(tmp_path, t5)
    messages = [str(w.message) for w in warned]
    assert any("index was unreadable" in m for m in messages), messages
    assert any("not a readable pixcade cache shard" in m for m in messages), messages
    assert computed == len(CAPTIONS)
    assert (tmp_path / "set-aside" / shard.name).read_bytes() == legacy
    # The unreadable index is kept beside the rebuilt one, byte for byte.
    assert [p.read_text() for p in tmp_path.glob(f"{INDEX_NAME}.unreadable-*")] == ["{"]
    assert_matches(cache.get(CAPTIONS), expected(t5, CAPTIONS))


def test_an_index_of_another_version_is_refused_and_left_untouched(t5, tmp_path):
    built_cache(tmp_path, t5, CAPTIONS[:2])
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    (tmp_path / INDEX_NAME).write_text(json.dumps({**index, "version": 2}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for attempt in (lambda c: c.get(CAPTIONS[:1]), lambda c: c.build(CAPTIONS, t5, progress=False)):
        with pytest.raises(PixcadeError, match="format version 2.*left untouched"):
            attempt(EmbeddingCache(tmp_path, t5.name, 32))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_leftovers_of_an_interrupted_build_are_adopted_or_cleaned(t5, tmp_path):
    built_cache(tmp_path, t5, CAPTIONS[:2])
    index_after_first = (tmp_path / INDEX_NAME).read_bytes()
    built_cache(tmp_path, t5, CAPTIONS[:4])
    # Killed after the second shard was written but before the index named it:
    (tmp_path / INDEX_NAME).write_bytes(index_after_first)
    (tmp_path / "shard-000042.safetensors").write_bytes(b"not a shard")
    (tmp_path / ".index.json.abc.tmp").write_text("{")
    with pytest.warns(UserWarning, match="not a readable pixcade cache shard"):
        cache, _, computed = built_cache(tmp_path, t5)
    assert computed == len(CAPTIONS) - 4  # the orphan shard's two captions were adopted
    assert not (tmp_path / ".index.json.abc.tmp").exists()
    assert (tmp_path / "set-aside" / "shard-000042.safetensors").read_bytes() == b"not a shard"
    assert_matches(cache.get(CAPTIONS), expected(t5, CAPTIONS))


def test_values_beyond_float16_range_are_stored_exactly(tmp_path):
    cache = EmbeddingCache(tmp_path, "huge", 8)
    cache.build(["one two three", "one"], HugeEncoder(), progress=False)
    got = EmbeddingCache(tmp_path, "huge", 8).get(["one two three", "one"])
    assert torch.equal(got[0][:, 0], torch.tensor([1e6, 2e6, 3e6])) and torch.isfinite(got[0]).all()
    assert got[1].shape == (1, 3)


def test_cache_pickles_for_dataloader_workers(t5, tmp_path):
    cache, _, _ = built_cache(tmp_path, t5)
    cache.get(CAPTIONS[:1])  # opens a shard handle
    clone = pickle.loads(pickle.dumps(cache))
    assert_matches(clone.get(CAPTIONS), expected(t5, CAPTIONS))


def test_cli_embed_captions_file_end_to_end(t5_dir, t5, tmp_path, capsys):
    captions_file = tmp_path / "captions.txt"
    captions_file.write_text("a red cube\n\ntwo blue spheres\na red cube\n", encoding="utf-8")
    out = tmp_path / "cache"
    argv = ["embed", "--captions", str(captions_file), "--encoder", str(t5_dir), "--max-length", "32",
            "--out", str(out), "--batch-size", "2"]
    assert pixcade_main(argv) == 0
    assert "3 captions (2 distinct): 2 embedded, 0 already cached" in capsys.readouterr().out
    assert pixcade_main(argv) == 0
    assert "0 embedded, 2 already cached" in capsys.readouterr().out
    cache = EmbeddingCache(out, encoder_name(t5_dir), 32)
    assert_matches(cache.get(["two blue spheres", "a red cube"]), expected(t5, ["two blue spheres", "a red cube"]))


def test_cli_embed_dataset_folder(t5_dir, t5, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i, text in enumerate(["a red cube", "three cones"]):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(text + "\n", encoding="utf-8")
    out = tmp_path / "cache"
    assert pixcade_main(["embed", "--data", str(data), "--encoder", str(t5_dir), "--max-length", "32",
                         "--out", str(out)]) == 0
    assert "2 embedded" in capsys.readouterr().out
    cache = EmbeddingCache(out, t5.name, 32)
    assert_matches(cache.get(["three cones", "a red cube"]), expected(t5, ["three cones", "a red cube"]))


def test_cli_embed_counts_and_reports_unreadable_shards(t5_dir, tmp_path, capsys):
    import io
    import tarfile

    data = tmp_path / "shards"
    data.mkdir()
    for s in range(3):
        with tarfile.open(data / f"{s:05d}.tar", "w") as tar:
            for i in range(2):
                for ext, payload in (("png", b"\x89PNG not decoded here"), ("txt", f"caption {s} {i}".encode())):
                    info = tarfile.TarInfo(f"{s}-{i}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    whole = (data / "00001.tar").read_bytes()
    (data / "00001.tar").write_bytes(whole[:2600])  # cut inside its second sample
    (data / "00002.tar").write_bytes(b"\x00" * 100)  # not a tar at all
    assert pixcade_main(["embed", "--data", str(data), "--encoder", str(t5_dir), "--max-length", "32",
                         "--out", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if "warning" in line]
    assert "2 of 3 shard(s) could not be read" in warning and "00001.tar" in warning and "00002.tar" in warning
    assert captured.out.startswith("3 captions")  # shard 0's two and shard 1's first


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert pixcade_main(["embed", "--captions", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "cannot read captions file" in err and len(err.strip().splitlines()) == 1

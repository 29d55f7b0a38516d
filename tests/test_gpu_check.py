"""benchmarks/gpu_check.sh in its fake-small mode (CPU, tiny presets, this interpreter): every
step it runs on a GPU runs here too and lands in the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pixcade.diffusion import precision
from train_support import REPO


def test_gpu_check_fake_small_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, GPU_CHECK_FAKE_SMALL="1", GPU_CHECK_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["fake_small"] is True and "--fake-small" in result["command"]
    tests = result["cuda_tests"]
    assert tests["returncode"] == 0 and "skipped" in tests["summary"]  # no GPU here: the cuda tests skip
    rows = result["training"]
    assert [(r["stage"], r["mode"]) for r in rows] == [("tiny-base", "single"), ("tiny-sr", "single"),
                                                       ("tiny-base", "fsdp (1 rank)")]
    for row in rows:
        assert "error" not in row, row
        assert row["images_per_s"] > 0 and row["flops_per_image"] > 1e6 and row["batch"] == 4
        assert row["achieved_tflops"] * 1e12 * row["step_s"] == pytest.approx(
            row["flops_per_image"] * row["batch"], rel=1e-6)
        assert row["mfu"] is None and row["peak_memory_gb"] is None  # no GPU peak to compare with
    # The sharded step does the same work as the plain one.
    assert rows[2]["flops_per_image"] == rows[0]["flops_per_image"]
    assert result["sampling"]["images"] == 4 and result["sampling"]["size"] == [128, 128]
    mem = result["sampling_memory"]
    assert [(r["network"], r["dtype"]) for r in mem["calls"]] == [
        ("tiny-base", "fp32"), ("tiny-base", "bf16"), ("tiny-sr", "fp32"), ("tiny-sr", "bf16"), ("t5 encoder", "fp32")]
    for row in mem["calls"]:  # on the CPU the trace only misses kernels' temporaries
        # (large ones where bf16 is emulated: test_sampling_memory says why)
        low = 0.75 if row["dtype"] == "fp32" or precision.cpu_computes_bf16() else 0.0
        assert low * row["measured_peak_bytes"] <= row["traced_peak_bytes"] <= 1.02 * row["measured_peak_bytes"], row
    # On the CPU offloading moves nothing, so both runs hold the same bytes.
    run = mem["shapes_cascade"]
    assert run["offload=False"]["peak_bytes"] == run["offload=True"]["peak_bytes"] > 0

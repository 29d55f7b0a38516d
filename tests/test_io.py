"""Atomic writes: the target is the old file or the whole new one, never anything else."""

from __future__ import annotations

import os

import pytest

from pixcade.io import atomic_write, atomic_write_bytes, atomic_write_text


def test_round_trips_and_replaces(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "ünïcode\n")
    assert path.read_bytes() == "ünïcode\n".encode("utf-8")
    atomic_write_bytes(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert os.listdir(tmp_path) == ["f.json"]  # no temporary file left beside it


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    seen = []

    def half_then_fail(tmp: str) -> None:
        seen.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"ne")
        raise KeyboardInterrupt  # even an interrupt cleans up

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["weights.bin"]
    # The temporary file is hidden, beside the target, and named after it.
    name = os.path.basename(seen[0])
    assert os.path.dirname(seen[0]) == str(tmp_path) and name.startswith(".weights.bin.") and name.endswith(".tmp")


def test_temporary_names_differ_between_writes(tmp_path):
    names = []
    for _ in range(2):
        atomic_write(tmp_path / "a", lambda tmp: (names.append(tmp), open(tmp, "wb").close()))
    assert names[0] != names[1]


def test_new_files_get_the_usual_permissions(tmp_path):
    # A temporary file made by mkstemp is private (0600); the saved file must not be.
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "x", b"1")
    finally:
        os.umask(umask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644


def test_save_tensors_round_trip_with_metadata(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pixcade.io import save_tensors

    w = torch.arange(12.0).reshape(3, 4).requires_grad_()
    tensors = {"w": w, "t": w.detach().t(), "h": torch.tensor([1, 2], dtype=torch.float16)}  # t: not contiguous
    save_tensors(tmp_path / "m.safetensors", tensors, metadata={"kind": "test"})
    back = load_file(str(tmp_path / "m.safetensors"))
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k].detach()) and back[k].dtype == tensors[k].dtype for k in tensors)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata() == {"kind": "test"}
    assert os.listdir(tmp_path) == ["m.safetensors"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_weights_and_text_get_the_users_umask(tmp_path, umask):
    """safetensors creates its file private (0600); a saved file must still be readable by
    whom the user's umask allows."""
    import torch

    from pixcade.io import save_tensors

    old = os.umask(umask)
    try:
        save_tensors(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
        atomic_write_text(tmp_path / "t.json", "{}")
    finally:
        os.umask(old)
    for name in ("w.safetensors", "t.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_kill_9_mid_write_leaves_debris_the_next_run_removes(tmp_path):
    """A writer killed with -9 leaves its temporary file; the next run into the directory
    (here: a generation run preparing its output folder) removes it, and leaves alone the
    temporary file of a writer that is still alive."""
    import signal
    import subprocess
    import sys

    from pixcade.pipeline.jobs import Layout

    code = (
        "import time, sys\n"
        "from pixcade.io import atomic_write\n"
        "def slow(tmp):\n"
        "    open(tmp, 'wb').write(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "atomic_write(sys.argv[1], slow)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / name)], stdout=subprocess.PIPE)
             for name in ("killed.png", "alive.png")]
    try:
        for proc in procs:
            assert proc.stdout.readline() == b"writing\n"
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        debris = sorted(p.name for p in tmp_path.iterdir())
        assert len(debris) == 2 and all(n.endswith(".tmp") for n in debris)
        Layout(tmp_path, 1, 1).prepare(["a prompt"], {})
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        assert len(left) == 1 and left[0].startswith(".alive.png.")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_export(tmp_path):
    import subprocess

    import torch

    from pixcade.train.export import write_stage_export

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has ended, like a writer killed with -9
    debris = tmp_path / f".final.{gone.pid}-0123456789ab.tmp"
    debris.mkdir()
    (debris / "ema.safetensors").write_bytes(b"half")
    write_stage_export(tmp_path / "final", {"name": "base"}, "minilm", 32, {"w": torch.zeros(1)}, step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


@pytest.mark.parametrize("final_exists", [False, True])
def test_an_export_killed_between_its_renames_loses_nothing(tmp_path, final_exists):
    """Killed after moving the previous export aside and before renaming the new one in:
    the next export puts the previous one back first (or, when a whole newer one is in
    place, drops it), so the folder never stays without its export."""
    import subprocess

    import torch
    from safetensors.torch import load_file

    from pixcade.train.export import _recover_previous, write_stage_export

    def export(path, value):
        write_stage_export(path, {"name": "base"}, "minilm", 32, {"w": torch.full((1,), value)}, step=int(value))

    def weight():
        return load_file(str(tmp_path / "final" / "ema.safetensors"))["w"].item()

    if final_exists:
        export(tmp_path / "final", 2.0)
    gone = subprocess.Popen(["true"])
    gone.wait()  # the killed exporter's pid
    export(tmp_path / f".final.{gone.pid}.old", 1.0)
    _recover_previous(tmp_path / "final")  # what the next export does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert weight() == (2.0 if final_exists else 1.0)
    export(tmp_path / "final", 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"] and weight() == 3.0


def test_any_atomic_write_into_a_folder_clears_dead_writers_debris_first(tmp_path):
    """Every output folder (eval reports, drawbench images, ...), not only generate's and
    train's: the first atomic write of a process into a folder removes the temporary files
    of writers that are gone, and keeps those of live ones."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    dead = tmp_path / f".report.json.{dead_pid}-0123456789ab.tmp"
    alive = tmp_path / f".votes.json.{os.getppid()}-ba9876543210.tmp"
    dead.write_text("half")
    alive.write_text("half")
    atomic_write_text(tmp_path / "scores.json", "{}")
    assert not dead.exists() and alive.exists()
    assert (tmp_path / "scores.json").read_text() == "{}"


def test_the_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    # safetensors writes its metadata map in a random order; a weights file's sha256 (the digest
    # a report cites) must name its content, so every save of the same content is the same file.
    import hashlib

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pixcade.io import save_tensors

    metadata = {f"key{i}": f"välue {i} with \"quotes\"\nand a line" for i in range(6)}
    tensors = {"b": torch.randn(3, 2), "a": torch.arange(5)}
    digests = set()
    for i in range(4):
        path = tmp_path / f"{i}.safetensors"
        save_tensors(path, tensors, metadata=metadata)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == metadata
        assert all(torch.equal(load_file(str(path))[k], tensors[k]) for k in tensors)
    assert len(digests) == 1

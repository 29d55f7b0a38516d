"""FID/KID maths against closed forms and independent computations; the Inception loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pixcade.errors import PixcadeError
from cli_support import verbs
from pixcade.eval.fid import extract_features, fid_from_features, frechet_distance, kernel_inception_distance
from pixcade.eval.inception import FIDInceptionV3, load_inception

eval_main = verbs("eval")


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_commuting_covariances_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = np.zeros(6)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-7)


def test_frechet_general_covariances_match_symmetric_form():
    # Independent route: Tr((S1^1/2 S2 S1^1/2)^1/2) via eigendecompositions only.
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 7), _random_spd(rng, 7)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    r = _psd_sqrt(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(_psd_sqrt(r @ s2 @ r))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)


def test_fid_same_distribution_near_zero_and_shift_scores_higher():
    rng = np.random.default_rng(3)
    cov = _random_spd(rng, 4)
    draw = lambda n, mu: rng.multivariate_normal(mu, cov, size=n)  # noqa: E731
    same = fid_from_features(draw(4000, np.zeros(4)), draw(4000, np.zeros(4)))
    shift = np.full(4, 0.5)
    shifted = fid_from_features(draw(4000, np.zeros(4)), draw(4000, shift))
    assert same < 0.02
    # A pure mean shift has FID |shift|^2 = 1.0 exactly in the population.
    assert shifted == pytest.approx(1.0, abs=0.1)


def test_singular_covariance_gives_finite_fid():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 32)), rng.normal(size=(5, 32)) + 1  # 5 samples in 32 dims
    assert np.isfinite(fid_from_features(x, y))


def _mmd2_by_definition(x, y):
    k = lambda a, b: (a @ b / len(a) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_definition_and_separates_distributions():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.7
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(_mmd2_by_definition(x, y), rel=1e-9)
    assert std == 0
    same, _ = kernel_inception_distance(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)), 20, 200)
    far, _ = kernel_inception_distance(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) + 1, 20, 200)
    assert abs(same) < 0.01 < far


# ---- the Inception loading path ---------------------------------------------------------

@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    net = FIDInceptionV3()
    with torch.no_grad():  # non-trivial BN statistics, so a dropped buffer would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def probe_images():
    return torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def probe_features(random_inception, probe_images):
    with torch.no_grad():
        return random_inception(probe_images)


def test_inception_layout_matches_fid_network(random_inception, probe_features):
    # torchvision's Inception-v3 without aux head and without its 1000-way fc has
    # 21,785,568 parameters; the FID graph changes pooling only, not parameters.
    assert sum(p.numel() for p in random_inception.parameters()) == 21_785_568
    feats = probe_features
    assert feats.shape == (1, 2048)
    assert (feats >= 0).all()  # pool3 averages ReLU outputs


def test_inception_safetensors_round_trip(tmp_path, random_inception, probe_images, probe_features):
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in random_inception.state_dict().items()}, str(path))
    loaded = load_inception(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(probe_images), probe_features)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def test_inception_loads_pytorch_fid_checkpoints(tmp_path, random_inception):
    state = dict(random_inception.state_dict())
    # The pt_inception-2015-12-05 file: torchvision names plus the 1008-way classifier.
    pth = {**state, "fc.weight": torch.randn(1008, 2048), "fc.bias": torch.randn(1008)}
    torch.save(pth, tmp_path / "pt_inception-2015-12-05-test.pth")
    _assert_same_weights(load_inception(tmp_path / "pt_inception-2015-12-05-test.pth"), random_inception)
    # pytorch-fid's InceptionV3 wrapper: the same layers as blocks.<i>.<j>.
    slots = {"Conv2d_1a_3x3": "0.0", "Conv2d_2a_3x3": "0.1", "Conv2d_2b_3x3": "0.2",
             "Conv2d_3b_1x1": "1.0", "Conv2d_4a_3x3": "1.1", "Mixed_7a": "3.0", "Mixed_7b": "3.1", "Mixed_7c": "3.2"}
    slots.update({f"Mixed_{n}": f"2.{i}" for i, n in enumerate(["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"])})
    wrapped = {}
    for key, value in state.items():
        head, rest = key.split(".", 1)
        wrapped[f"blocks.{slots[head]}.{rest}"] = value
    save_file({k: v.contiguous() for k, v in wrapped.items()}, str(tmp_path / "wrapped.safetensors"))
    _assert_same_weights(load_inception(tmp_path / "wrapped.safetensors"), random_inception)


def test_inception_rejects_wrong_files(tmp_path, random_inception):
    state = {k: v.contiguous() for k, v in random_inception.state_dict().items()}
    partial = dict(state)
    del partial["Mixed_7c.branch_pool.conv.weight"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(PixcadeError, match="missing"):
        load_inception(tmp_path / "partial.safetensors")
    state["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(64, 192, 3, 3)
    save_file(state, str(tmp_path / "shape.safetensors"))
    with pytest.raises(PixcadeError, match="shape"):
        load_inception(tmp_path / "shape.safetensors")
    with pytest.raises(PixcadeError, match="not found"):
        load_inception(tmp_path / "nope.safetensors")
    for name in ("garbage.safetensors", "garbage.pth"):
        (tmp_path / name).write_bytes(b"not a weights file at all")
        with pytest.raises(PixcadeError, match="cannot read"):
            load_inception(tmp_path / name)


# ---- the CLI on image folders --------------------------------------------------------------

def pixel_stats_features():
    """A `py:` feature extractor for tests: per-channel mean and std of the pixels."""
    return lambda x: torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _write_set(folder, n, brightness, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.clip(rng.normal(brightness, 40, size=(8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


def test_cli_fid_kid_on_folders(tmp_path, capsys, random_inception):
    _write_set(tmp_path / "real", 60, 120, 0)
    _write_set(tmp_path / "same", 60, 120, 1)
    _write_set(tmp_path / "bright", 60, 170, 2)
    feats = "py:test_fid:pixel_stats_features"
    results = {}
    for name in ("same", "bright"):
        out = tmp_path / f"{name}.json"
        assert eval_main(["fid", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / name),
                          "--features", feats, "--kid", "--kid-subsets", "5", "--out", str(out)]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed == json.loads(out.read_text())
        results[name] = printed
    assert results["bright"]["fid"] > 10 * results["same"]["fid"]
    assert results["bright"]["kid"] > results["same"]["kid"]
    assert results["same"]["comparable_to_published"] is False
    assert "NOT comparable" in results["same"]["note"]

    # The real Inception path end to end, from a weights file on disk (KID: FID's sqrtm
    # of a 2048x2048 matrix is too slow for a unit test).
    weights = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in random_inception.state_dict().items()}, str(weights))
    small = tmp_path / "small"
    _write_set(small, 2, 120, 3)
    assert eval_main(["kid", "--real", str(small), "--fake", str(small), "--inception-weights", str(weights),
                      "--kid-subsets", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["comparable_to_published"] is True and res["features"] == "inception-v3-fid"
    assert "fid" not in res and np.isfinite(res["kid"])


def test_cli_without_features_is_an_error(tmp_path):
    _write_set(tmp_path / "a", 2, 120, 0)
    with pytest.raises(PixcadeError, match="inception-weights"):
        eval_main(["fid", "--real", str(tmp_path / "a"), "--fake", str(tmp_path / "a")])


# ---- pixcade's own shapes-domain features --------------------------------------------------

def test_shapes_features_train_save_load_and_fid(tmp_path, capsys):
    from pixcade.data.render import render
    from pixcade.data.shapes import sample_scenes
    from pixcade.eval.shapes_features import load_shapes_features

    weights = tmp_path / "shapes.safetensors"
    assert eval_main(["train-shapes-features", "--out", str(weights), "--steps", "6", "--resolution", "16",
                      "--batch-size", "8"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["steps"] == 6 and np.isfinite(trained["last_loss"])
    net = load_shapes_features(weights)
    probe = torch.rand(3, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        assert net(probe).shape == (3, net.config.feature_dim)
        torch.testing.assert_close(load_shapes_features(weights)(probe), net(probe))

    for name, seed in (("real", 0), ("same", 1)):
        (tmp_path / name).mkdir()
        for i, scene in enumerate(sample_scenes(24, seed=seed)):
            render(scene, 32).save(tmp_path / name / f"{i}.png")
    _write_set(tmp_path / "noise", 24, 120, 0)
    fid = {}
    for name in ("same", "noise"):
        assert eval_main(["fid", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / name),
                          "--features", f"shapes:{weights}"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["comparable_to_published"] is False and res["features"].startswith("shapes-cnn")
        fid[name] = res["fid"]
    assert fid["noise"] > 3 * fid["same"]
    with pytest.raises(PixcadeError, match="not a pixcade shapes"):
        load_shapes_features(tmp_path / "real" / "0.png")


def _write_shard(path, members):
    """A WebDataset tar of (name, bytes) members."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _image_members(folder):
    return [(name, data) for png in sorted(folder.glob("*.png"))
            for name, data in ((png.name, png.read_bytes()), (png.stem + ".txt", b"a caption"))]


def test_features_from_webdataset_shards_equal_the_folder(tmp_path):
    _write_set(tmp_path / "imgs", 5, 120, 7)
    _write_shard(tmp_path / "shard-000.tar", _image_members(tmp_path / "imgs"))
    extractor = pixel_stats_features()
    from_folder = extract_features(tmp_path / "imgs", extractor, batch_size=2)
    from_shards = extract_features(tmp_path / "shard-000.tar", extractor, batch_size=2)
    np.testing.assert_allclose(from_shards, from_folder)


def test_cli_leaves_out_and_counts_unreadable_shard_images(tmp_path, capsys):
    _write_set(tmp_path / "imgs", 5, 120, 7)
    _write_set(tmp_path / "fake", 5, 130, 8)
    members = _image_members(tmp_path / "imgs")
    truncated = (tmp_path / "imgs" / "000.png").read_bytes()[:40]
    # Sorted between the good samples, so the stream goes on after it.
    members[2:2] = [("001b.png", truncated), ("001b.txt", b"a broken caption")]
    _write_shard(tmp_path / "shard-000.tar", members)

    assert eval_main(["fid", "--real", str(tmp_path / "shard-000.tar"), "--fake", str(tmp_path / "fake"),
                      "--features", "py:test_fid:pixel_stats_features"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert (res["n_real"], res["skipped_real"], res["n_fake"], res["skipped_fake"]) == (5, 1, 5, 0)
    assert "real images: skipped 1 unreadable image(s)" in err and "shard-000.tar:001b" in err
    # The measured set is exactly the readable images.
    real, fake = (extract_features(tmp_path / name, pixel_stats_features()) for name in ("imgs", "fake"))
    assert res["fid"] == pytest.approx(fid_from_features(real, fake), rel=1e-9)

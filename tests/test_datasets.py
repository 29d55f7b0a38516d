"""Every data source, read from files the test writes: folders, manifests, tar shards."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from pixcade.data.datasets import CaptionedImages, open_dataset
from pixcade.data.samples import SkipStats, Skipped
from pixcade.data.transforms import ImageTransform, collate
from pixcade.data.webdataset import ShardDataset, expand_braces, list_shards
from pixcade.errors import PixcadeError

EXTS = ("png", "jpg", "jpeg", "webp")


def pixels(seed: int, size=(12, 9)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def encode(seed: int, ext: str) -> bytes:
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    Image.fromarray(pixels(seed)).save(buf, format=fmt, **({"lossless": True} if ext == "webp" else {}))
    return buf.getvalue()


def make_folder(root, n: int, corrupt: tuple[int, ...] = ()) -> dict[str, str]:
    """n images cycling through the extensions, shapes-style .json extras; key -> caption."""
    os.makedirs(root, exist_ok=True)
    captions = {}
    for i in range(n):
        key = f"{i:08d}"
        ext = EXTS[i % len(EXTS)]
        data = b"\x89PNG\r\n\x1a\n not really" if i in corrupt else encode(i, ext)
        (root / f"{key}.{ext}").write_bytes(data)
        (root / f"{key}.txt").write_text(f"caption {i}\n")
        (root / f"{key}.json").write_text("{}")
        captions[key] = f"caption {i}"
    return captions


def make_shards(root, n_shards: int, per_shard: int, corrupt: tuple[str, ...] = ()) -> dict[str, str]:
    """Shards root/{00000..}.tar of png+txt+json samples; sample name -> caption."""
    os.makedirs(root, exist_ok=True)
    captions = {}
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                png = b"garbage" if key in corrupt else encode(s * 1000 + i, "png")
                caption = f"shard {s} sample {i}"
                for ext, data in (("png", png), ("txt", caption.encode()), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                captions[key] = caption
    return captions


def keys_through_loader(ds, num_workers: int, batch_size: int = 3) -> tuple[list[str], SkipStats]:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    stats = SkipStats()
    keys = [k for batch in stats.track(loader) for k in batch["key"]]
    return keys, stats


def shard_name(key: str) -> str:
    return key.rsplit(":", 1)[1]


# -- folders ------------------------------------------------------------------------------


def test_folder_reads_every_extension_ignores_json_and_decodes_pixels(tmp_path):
    captions = make_folder(tmp_path, 8)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, CaptionedImages) and len(ds) == 8
    for sample in ds:
        assert sample["image"].mode == "RGB" and sample["image"].size == (12, 9)
        assert sample["caption"] == captions[sample["key"]]
        i = int(sample["key"])
        if EXTS[i % 4] in ("png", "webp"):  # lossless: exact pixels
            np.testing.assert_array_equal(np.asarray(sample["image"]), pixels(i))
    assert sorted(s["key"] for s in ds) == sorted(captions)


def test_folder_missing_caption_names_the_image(tmp_path):
    make_folder(tmp_path, 3)
    (tmp_path / "00000001.txt").unlink()
    with pytest.raises(PixcadeError, match=r"missing caption.*00000001\.jpg"):
        open_dataset(tmp_path)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("nothing")
    assert np.asarray(open_dataset(tmp_path)[0]["image"]).min() == 255


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image_is_skipped_counted_and_reported(tmp_path, caplog, num_workers):
    make_folder(tmp_path, 7, corrupt=(2, 5))
    ds = open_dataset(tmp_path, transform=ImageTransform(8))
    with caplog.at_level(logging.WARNING, logger="pixcade.data"):
        keys, stats = keys_through_loader(ds, num_workers)
    assert sorted(keys) == [f"{i:08d}" for i in (0, 1, 3, 4, 6)]
    assert stats.count == 2 and set(stats.skipped) == {"00000002", "00000005"}
    assert "skipped 2 unreadable image(s): 00000002, 00000005" in caplog.text


def test_track_counts_markers_when_iterating_a_dataset_directly(tmp_path):
    make_folder(tmp_path, 3, corrupt=(1,))
    ds = open_dataset(tmp_path)
    assert isinstance(ds[1], Skipped) and ds[1].key == "00000001"
    stats = SkipStats()
    assert [s["key"] for s in stats.track(ds)] == ["00000000", "00000002"]
    assert stats.summary().startswith("skipped 1 unreadable image(s): 00000001")


# -- manifests ----------------------------------------------------------------------------


def test_jsonl_manifest_relative_paths_alternative_keys_and_repeated_images(tmp_path):
    make_folder(tmp_path / "imgs", 3)
    lines = [
        {"image": "imgs/00000000.png", "caption": "first"},
        {"file_name": "imgs/00000001.jpg", "text": "second"},
        {"image": "imgs/00000000.png", "caption": "first again"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = open_dataset(str(tmp_path / "m.jsonl"))
    got = [(s["key"], s["caption"]) for s in ds]
    assert got == [("imgs/00000000.png", "first"), ("imgs/00000001.jpg", "second"),
                   ("imgs/00000000.png#2", "first again")]
    np.testing.assert_array_equal(np.asarray(ds[0]["image"]), pixels(0))


def test_jsonl_errors_name_the_line(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"image": "a.png", "caption": "x"}\n{"image": "b.png"}\n')
    with pytest.raises(PixcadeError, match=r"missing caption: .*m\.jsonl:2 \(b\.png\)"):
        open_dataset(m)
    m.write_text('{"image": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(PixcadeError, match=r"m\.jsonl:2: not valid JSON"):
        open_dataset(m)


def test_csv_manifest_reads_and_reports_missing_image_file_as_skipped(tmp_path):
    make_folder(tmp_path, 2)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerow(["00000000.png", "a, with comma"])
        w.writerow(["00000001.jpg", ""])  # an empty caption is a caption
        w.writerow(["gone.png", "lost"])
    ds = open_dataset(tmp_path / "m.csv")
    assert [ds[0]["caption"], ds[1]["caption"]] == ["a, with comma", ""]
    assert ds[2] == Skipped("gone.png", "file not found")


def test_csv_errors(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,caption\na.png,x\n")
    with pytest.raises(PixcadeError, match=r"no image or file_name column"):
        open_dataset(m)
    m.write_text("file_name,text\na.png,x\nb.png\n")
    with pytest.raises(PixcadeError, match=r"missing caption: .*m\.csv:3 \(b\.png\)"):
        open_dataset(m)
    m.write_text("image,caption\n")
    with pytest.raises(PixcadeError, match=r"empty manifest: .*m\.csv"):
        open_dataset(m)


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(PixcadeError, match=r"dataset not found: .*nope"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PixcadeError, match=r"no images .* in folder .*empty"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "data.parquet").write_bytes(b"")
    with pytest.raises(PixcadeError, match=r"unknown dataset format: .*data\.parquet"):
        open_dataset(tmp_path / "data.parquet")
    with pytest.raises(PixcadeError, match=r"shard not found: .*00003\.tar"):
        make_shards(tmp_path / "s", 3, 1)
        open_dataset(str(tmp_path / "s" / "{00000..00003}.tar"))
    with pytest.raises(PixcadeError, match=r"no files match .*\*\.tar"):
        open_dataset(str(tmp_path / "empty" / "*.tar"))
    with pytest.raises(PixcadeError, match="rank"):
        open_dataset(tmp_path / "s", rank=2, world_size=2)


# -- shards -------------------------------------------------------------------------------


def test_brace_expansion():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(PixcadeError, match="bad brace pattern"):
        expand_braces("{x}.tar")


def test_every_way_of_naming_shards_reads_the_same_samples(tmp_path):
    captions = make_shards(tmp_path, 3, 4)
    forms = [
        str(tmp_path / "{00000..00002}.tar"),
        str(tmp_path / "*.tar"),
        tmp_path,
        [tmp_path / "00000.tar", str(tmp_path / "0000{1,2}.tar")],
    ]
    for form in forms:
        assert len(list_shards(form)) == 3
        ds = open_dataset(form)
        assert isinstance(ds, ShardDataset)
        samples = list(ds)
        assert {shard_name(s["key"]): s["caption"] for s in samples} == captions
    first = next(s for s in samples if shard_name(s["key"]) == "000010002")
    np.testing.assert_array_equal(np.asarray(first["image"]), pixels(1002))


def test_shard_missing_caption_names_shard_and_sample(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        data = encode(0, "png")
        info = tarfile.TarInfo("k1.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(PixcadeError, match=r"missing caption: sample 'k1' in shard .*x\.tar"):
        list(open_dataset(tmp_path / "x.tar"))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image_and_truncated_shard_in_shards_are_skipped(tmp_path, num_workers):
    make_shards(tmp_path, 3, 3, corrupt=("000010001",))
    whole = (tmp_path / "00002.tar").read_bytes()
    (tmp_path / "00002.tar").write_bytes(whole[: len(whole) // 2 + 100])  # mid-block, as a cut-off download
    ds = open_dataset(tmp_path, transform=ImageTransform(8))
    keys, stats = keys_through_loader(ds, num_workers)
    names = {shard_name(k) for k in keys}
    assert {f"0000{i}" for i in ("00000", "00001", "00002", "10000", "10002")} <= names
    assert "000010001" not in names and len(keys) == len(names)
    assert any(k.endswith("00001.tar:000010001") for k in stats.skipped)
    assert any(k.endswith("00002.tar") and "unreadable shard" in r for k, r in stats.skipped.items())


# -- distributed split --------------------------------------------------------------------


def sources(tmp_path):
    make_folder(tmp_path / "folder", 9)
    make_shards(tmp_path / "many", 5, 3)  # enough shards for 2 ranks x 2 workers (uneven)
    make_shards(tmp_path / "one", 1, 7)  # fewer shards than readers: split by sample index
    lines = [json.dumps({"image": f"folder/{i:08d}.{EXTS[i % 4]}", "caption": str(i)}) for i in range(9)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    return {"folder": (tmp_path / "folder", 9), "jsonl": (tmp_path / "m.jsonl", 9),
            "many shards": (str(tmp_path / "many" / "{00000..00004}.tar"), 15),
            "one shard": (tmp_path / "one", 7)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_read_every_sample_exactly_once(tmp_path, num_workers):
    for name, (source, n) in sources(tmp_path).items():
        for shuffle in (False, True):
            per_rank = []
            for rank in (0, 1):
                ds = open_dataset(source, rank=rank, world_size=2, shuffle=shuffle, seed=3,
                                  transform=ImageTransform(4))
                ds.set_epoch(1)
                keys, _ = keys_through_loader(ds, num_workers, batch_size=2)
                assert len(keys) == len(set(keys)), (name, rank)
                per_rank.append(set(keys))
            assert not per_rank[0] & per_rank[1], name
            assert len(per_rank[0] | per_rank[1]) == n, name
            assert per_rank[0] and per_rank[1], name


def test_shard_assignment_covers_each_sample_once_for_any_layout():
    """Simulates every reader's stream: shards of different sizes, W ranks x K workers."""
    for n_shards in range(1, 8):
        sizes = [3 + (i * 5) % 4 for i in range(n_shards)]
        shards = [f"{i}.tar" for i in range(n_shards)]
        for world in (1, 2, 3):
            for workers in (1, 2, 3):
                seen = []
                for rank in range(world):
                    ds = ShardDataset(shards, rank=rank, world_size=world)
                    for w in range(workers):
                        mine, n, j = ds.assignment(w, workers)
                        stream = [(s, i) for s in mine for i in range(sizes[shards.index(s)])]
                        seen += [x for idx, x in enumerate(stream) if idx % n == j]
                assert sorted(seen) == sorted((s, i) for s in shards for i in range(sizes[shards.index(s)]))


def test_set_epoch_reshuffles_deterministically(tmp_path):
    make_folder(tmp_path / "f", 12)
    make_shards(tmp_path / "s", 6, 1)

    def order(source, epoch, seed=0):
        ds = open_dataset(source, shuffle=True, seed=seed, shuffle_buffer=4)
        ds.set_epoch(epoch)
        return [s["key"].rsplit(":", 1)[-1] for s in ds]

    for source in (tmp_path / "f", tmp_path / "s"):
        assert order(source, 1) == order(source, 1)
        assert order(source, 1) != order(source, 2)
        assert order(source, 1) != order(source, 1, seed=1)
        assert sorted(order(source, 1)) == sorted(order(source, 2))
    plain = [s["key"] for s in open_dataset(tmp_path / "f")]
    assert plain == sorted(plain)


# -- listing captions ---------------------------------------------------------------------


def test_captions_lists_every_rank_s_captions_as_samples_carry_them_without_decoding(tmp_path):
    make_folder(tmp_path / "f", 5, corrupt=(3,))
    make_shards(tmp_path / "s", 3, 2, corrupt=("000010001",))
    (tmp_path / "f" / "00000001.txt").write_text("  padded\r\n", encoding="utf-8")
    lines = [json.dumps({"image": "f/00000000.png", "caption": " é "}), json.dumps({"image": "nope.png", "caption": "x"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    for source in (tmp_path / "f", tmp_path / "m.jsonl", tmp_path / "s"):
        whole = open_dataset(source)
        # Samples of the readable images carry exactly these captions, in the same order.
        carried = [s["caption"] for s in whole if not isinstance(s, Skipped)]
        listed = list(whole.captions())
        # A corrupt or missing image is never decoded, so its caption is listed too.
        assert len(listed) == len(carried) + 1
        assert [c for c in listed if c in carried] == carried
        # All ranks' captions, whichever rank's dataset lists them.
        assert list(open_dataset(source, rank=1, world_size=2).captions()) == listed
    assert open_dataset(tmp_path / "f").captions()[:2] == ["caption 0", "padded"]
    assert open_dataset(tmp_path / "m.jsonl").captions() == ["é", "x"]
    (tmp_path / "f" / "00000002.txt").write_bytes(b"\xff\xfe caption")
    with pytest.raises(PixcadeError, match=r"cannot read caption .*00000002\.txt"):
        open_dataset(tmp_path / "f").captions()


def test_shard_captions_follow_the_sample_rules(tmp_path):
    make_shards(tmp_path, 2, 2)
    whole = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # truncated: loses its tail only
    with tarfile.open(tmp_path / "00002.tar", "w") as tar:
        for name, data in (("noimage.txt", b"lonely"), ("k.png", encode(0, "png")), ("k.txt", b"\xff")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = open_dataset(tmp_path / "{00000..00001}.tar")
    assert list(ds.captions()) == [s["caption"] for s in ds if not isinstance(s, Skipped)]
    assert list(ds.captions())[:2] == ["shard 0 sample 0", "shard 0 sample 1"]
    with pytest.raises(PixcadeError, match=r"caption of sample 'k' in shard .*00002\.tar is not UTF-8"):
        list(open_dataset(tmp_path / "00002.tar").captions())

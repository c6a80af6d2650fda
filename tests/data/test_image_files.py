"""Image-file datasets (imagefolder, filelist): decoding, the decoded cache, the splits of a set
long-tailed as given, and every kind of bad input (one clear error, no cache left behind)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltexp.data import files as image_files
from ltexp.data import load_source, prepare
from ltexp.data.files import decode_image
from ltexp.data.splits import Protocol, build_given_splits
from ltexp.errors import ConfigError, DataError
from tests.conftest import write_image, write_image_folder

COUNTS = [30, 16, 9, 5, 3, 2]
GIVEN = {"mode": "given", "n_train": 0, "n_test": 0}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(image_files.CACHE_ENV, str(folder))
    return folder


def _folder(tmp_path: Path, **kw) -> Path:
    return write_image_folder(tmp_path / "data", COUNTS, **kw)


def _caches(cache_dir: Path) -> list[str]:
    """The caches and partial builds in ``cache_dir`` (a built cache keeps its lock file)."""
    if not cache_dir.exists():
        return []
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))


def test_decode_resizes_the_shorter_side_and_crops_the_centre(tmp_path: Path) -> None:
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :, 0] = (
        np.arange(60, dtype=np.uint8)[None, :] * 4
    )  # columns tell where they came from
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 20)  # shorter side already 20: only the crop
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert np.array_equal(out, pixels[:, 20:40])
    small = decode_image(tmp_path / "wide.png", 10)  # 20×60 → 10×30, centre 10 columns
    assert small.shape == (10, 10, 3)
    assert 10 * 4 * 2 < small[0, 0, 0] < 12 * 4 * 2 + 8  # came from around column 2·10


def test_every_format_and_mode_becomes_rgb(tmp_path: Path) -> None:
    for i, name in enumerate(("a", "b", "c", "d", "e", "f", "g")):
        write_image(tmp_path / name, label=1, index=i)
    decoded = {
        p.suffix + str(i): decode_image(p, 16) for i, p in enumerate(sorted(tmp_path.iterdir()))
    }
    assert len(decoded) == 7 and all(d.shape == (16, 16, 3) for d in decoded.values())
    grey = Image.open(tmp_path / "c.png")
    assert grey.mode == "L"
    out = decode_image(tmp_path / "c.png", 16)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_imagefolder_loads_through_the_cache(tmp_path: Path, cache_dir: Path) -> None:
    root = _folder(tmp_path, test_per_class=4)
    src = load_source("imagefolder", root, storage_size=24)
    assert src.train_images.shape == (sum(COUNTS), 24, 24, 3)
    assert np.bincount(src.train_labels).tolist() == COUNTS
    assert np.bincount(src.test_labels).tolist() == [4] * 6
    assert src.class_names == [f"class_{c:02d}" for c in range(6)] and src.long_tailed
    assert src.val_labels is None and src.sets == ("train", "test")
    # the decoded pixels are the file's pixels
    first = sorted((root / "train" / "class_00").iterdir())[0]
    assert np.array_equal(src.train_images[0], decode_image(first, 24))
    assert len(_caches(cache_dir)) == 1
    entry = src.checksums["image_cache"]
    assert entry["images"] == sum(COUNTS) + 24 and entry["storage_size"] == 24


def test_a_built_cache_is_reused_and_a_changed_image_changes_the_digest(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path)
    first = load_source("imagefolder", root, storage_size=16)

    def no_decoding(*_a, **_k):
        raise AssertionError("a built cache must not decode again")

    monkeypatch.setattr(image_files, "decode_image", no_decoding)
    again = load_source("imagefolder", root, storage_size=16)
    assert again.checksums == first.checksums
    monkeypatch.undo()
    monkeypatch.setenv(image_files.CACHE_ENV, str(cache_dir))
    path = sorted((root / "train" / "class_03").iterdir())[0]
    Image.new("RGB", (30, 30), (255, 0, 0)).save(
        path, Image.registered_extensions()[path.suffix.lower()]
    )
    changed = load_source("imagefolder", root, storage_size=16)
    assert changed.checksums["image_cache"]["sha256"] != first.checksums["image_cache"]["sha256"]
    assert len(_caches(cache_dir)) == 2
    # a storage size is its own cache
    assert load_source("imagefolder", root, storage_size=8).train_images.shape[1] == 8


def test_an_interrupted_build_resumes_to_the_same_cache(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path)
    monkeypatch.setattr(image_files, "_CHECKPOINT_EVERY", 10)
    real = image_files.decode_bytes
    calls = {"n": 0}

    lock = threading.Lock()

    def killed_after_25(data: bytes, size: int, max_pixels: int) -> np.ndarray:
        with lock:  # decoding runs in threads
            calls["n"] += 1
            killed = calls["n"] > 25
        if killed:
            raise KeyboardInterrupt
        return real(data, size, max_pixels)

    monkeypatch.setattr(image_files, "decode_bytes", killed_after_25)
    with pytest.raises(KeyboardInterrupt):
        load_source("imagefolder", root, storage_size=16)
    (partial,) = [p for p in cache_dir.iterdir() if p.name.endswith(".partial")]
    assert partial.name.endswith(".partial")
    assert json.loads((partial / "progress.json").read_text())["next"] == 20
    calls["n"] = -1000  # the rest decodes
    resumed = load_source("imagefolder", root, storage_size=16)
    assert calls["n"] == -1000 + sum(COUNTS) - 20  # only what the first build had not recorded
    clean_dir = tmp_path / "clean"
    monkeypatch.setenv(image_files.CACHE_ENV, str(clean_dir))
    monkeypatch.setattr(image_files, "decode_bytes", real)
    clean = load_source("imagefolder", root, storage_size=16)
    assert resumed.checksums == clean.checksums
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".partial")]


def test_two_loads_of_the_same_new_cache_decode_it_once(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path)
    real, lock, calls = image_files.decode_bytes, threading.Lock(), {"n": 0}

    def counted(data: bytes, size: int, max_pixels: int) -> np.ndarray:
        with lock:
            calls["n"] += 1
        return real(data, size, max_pixels)

    monkeypatch.setattr(image_files, "decode_bytes", counted)
    results: list = []
    loaders = [
        threading.Thread(
            target=lambda: results.append(load_source("imagefolder", root, storage_size=16))
        )
        for _ in range(2)
    ]
    for t in loaders:
        t.start()
    for t in loaders:
        t.join()
    assert len(results) == 2 and results[0].checksums == results[1].checksums
    assert calls["n"] == sum(COUNTS)  # the second waited for the first, then opened its cache
    assert len(_caches(cache_dir)) == 1


def test_a_corrupt_image_names_its_path_and_leaves_no_cache(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = _folder(tmp_path)
    bad = root / "train" / "class_02" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(DataError, match=r"broken\.png.*cannot be decoded.*skip_bad_images=true"):
        load_source("imagefolder", root, storage_size=16)
    assert list(cache_dir.iterdir()) == []  # no partial cache, no lock file
    src = load_source("imagefolder", root, storage_size=16, skip_bad_images=True)
    assert src.skipped == ["train/class_02/broken.png"]
    assert np.bincount(src.train_labels).tolist() == COUNTS
    # the cache that skipped it is not used by a run that asks for every image
    with pytest.raises(DataError, match=r"1 images cannot be decoded.*broken\.png"):
        load_source("imagefolder", root, storage_size=16)


def _keep_one_class(root: Path) -> None:
    import shutil

    for folder in [*(root / "train").iterdir(), *(root / "test").iterdir()]:
        if folder.name != "class_00":
            shutil.rmtree(folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "train" / "class_06").mkdir(), "class folder .*class_06.* holds no image"),
        (
            lambda r: write_image(r / "test" / "class_99" / "x", 0, 0),
            "class 'class_99' in test/ is not in train/",
        ),
        (_keep_one_class, "has 1 class; classification needs at least two"),
        (lambda r: (r / "train").rename(r / "training"), "has no train/ folder"),
    ],
    ids=["empty class folder", "test class not in train", "one class", "no train folder"],
)
def test_imagefolder_bad_input(tmp_path: Path, cache_dir: Path, damage, message: str) -> None:
    root = _folder(tmp_path, test_per_class=2)
    damage(root)
    with pytest.raises(DataError, match=message):
        load_source("imagefolder", root, storage_size=16)
    assert _caches(cache_dir) == []


def _list_files(root: Path) -> list[tuple[str, int]]:
    rows = []
    for c, folder in enumerate(sorted((root / "train").iterdir())):
        rows += [(str(p.relative_to(root)), c) for p in sorted(folder.iterdir())]
    return rows


def test_filelist_reads_imagenet_lt_style_lists_and_csv(tmp_path: Path) -> None:
    root = _folder(tmp_path, test_per_class=3)
    rows = _list_files(root)
    (root / "ImageNet_LT_train.txt").write_text("".join(f"{p} {c}\n" for p, c in rows))
    test_rows = [
        (str(p.relative_to(root)), int(p.parent.name[-2:]))
        for p in sorted((root / "test").rglob("*.*"))
    ]
    (root / "ImageNet_LT_test.txt").write_text("".join(f"{p} {c}\n" for p, c in test_rows))
    (root / "names.txt").write_text("".join(f"name{c}\n" for c in range(6)))
    src = load_source(
        "filelist",
        root,
        train="ImageNet_LT_train.txt",
        test="ImageNet_LT_test.txt",
        names="names.txt",
        storage_size=16,
    )
    folder = load_source("imagefolder", root, storage_size=16)
    assert np.array_equal(src.train_images, folder.train_images)
    assert np.array_equal(src.train_labels, folder.train_labels)
    assert np.array_equal(src.test_labels, folder.test_labels)
    assert src.class_names == [f"name{c}" for c in range(6)]
    # the CSV variant, with class names as labels
    (root / "train.csv").write_text(
        "path,label\n" + "".join(f"{p},class_{c:02d}\n" for p, c in rows)
    )
    csv_src = load_source("filelist", root, train="train.csv", storage_size=16)
    assert np.array_equal(csv_src.train_images, folder.train_images)
    assert csv_src.class_names == folder.class_names and csv_src.sets == ("train",)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            lambda rows: [*rows, ("train/class_00/missing.png", 0)],
            "do not exist, the first .*missing.png",
        ),
        (lambda rows: [*rows, rows[0]], "is listed twice"),
        (
            lambda rows: [*rows, (rows[0][0].replace("0000", "0001"), 6)],
            "label '6' on line 66 of 'train.txt' is outside the 6 classes",
        ),
        (lambda rows: [r for r in rows if r[1] != 2], "class 'name2' has no training images"),
        (lambda rows: [(p, 0) for p, _ in rows], "has 1 class"),
    ],
    ids=["missing file", "duplicate path", "label outside the list", "empty class", "one class"],
)
def test_filelist_bad_input(tmp_path: Path, cache_dir: Path, lines, message: str) -> None:
    root = _folder(tmp_path)
    rows = lines(_list_files(root))
    (root / "train.txt").write_text("".join(f"{p} {c}\n" for p, c in rows))
    names = "names.txt" if "has 1 class" not in message else ""
    (root / "names.txt").write_text("".join(f"name{c}\n" for c in range(6)))
    with pytest.raises(DataError, match=message):
        load_source("filelist", root, train="train.txt", names=names, storage_size=16)
    assert _caches(cache_dir) == []


HOSTILE_LISTS = {
    # issue 24's list files, and more of each kind
    "a label of 1e11 classes": ("a.png 99999999999\n", "implies 100,000,000,000 classes"),
    "a huge negative label": ("a.png 0\nb.png -99999999999999999999\n", "outside the 1 classes"),
    "a superscript digit": ("a.png 0\nb.png \u00b2\n", "is not an integer, while other"),
    "Arabic-Indic digits": ("a.png 0\nb.png \u0661\u0662\n", "is not an integer, while other"),
    "a float among integers": ("a.png 0\nb.png 1\nc.png 3.0\n", "'3.0' on line 3"),
    "a line without a label": ("a.png\n", "line 1 of .* is not 'path label' \\(1 field\\)"),
}


@pytest.mark.parametrize("text,message", HOSTILE_LISTS.values(), ids=HOSTILE_LISTS)
def test_hostile_list_files_are_one_line_before_anything_is_allocated(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "train.txt").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_source("filelist", tmp_path, train="train.txt")


def test_malformed_list_and_names_files(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("path,label\na.png,0\nb.png\n")
    with pytest.raises(DataError, match=r"line 3 of .*rows.csv' needs a path and a label"):
        load_source("filelist", tmp_path, train="rows.csv")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.png 0\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text \\(byte 3\\); save it as UTF-8"):
        load_source("filelist", tmp_path, train="latin1.txt")
    (tmp_path / "ok.txt").write_text("a.png 0\nb.png 1\n")
    with pytest.raises(DataError, match=r"names file .*nope.txt' does not exist"):
        load_source("filelist", tmp_path, train="ok.txt", names="nope.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"names file .*folder' is a folder"):
        load_source("filelist", tmp_path, train="ok.txt", names="folder")


def test_an_error_quotes_no_more_of_a_file_than_identifies_the_problem(tmp_path: Path) -> None:
    secret = "root:$6$saltsalt$hashhashhashhash:19000:0:99999:7:::"
    (tmp_path / "shadow").write_text(f"{secret}\nuser:!:19000::::::\n")
    with pytest.raises(DataError) as refused:
        load_source("filelist", tmp_path, train="shadow")
    assert "line 1" in str(refused.value) and "saltsalt" not in str(refused.value)
    (tmp_path / "labels.txt").write_text(f"a.png 0\nb.png {secret}\n")
    with pytest.raises(DataError) as refused:
        load_source("filelist", tmp_path, train="labels.txt")
    assert "line 2" in str(refused.value) and "saltsalt" not in str(refused.value)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` and holds almost nothing (a bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_header(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is rewritten to claim ``width``×``height``."""
    import io
    import struct

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = {
    "a PNG of 20000 rows of a huge width": lambda: _png_header(2_000_000_000, 20_000),
    "a JPEG that claims 65000²": lambda: _jpeg_header(65_000, 65_000),
    "a PNG that declares 100000²": lambda: _png_header(100_000, 100_000),
}


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS)
def test_a_decompression_bomb_is_refused_from_its_header(
    tmp_path: Path, cache_dir: Path, bomb
) -> None:
    root = _folder(tmp_path)
    target = root / "train" / "class_00" / "img_0000.png"
    target.write_bytes(bomb())
    with pytest.raises(DataError, match=r"img_0000.png' cannot be decoded .*over max_image_pixels"):
        load_source("imagefolder", root, storage_size=16)
    assert _caches(cache_dir) == []
    skipped = load_source("imagefolder", root, storage_size=16, skip_bad_images=True)
    assert skipped.skipped == ["train/class_00/img_0000.png"]


def test_a_real_image_over_the_pixel_limit_is_refused_and_one_under_it_decoded(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = _folder(tmp_path)
    Image.new("RGB", (300, 200), "blue").save(root / "train" / "class_01" / "img_0000.png")
    with pytest.raises(DataError, match="300×200 = 60,000 pixels, over max_image_pixels=50,000"):
        load_source("imagefolder", root, storage_size=16, max_image_pixels=50_000)
    assert load_source("imagefolder", root, storage_size=16, max_image_pixels=60_000)


def test_an_image_that_resizing_would_blow_up_is_refused_before_it_is_decoded(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Issue 39: a 20000×1 PNG is 20,000 pixels, under the limit, and 5,120,000×256 once its
    shorter side is resized to 256: refused from its header, in one line."""
    root = _folder(tmp_path)
    Image.new("RGB", (20_000, 1), "blue").save(root / "train" / "class_01" / "img_0000.png")
    message = "it is 20000×1: resizing its shorter side to 256 makes 1,310,720,000 pixels"
    with pytest.raises(DataError, match=message):
        load_source("imagefolder", root, storage_size=256, max_image_pixels=100_000_000)
    assert _caches(cache_dir) == []
    skipped = load_source("imagefolder", root, storage_size=16, skip_bad_images=True)
    assert skipped.skipped == []  # at 16 px it is 320,000×16 = 5,120,000: under the limit


def test_the_same_image_twice_is_refused_under_any_name(tmp_path: Path, cache_dir: Path) -> None:
    root = _folder(tmp_path, test_per_class=2)
    rows = _list_files(root)
    first = rows[0][0]
    # through ../, through a symlinked folder, and as a copy in the test set
    (root / "alias").symlink_to(root / "train")
    aliases = {
        "dotdot": f"train/class_01/../{first.removeprefix('train/')}",
        "symlink": first.replace("train/", "alias/", 1),
    }
    for name, alias in aliases.items():
        (root / f"{name}.txt").write_text("".join(f"{p} {c}\n" for p, c in [*rows, (alias, 0)]))
        with pytest.raises(DataError, match="is listed twice"):
            load_source("filelist", root, train=f"{name}.txt", storage_size=16)
    copy = root / "test" / "class_00" / "leak.png"
    copy.write_bytes((root / first).read_bytes())
    with pytest.raises(DataError, match=r"leak.png' \(test\) and .* are the same image"):
        load_source("imagefolder", root, storage_size=16)
    assert _caches(cache_dir) == []


def test_a_cache_edited_after_it_was_built_is_refused_when_it_is_prepared_again(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = _folder(tmp_path)
    built = load_source("imagefolder", root, storage_size=16)
    prepare(built, Protocol(**GIVEN))  # as built: accepted
    images = built.cache / "images.u8"
    data = bytearray(images.read_bytes())
    data[100] ^= 0xFF
    images.write_bytes(bytes(data))
    reopened = load_source("imagefolder", root, storage_size=16)
    with pytest.raises(DataError, match="was changed after it was built"):
        prepare(reopened, Protocol(**GIVEN))


def test_an_interrupted_build_whose_progress_claims_too_much_starts_over(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path)
    monkeypatch.setattr(image_files, "_CHECKPOINT_EVERY", 10)
    real = image_files.decode_bytes
    calls = {"n": 0}

    def killed_after_12(data: bytes, size: int, max_pixels: int) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real(data, size, max_pixels)

    monkeypatch.setenv("LTEXP_DECODE_THREADS", "1")
    monkeypatch.setattr(image_files, "decode_bytes", killed_after_12)
    with pytest.raises(KeyboardInterrupt):
        load_source("imagefolder", root, storage_size=16)
    (partial,) = [p for p in cache_dir.iterdir() if p.name.endswith(".partial")]
    (partial / "progress.json").write_text('{"next": 1000000000, "skipped": [], "digests": []}')
    monkeypatch.setattr(image_files, "decode_bytes", real)
    rebuilt = load_source("imagefolder", root, storage_size=16)
    assert rebuilt.train_images.reshape(len(rebuilt.train_images), -1).any(axis=1).all()


def test_a_full_disk_is_one_line_before_the_memory_map_writes(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    root = _folder(tmp_path)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(image_files.os, "posix_fallocate", full)
    with pytest.raises(DataError, match=r"the image cache needs .* GiB free; .*No space left"):
        load_source("imagefolder", root, storage_size=16)
    assert _caches(cache_dir) == []


def test_filelist_needs_its_train_list(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="filelist needs filelist_train="):
        load_source("filelist", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_source("filelist", tmp_path, train="nope.txt")


# --- the splits of a set long-tailed as given ------------------------------------------------


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_given_train_is_train_lt_and_a_balanced_test_set_is_test_balanced() -> None:
    train, test = _labels(COUNTS), _labels([5] * 6)
    val = _labels([2] * 6)
    plan = build_given_splits({"train": train, "val": val, "test": test}, 6, Protocol(**GIVEN))
    assert plan.per_class("train_lt", train) == COUNTS  # nothing carved: val and test are given
    assert plan.sources["test_balanced"] == "test" and plan.group_split == "test_balanced"
    assert len(plan.indices["test_lt"]) == 0 and len(plan.indices["train_balanced"]) == 0
    assert plan.sources["val"] == "val" and len(plan.indices["val"]) == 12
    assert plan.class_rank.tolist() == [0, 1, 2, 3, 4, 5]
    heads = plan.indices["test_head"]
    assert set(test[heads].tolist()) == set(plan.groups["head"])


def test_missing_val_and_test_are_carved_per_class_from_train() -> None:
    counts = [50, 20, 10, 3, 2]
    train = _labels(counts)
    plan = build_given_splits({"train": train}, 5, Protocol(**GIVEN, holdout_fraction=0.1))
    # 10 % of each class, at least one while the class keeps one for training
    assert plan.per_class("val", train) == [5, 2, 1, 1, 0]
    assert plan.per_class("test_lt", train) == [5, 2, 1, 1, 0]
    assert plan.per_class("train_lt", train) == [40, 16, 8, 1, 2]
    assert plan.group_split == "test_lt" and len(plan.indices["test_balanced"]) == 0
    every = np.concatenate([plan.indices[s] for s in ("train_lt", "val", "test_lt")])
    assert len(every) == len(set(every.tolist())) == len(train)  # disjoint, nothing lost
    again = build_given_splits({"train": train}, 5, Protocol(**GIVEN, holdout_fraction=0.1))
    assert all(np.array_equal(plan.indices[s], again.indices[s]) for s in plan.indices)
    other_seed = build_given_splits({"train": train}, 5, Protocol(**GIVEN, seed=1))
    assert not np.array_equal(plan.indices["val"], other_seed.indices["val"])


def test_classes_of_one_image_each_leave_nothing_to_carve_and_say_so() -> None:
    """Issue 24: 300 classes of one image each gave 0 validation and 0 test images, silently,
    then a traceback in training."""
    with pytest.raises(DataError, match="no val images and none can be carved from train"):
        build_given_splits({"train": np.arange(300)}, 300, Protocol(**GIVEN))
    test = {"train": np.arange(300), "test": np.arange(300)}  # a test set, but no val
    with pytest.raises(DataError, match="largest class has 1 training image"):
        build_given_splits(test, 300, Protocol(**GIVEN))


def test_balanced_training_only_when_asked_and_possible() -> None:
    train = _labels(COUNTS)
    plan = build_given_splits({"train": train}, 6, Protocol(**{**GIVEN, "n_train": 1}))
    assert plan.per_class("train_balanced", train) == [1] * 6
    with pytest.raises(DataError, match="lower n_max_train to at most"):
        build_given_splits({"train": train}, 6, Protocol(**{**GIVEN, "n_train": 5}))
    src_prepared, _ = prepare(_array_source(COUNTS), Protocol(**GIVEN))
    with pytest.raises(ConfigError, match="long-tailed as given and has no train_balanced"):
        src_prepared.training_split("balanced")
    assert src_prepared.training_split("lt") == "train_lt"


def test_a_val_class_that_train_lacks_is_refused() -> None:
    train = _labels([5, 5, 0])
    with pytest.raises(DataError, match=r"classes \[2\] have no training images"):
        build_given_splits({"train": train, "val": _labels([1, 1, 1])}, 3, Protocol(**GIVEN))


def _array_source(counts: list[int]):
    from ltexp.data.sources import SourceData

    labels = _labels(counts)
    images = np.zeros((len(labels), 4, 4, 3), np.uint8)
    return SourceData(
        "x",
        images,
        labels,
        images[:0],
        labels[:0],
        [str(c) for c in range(len(counts))],
        {},
        0,
        0,
        long_tailed=True,
    )


def test_too_little_host_memory_or_disk_is_refused_before_anything_is_written(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    from ltexp import resources

    root = _folder(tmp_path)
    need = sum(COUNTS) * 64 * 64 * 3
    monkeypatch.setattr(resources, "free_memory", lambda device="cpu": need - 1)
    with pytest.raises(
        ConfigError,
        match=r"holding the 65 decoded images of .* at 64×64 needs about .* lower storage_size",
    ):
        load_source("imagefolder", root, storage_size=64)
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv(image_files.CACHE_ENV, str(cache_dir))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(need, need, need - 1))
    with pytest.raises(DataError, match=r"the image cache needs .* GiB .* lower storage_size"):
        load_source("imagefolder", root, storage_size=64)
    assert list(cache_dir.iterdir()) == []

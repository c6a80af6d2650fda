"""Image files on disk, decoded once into a uint8 cache that every later step memory-maps.

A dataset of image files (``imagefolder``, ``filelist``) first lists its files as a
:class:`FileListing`: per set (``train``, and ``val``/``test`` where the data has them) the paths
and labels, and the class names. :func:`check_listing` refuses what cannot be a dataset (a missing
file, a path listed twice, a label outside the class list, a class without training images, one
class) before anything is decoded.

:func:`load_images` then decodes each image once (torchvision.io, PIL as the fallback for what it
cannot read, such as BMP; grey, palette and RGBA converted to RGB), resizes its shorter side to
``storage_size`` (bilinear, antialiased) and crops the centre square, and writes it into
``<cache root>/<key>/images.u8``: one ``(N, S, S, 3)`` uint8 array with an ``index.json`` beside
it. The key is the sha256 of the file list (paths, labels, sizes, modification times) and the
storage settings, so a changed image or list builds a new cache. The cache's own digest (sha256 of
its pixels and labels) is what prepare_data records.

Each file is read once: its size is taken from its header before it is decoded (a file declaring
more than ``max_image_pixels`` is refused, naming it, or skipped with ``skip_bad_images``), and its
bytes are digested, so that the same image listed twice (under another path, through a symlink,
in train and in test) is refused. The cache's space is reserved on disk before anything is
written through the memory map, so a full disk is an error line and never a bus error.

The build writes into ``<key>.partial`` and records its progress every few hundred images: an
interrupted build resumes where it stopped (a progress record that does not fit the listing
restarts the build); a build stopped by bad input removes its partial folder, so nothing
half-written is left behind. The cache root is ``$LTEXP_CACHE_DIR``, else
``~/.cache/ltexp/images``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltexp.data.sources import SourceData
from ltexp.errors import DataError
from ltexp.progress import Progress
from ltexp.resources import GIB, check_fits

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CACHE_ENV = "LTEXP_CACHE_DIR"
CACHE_FORMAT = 2  # 2: each image's content digest, for duplicates across and within sets
# the largest image decoded by default (a 10,000 × 10,000 photograph): the header's size is read
# first, so a file declaring more is refused before any pixel is allocated (decompression bombs)
MAX_IMAGE_PIXELS = 100_000_000
SETS = ("train", "val", "test")
_CHECKPOINT_EVERY = 256  # images between progress records of a build


@dataclass
class FileListing:
    """The image files of a dataset: per set, absolute paths and labels; the class names."""

    root: Path
    class_names: list[str]
    paths: dict[str, list[Path]]
    labels: dict[str, np.ndarray]

    @property
    def num_files(self) -> int:
        return sum(len(p) for p in self.paths.values())


def check_listing(listing: FileListing) -> None:
    """Refuse a listing that cannot be a dataset, with one line naming the first problem.

    Raises:
        DataError: a label outside the class list, fewer than two classes, a class without
            training images, a path listed twice, a file that does not exist.
    """
    k = len(listing.class_names)
    if k < 2:
        raise DataError(
            f"{str(listing.root)!r} has {k} class; classification needs at least two classes"
        )
    for name, labels in listing.labels.items():
        bad = labels[(labels < 0) | (labels >= k)]
        if len(bad):
            raise DataError(
                f"{name} has label {int(bad[0])}, outside the {k} classes (labels 0..{k - 1}); "
                f"fix the list or give the class names"
            )
    counts = np.bincount(listing.labels["train"], minlength=k)
    empty = [listing.class_names[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no training images ({len(empty)} such classes); add "
            f"images or remove the class"
        )
    seen: dict[Path, tuple[str, Path]] = {}
    for name, paths in listing.paths.items():
        for p in paths:
            real = p.resolve()  # ../ and symlinks name the same file too
            if real in seen:
                first_set, first = seen[real]
                also = "" if first == p else f" (as {str(first)!r})"
                raise DataError(
                    f"{str(p)!r} is listed twice (in {first_set}{also} and {name}); list it once"
                )
            seen[real] = (name, p)
    for name, paths in listing.paths.items():
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} files of {name} do not exist, the first {str(missing[0])!r}; "
                f"check the list and data_root"
            )


def cache_root() -> Path:
    """Where decoded caches live: ``$LTEXP_CACHE_DIR``, else ``~/.cache/ltexp/images``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/ltexp/images").expanduser()


def cache_key(
    listing: FileListing, storage_size: int, max_image_pixels: int = MAX_IMAGE_PIXELS
) -> str:
    """sha256 of the storage settings and of every file's path, label, size and mtime."""
    h = hashlib.sha256(f"ltexp-images/{CACHE_FORMAT}/{storage_size}/{max_image_pixels}".encode())
    for name in SETS:
        for path, label in zip(
            listing.paths.get(name, ()), listing.labels.get(name, ()), strict=True
        ):
            st = path.stat()
            h.update(f"\n{name}\t{path}\t{int(label)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def decode_image(path: Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One image file → ``(size, size, 3)`` uint8: shorter side resized, centre crop.

    Raises:
        OSError/ValueError/RuntimeError: the file is not an image either reader can decode, or
            its header declares more than ``max_pixels`` pixels.
    """
    return decode_bytes(path.read_bytes(), size, max_pixels)


def decode_bytes(data: bytes, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """:func:`decode_image` of a file's bytes."""
    import torch
    import torch.nn.functional as F

    check_pixels(data, max_pixels, size)
    x = _read_rgb(data)  # (3, H, W) uint8
    h, w = x.shape[1:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        y = F.interpolate(
            x[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
        )[0]
        x = y.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].permute(1, 2, 0).numpy()


def check_pixels(data: bytes, max_pixels: int, size: int = 0) -> None:
    """Refuse a file whose header declares more than ``max_pixels`` pixels, or whose shorter
    side resized to ``size`` would make more (a 20000×1 strip is 20,000 pixels, and
    5,120,000×256 once resized), before decoding.

    Raises:
        ValueError: too many pixels; OSError: not an image PIL can read the header of.
    """
    import io
    import re

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
    except Image.DecompressionBombError as e:  # PIL's own limit, past twice its warning
        declared = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(declared.group(1)):,}" if declared else "too many"
        raise ValueError(
            f"its header declares {pixels} pixels, over max_image_pixels={max_pixels:,}"
        ) from None
    if width * height > max_pixels:
        raise ValueError(
            f"its header declares {width}×{height} = {width * height:,} pixels, over "
            f"max_image_pixels={max_pixels:,}"
        )
    short = max(1, min(width, height))
    resized = (max(width, height) * size // short) * size if size else 0
    if resized > max_pixels:
        raise ValueError(
            f"it is {width}×{height}: resizing its shorter side to {size} makes "
            f"{resized:,} pixels, over max_image_pixels={max_pixels:,} (crop it to a less "
            f"elongated image)"
        )


def _read_rgb(data: bytes):  # -> torch.Tensor
    import io

    import torch
    from torchvision.io import ImageReadMode, decode_image

    try:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_image(buffer, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        from PIL import Image  # BMP and what libjpeg/libpng refuse

        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


@dataclass
class CachedImages:
    """A decoded cache: images memory-mapped, per set a row range and labels."""

    folder: Path
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    sets: dict[str, tuple[int, int]]  # set → (first row, rows)
    labels: dict[str, np.ndarray]
    skipped: list[str]
    sha256: str
    images_per_s: float

    def set_images(self, name: str) -> np.ndarray:
        start, n = self.sets[name]
        return self.images[start : start + n]

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


def load_images(
    listing: FileListing,
    storage_size: int,
    skip_bad_images: bool,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> CachedImages:
    """The decoded cache of ``listing`` at ``storage_size``: opened if built, else built (or its
    interrupted build resumed). See the module docstring.

    Raises:
        DataError: a listing that cannot be a dataset (:func:`check_listing`), an unreadable
            image (unless ``skip_bad_images``: then it is left out and listed), not enough disk
            for the cache, a set left with no image.
        ConfigError: the host cannot hold the decoded images the splits copy.
    """
    check_listing(listing)
    # refused before anything is decoded or written: the splits copy what the cache holds
    check_fits(
        listing.num_files * storage_size * storage_size * 3,
        f"holding the {listing.num_files:,} decoded images of {str(listing.root)!r} at "
        f"{storage_size}×{storage_size}",
        "lower storage_size, or free host memory",
    )
    key = cache_key(listing, storage_size, max_image_pixels)
    folder = cache_root() / key[:32]
    if not (folder / "index.json").is_file():
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            lock = open(folder.with_name(folder.name + ".lock"), "w")  # noqa: SIM115
        except OSError as e:
            raise DataError(
                f"cannot write the image cache under {str(folder.parent)!r} ({e.strerror or e});"
                f" set {CACHE_ENV} to a writable folder"
            ) from None
        with lock:
            # a second process asking for the same cache waits for the first, then opens it
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "index.json").is_file():
                try:
                    _build(listing, storage_size, skip_bad_images, max_image_pixels, folder)
                except DataError:  # bad input leaves nothing behind, not even the lock file
                    Path(lock.name).unlink(missing_ok=True)
                    raise
    cached = _open(folder)
    if cached.skipped and not skip_bad_images:
        raise DataError(
            f"{len(cached.skipped)} images cannot be decoded, the first {cached.skipped[0]!r}; "
            f"fix or remove them, or set skip_bad_images=true to leave them out"
        )
    log.info(
        "image cache %s: %d images of %d×%d, %.2f GiB",
        folder,
        len(cached.images),
        storage_size,
        storage_size,
        cached.nbytes / GIB,
    )
    return cached


def _open(folder: Path) -> CachedImages:
    try:
        index = json.loads((folder / "index.json").read_text())
        s = int(index["storage_size"])
        n = int(index["rows"])
        images = np.memmap(folder / "images.u8", np.uint8, mode="r", shape=(n, s, s, 3))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"the image cache {str(folder)!r} is corrupt ({e}); delete it and run again"
        ) from None
    sets = {k: (int(v["start"]), int(v["rows"])) for k, v in index["sets"].items()}
    labels = {k: np.asarray(v["labels"], dtype=np.int64) for k, v in index["sets"].items()}
    return CachedImages(
        folder,
        images,
        sets,
        labels,
        list(index["skipped"]),
        str(index["sha256"]),
        float(index.get("images_per_s", 0.0)),
    )


@contextmanager
def _removed_on_bad_input(folder: Path) -> Iterator[None]:
    """Bad input removes the partial build; an interruption keeps it for the next run."""
    try:
        yield
    except DataError:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _build(listing: FileListing, size: int, skip_bad: bool, max_pixels: int, folder: Path) -> None:
    files = [
        (name, p, int(lab))
        for name in SETS
        for p, lab in zip(listing.paths.get(name, ()), listing.labels.get(name, ()), strict=True)
    ]
    row_bytes = size * size * 3
    need = len(files) * row_bytes
    partial = folder.with_name(folder.name + ".partial")
    log.info(
        "building the image cache %s: %d images at %d×%d, %.2f GiB",
        folder,
        len(files),
        size,
        size,
        need / GIB,
    )
    partial.mkdir(parents=True, exist_ok=True)
    progress_file = partial / "progress.json"
    file_bytes = max(len(files), 1) * row_bytes
    state = _resumable(progress_file, partial / "images.u8", len(files), file_bytes)
    if state is None:
        no_space = (
            f"the image cache needs {need / GIB:,.2f} GiB ({len(files):,} images at "
            f"{size}×{size}) and {str(partial.parent)!r} has "
            f"{{free:,.2f}} GiB free; set {CACHE_ENV} to a larger disk or lower storage_size"
        )
        free = shutil.disk_usage(partial).free
        if need > free:
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(no_space.format(free=free / GIB))
        try:  # reserved before the memory map writes: a full disk is then never a SIGBUS
            _reserve(partial / "images.u8", file_bytes)
        except OSError as e:
            free = shutil.disk_usage(partial).free
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(f"{no_space.format(free=free / GIB)} ({e.strerror or e})") from None
        state = {"next": 0, "skipped": [], "digests": []}
    else:
        log.info("resuming the image cache build at image %d of %d", state["next"], len(files))
    rows = np.memmap(
        partial / "images.u8", np.uint8, mode="r+", shape=(file_bytes // row_bytes, row_bytes)
    )
    skipped: list[int] = state["skipped"]
    digests: list[str] = state["digests"]
    bar = Progress(len(files) - state["next"], f"decode {len(files):,} images to {size}px")
    started = time.perf_counter()
    with _removed_on_bad_input(partial), ThreadPoolExecutor(decode_threads()) as pool:
        for first in range(state["next"], len(files), _CHECKPOINT_EVERY):
            chunk = range(first, min(first + _CHECKPOINT_EVERY, len(files)))
            # decoders and resizes run in C++ without the GIL: threads decode in parallel
            decoded = pool.map(lambda i: _try_decode(files[i][1], size, max_pixels), chunk)
            for i, result in zip(chunk, decoded, strict=True):
                if isinstance(result, Exception):
                    if not skip_bad:
                        raise DataError(
                            f"{str(files[i][1])!r} cannot be decoded as an image "
                            f"({_first_line(result)}); fix or remove it, or set "
                            f"skip_bad_images=true to leave it out"
                        )
                    skipped.append(i)
                else:
                    image, digest = result
                    rows[i - len(skipped)] = image.reshape(-1)
                    digests.append(digest)
                bar.update(1)
            rows.flush()
            state = {"next": chunk.stop, "skipped": skipped, "digests": digests}
            _write_json(progress_file, state)
        rows.flush()
        bar.close()
        decoded = len(files) - state["next"]
        rate = decoded / max(time.perf_counter() - started, 1e-9)
        index = _index(files, skipped, size, rows, rate)
        for name, entry in index["sets"].items():
            if entry["rows"] == 0:
                raise DataError(f"no image of {name} could be decoded; check the files")
        _refuse_duplicates(files, skipped, digests)
    del rows
    os.truncate(partial / "images.u8", index["rows"] * row_bytes)
    _write_json(partial / "index.json", index)
    progress_file.unlink(missing_ok=True)
    if folder.exists():  # a cache folder left without its index is not a cache
        shutil.rmtree(folder)
    partial.rename(folder)


def decode_threads() -> int:
    """Threads that decode images: ``$LTEXP_DECODE_THREADS``, else one per CPU core (at most
    32)."""
    value = os.environ.get("LTEXP_DECODE_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else min(32, os.cpu_count() or 1)


def _try_decode(path: Path, size: int, max_pixels: int) -> tuple[np.ndarray, str] | Exception:
    """The decoded image and the digest of the file's bytes, or why it cannot be decoded."""
    from PIL import Image

    try:
        data = path.read_bytes()
        return decode_bytes(data, size, max_pixels), hashlib.blake2b(
            data, digest_size=16
        ).hexdigest()
    except (OSError, ValueError, RuntimeError, Image.DecompressionBombError) as e:
        return e


def _reserve(path: Path, size: int) -> None:
    """Allocate ``size`` bytes of ``path`` on disk now (raises OSError when they do not fit)."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # a file system without fallocate: write the zeros, which allocates them too
            block = bytes(1 << 20)
            for start in range(0, size, len(block)):
                f.write(block[: min(len(block), size - start)])
            f.flush()
            os.fsync(f.fileno())


def _resumable(progress: Path, images: Path, n_files: int, file_bytes: int) -> dict | None:
    """The progress record of an interrupted build, if it fits this listing and its images
    file; else None (the build starts over: a record that claims more than it holds would
    leave rows of zeros)."""
    if not progress.is_file():
        return None
    try:
        state = json.loads(progress.read_text())
        done, skipped, digests = int(state["next"]), list(state["skipped"]), list(state["digests"])
        fits = (
            0 <= done <= n_files
            and all(isinstance(i, int) and 0 <= i < done for i in skipped)
            and len(set(skipped)) == len(skipped)
            and len(digests) == done - len(skipped)
            and images.is_file()
            and images.stat().st_size == file_bytes
        )
    except (OSError, ValueError, KeyError, TypeError):
        fits = False
    if fits:
        return {"next": done, "skipped": sorted(skipped), "digests": digests}
    log.warning(
        "the interrupted image cache build under %s does not fit: starting over", images.parent
    )
    progress.unlink(missing_ok=True)
    return None


def _refuse_duplicates(
    files: list[tuple[str, Path, int]], skipped: list[int], digests: list[str]
) -> None:
    """The same bytes twice (another path, a symlink, train and test): refused, naming both."""
    bad = set(skipped)
    kept = [f for i, f in enumerate(files) if i not in bad]
    first: dict[str, tuple[str, Path]] = {}
    for (name, path, _), digest in zip(kept, digests, strict=True):
        if digest in first:
            other_set, other = first[digest]
            raise DataError(
                f"{str(path)!r} ({name}) and {str(other)!r} ({other_set}) are the same image "
                f"(identical bytes): an image listed twice leaks between splits or counts twice; "
                f"list it once"
            )
        first[digest] = (name, path)


def _index(
    files: list[tuple[str, Path, int]], skipped: list[int], size: int, rows: np.ndarray, rate: float
) -> dict[str, Any]:
    bad = set(skipped)
    kept = [f for i, f in enumerate(files) if i not in bad]
    sets: dict[str, Any] = {}
    for row, (name, _, label) in enumerate(kept):
        entry = sets.setdefault(name, {"start": row, "rows": 0, "labels": []})
        entry["rows"] += 1
        entry["labels"].append(label)
    for name in {f[0] for f in files} - set(sets):
        sets[name] = {"start": len(kept), "rows": 0, "labels": []}
    labels = np.asarray([f[2] for f in kept], dtype=np.int64)
    digest = cache_digest([rows[: len(kept)].reshape(len(kept), size, size, 3)], labels)
    return {
        "format": CACHE_FORMAT,
        "storage_size": size,
        "rows": len(kept),
        "sets": sets,
        "skipped": [str(files[i][1]) for i in skipped],
        "sha256": digest,
        "images_per_s": round(rate, 1),
    }


def cache_digest(images: list[np.ndarray], labels: np.ndarray) -> str:
    """sha256 of a cache's pixels (its sets' ``(N, S, S, 3)`` uint8 arrays, in order) and labels:
    what prepare_data records, recomputed from the bytes whenever a cache is reused."""
    n = sum(len(block) for block in images)
    size = images[0].shape[1] if images else 0
    h = hashlib.sha256(f"{n}x{size}x{size}x3".encode())
    for block in images:
        for start in range(0, len(block), 1024):
            h.update(memoryview(np.ascontiguousarray(block[start : start + 1024])))
    h.update(np.asarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def verify_cache(source: SourceData) -> None:
    """Recompute the digest of the cache behind ``source`` (an image-file set) and refuse one
    whose bytes changed after it was built: what prepare_data records is what the cache holds.

    Raises:
        DataError: the cache's bytes do not match the digest it was built with.
    """
    cache = source.checksums.get("image_cache")
    if not cache:
        return
    sets = [s for s in SETS if s in source.sets or (s == "test" and len(source.test_labels))]
    images = [source.images(s) for s in sets]
    labels = np.concatenate([source.labels(s) for s in sets])
    found = cache_digest(images, labels)
    if found != cache["sha256"]:
        raise DataError(
            f"the image cache {str(source.cache)!r} was changed after it was built (its "
            f"bytes hash to {found[:12]}…, built as {cache['sha256'][:12]}…); delete it and "
            f"run again to rebuild it"
        )


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def source_from_files(
    name: str,
    listing: FileListing,
    storage_size: int,
    skip_bad_images: bool,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> SourceData:
    """A :class:`SourceData` over the decoded cache of ``listing`` (:func:`load_images`),
    long-tailed as given. The sets stay memory-mapped; the splits copy what they select."""
    cached = load_images(listing, storage_size, skip_bad_images, max_image_pixels)
    empty = np.zeros((0, storage_size, storage_size, 3), np.uint8)
    has = {s: s in cached.sets for s in SETS}
    return SourceData(
        name,
        cached.set_images("train"),
        cached.labels["train"],
        cached.set_images("test") if has["test"] else empty,
        cached.labels["test"] if has["test"] else np.zeros(0, np.int64),
        listing.class_names,
        {
            "image_cache": {
                "sha256": cached.sha256,
                "images": len(cached.images),
                "storage_size": storage_size,
                "bytes": cached.nbytes,
            }
        },
        n_train_per_class=0,
        n_test_per_class=0,
        val_images=cached.set_images("val") if has["val"] else None,
        val_labels=cached.labels["val"] if has["val"] else None,
        long_tailed=True,
        skipped=[_relative(p, listing.root) for p in cached.skipped],
        cache=cached.folder,
    )


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path

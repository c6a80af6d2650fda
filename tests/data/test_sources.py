"""Datasets: the CIFAR-100 and CIFAR-10 on-disk formats, digits, synthetic; checksums; files that
are wrong."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ltexp.data import load_source, prepare
from ltexp.data.splits import Protocol
from ltexp.errors import ConfigError, DataError, TrackingError
from tests.conftest import write_cifar, write_cifar100
from tests.data.test_splits import SPEC_COUNTS


def test_reads_torchvision_cifar_format(cifar_root: Path) -> None:
    src = load_source("cifar100", cifar_root, download=False)
    assert src.train_images.shape == (50_000, 32, 32, 3) and src.train_images.dtype == np.uint8
    assert src.test_images.shape == (10_000, 32, 32, 3)
    assert np.bincount(src.train_labels).tolist() == [500] * 100
    assert src.class_names[3] == "class3"
    # pixel layout: CIFAR rows are 1024 R, then G, then B values
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert np.array_equal(src.train_images[7, :, :, 1], raw[b"data"][7, 1024:2048].reshape(32, 32))
    assert src.train_labels[7] == raw[b"fine_labels"][7]


def test_records_checksums_and_flags_unofficial_files(cifar_root: Path) -> None:
    src = load_source("cifar100", cifar_root, download=False)
    entry = src.checksums["cifar-100-python/train"]
    assert len(entry["sha256"]) == 64
    assert entry["official"] is False  # random pixels are not the official release


def test_spec_counts_on_the_generated_cifar_files(cifar_root: Path) -> None:
    src = load_source("cifar100", cifar_root, download=False)
    prepared, _ = prepare(src, Protocol(n_train=src.n_train_per_class, n_test=src.n_test_per_class))
    sizes = {s: m["n"] for s, m in prepared.manifest["splits"].items()}
    assert sizes == SPEC_COUNTS


def test_missing_files_offline_give_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError) as err:
        load_source("cifar100", tmp_path / "nowhere", download=True)
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "cifar-100-python.tar.gz" in msg and "download failed" in msg


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing in .*download=true"):
        load_source("cifar100", tmp_path, download=False)


def test_data_root_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        load_source("cifar100", f)


def test_truncated_file_is_reported(tmp_path: Path, cifar_root: Path) -> None:
    shutil.copytree(cifar_root, tmp_path, dirs_exist_ok=True)
    train = tmp_path / "cifar-100-python" / "train"
    with open(train, "r+b") as f:
        f.truncate(os.path.getsize(train) // 2)
    with pytest.raises(DataError, match="corrupt"):
        load_source("cifar100", tmp_path, download=False)


def test_pickle_carrying_code_is_refused(tmp_path: Path) -> None:
    write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": Evil()}, f)
    with pytest.raises(DataError, match=r"refusing to load posix.system|corrupt"):
        load_source("cifar100", tmp_path, download=False)
    assert not marker.exists()


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'cifar1000'.*cifar100, cifar10, digits"
    ):
        load_source("cifar1000")


def test_cifar10_reads_five_train_batches_and_gives_cifar10_lt(tmp_path: Path) -> None:
    from ltexp.data.cifar import CIFAR10

    folder = write_cifar(tmp_path, CIFAR10, train_per_class=60, test_per_class=20)
    src = load_source("cifar10", tmp_path, download=False)
    assert src.train_images.shape == (600, 32, 32, 3) and src.test_images.shape == (200, 32, 32, 3)
    assert np.bincount(src.train_labels).tolist() == [60] * 10
    assert src.class_names == [f"class{i}" for i in range(10)]
    assert set(src.checksums) == {f"cifar-10-batches-py/{n}" for n in CIFAR10.files}
    assert not any(c["official"] for c in src.checksums.values())  # random pixels
    # the batches are read in order: the first image is data_batch_1's first
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0]
    assert np.array_equal(src.train_images[0], first.reshape(3, 32, 32).transpose(1, 2, 0))
    assert (src.n_train_per_class, src.n_test_per_class) == (4500, 500)  # of 5,000 per class
    # CIFAR-10-LT at IR 10: the exp profile over 10 classes
    prepared, _ = prepare(src, Protocol(imbalance_ratio=10, n_train=50, n_test=10))
    counts = prepared.class_counts("train_lt")
    assert counts[0] == 50 and counts[-1] == 5
    assert counts == [int(50 * 10 ** (-i / 9) + 1e-9) for i in range(10)]


def test_cifar10_offline_names_its_files_and_the_demo(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 files .*data_batch_1.* are missing"):
        load_source("cifar10", tmp_path, download=False)


def test_digits_is_cifar_shaped_and_split() -> None:
    src = load_source("digits")
    assert src.train_images.shape[1:] == (32, 32, 3) and src.train_images.dtype == np.uint8
    assert len(src.train_labels) + len(src.test_labels) == 1797
    assert np.bincount(src.test_labels).tolist() == [30] * 10
    assert np.bincount(src.train_labels).min() >= src.n_train_per_class + src.n_test_per_class
    assert (src.train_images[..., 0] == src.train_images[..., 2]).all()  # grey as RGB


def test_synthetic_is_seeded_and_sized() -> None:
    a = load_source(
        "synthetic", num_classes=7, train_per_class=20, test_per_class=5, image_size=16, seed=3
    )
    b = load_source(
        "synthetic", num_classes=7, train_per_class=20, test_per_class=5, image_size=16, seed=3
    )
    c = load_source(
        "synthetic", num_classes=7, train_per_class=20, test_per_class=5, image_size=16, seed=4
    )
    assert a.train_images.shape == (140, 16, 16, 3) and a.test_images.shape == (35, 16, 16, 3)
    assert np.array_equal(a.train_images, b.train_images)
    assert not np.array_equal(a.train_images, c.train_images)
    assert a.checksums == b.checksums != c.checksums


def test_synthetic_classes_are_separable_by_their_prototype() -> None:
    src = load_source("synthetic", num_classes=10, train_per_class=50, test_per_class=20)
    x = src.train_images.reshape(len(src.train_labels), -1).astype(float)
    means = np.stack([x[src.train_labels == c].mean(0) for c in range(10)])
    t = src.test_images.reshape(len(src.test_labels), -1).astype(float)
    nearest = ((t[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == src.test_labels).mean() > 0.9


@pytest.mark.parametrize(
    "name,message",
    [
        ("x" * 201, "(201 characters): a class name must have 1 to 200 characters"),
        ("", "(0 characters)"),
        ("red\x1b[31m", "holds control characters"),
        ("two\nlines", "holds control characters"),
    ],
)
def test_a_class_name_a_registered_model_could_not_keep_is_refused_when_read(
    name: str, message: str
) -> None:
    """Issue 39: a class name of 201 characters passed prepare-data and training, was
    registered, and ltexp's loader then refused the version; now the set is refused at once."""
    from ltexp.data.sources import SourceData

    images = np.zeros((2, 8, 8, 3), np.uint8)
    labels = np.array([0, 1])
    with pytest.raises(DataError, match=re.escape(message)):
        SourceData("x", images, labels, images, labels, ["ok", name], {}, 1, 1)


def test_registration_applies_the_loader_s_checks_first() -> None:
    from ltexp.tracking.registered_models import ModelInfo, log_and_register

    info = ModelInfo("tiny_cnn", 2, "linear", 32, (0.5,) * 3, (0.5,) * 3, ("a", "b" * 300))
    with pytest.raises(TrackingError, match="cannot register 'x': class_names must be names"):
        log_and_register(None, info, "x", {}, logged_name="x")  # refused before the model


def _tarball_only(tmp_path: Path) -> Path:
    """CIFAR-100's archive as the download leaves it, not yet extracted; its path."""
    import shutil as sh

    from ltexp.rehearsal import write_cifar

    folder = write_cifar(tmp_path, "cifar100", 5, 2, tarball=True)
    sh.rmtree(folder)
    return tmp_path / "cifar-100-python.tar.gz"


def test_cifar_s_archive_is_extracted_as_the_download_would(tmp_path: Path) -> None:
    _tarball_only(tmp_path)
    source = load_source("cifar100", tmp_path, download=False)
    assert len(source.train_labels) == 500 and len(source.test_labels) == 200
    assert (tmp_path / "cifar-100-python" / "meta").is_file()


@pytest.mark.parametrize("broken", ["truncated", "wrong members", "labels beyond 99"])
def test_a_broken_cifar_archive_or_file_is_one_line_naming_it(tmp_path: Path, broken: str) -> None:
    import tarfile

    archive = _tarball_only(tmp_path)
    if broken == "truncated":
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        said = "is truncated or not a gzip tar"
    elif broken == "wrong members":
        other = tmp_path / "other.txt"
        other.write_text("x")
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(other, arcname="cifar-100-python/trainset")
        said = "holds no cifar-100-python/meta"
    else:
        from ltexp.rehearsal import write_cifar

        folder = write_cifar(tmp_path, "cifar100", 5, 2)
        batch = pickle.loads((folder / "test").read_bytes())
        batch[b"fine_labels"][0] = 100
        (folder / "test").write_bytes(pickle.dumps(batch, protocol=2))
        said = "holds labels from 0 to 100, outside 0-99"
    with pytest.raises(DataError, match=re.escape(said)) as err:
        load_source("cifar100", tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message and ("cifar-100-python" in message)

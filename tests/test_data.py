"""Tests for experiments.data: small files in the real on-disk formats, loaded by the real code.

CIFAR and torchvision's MD5 check: ``torchvision.datasets.CIFAR10`` verifies every batch against
the MD5 of the *official* file (``train_list`` / ``test_list`` / ``meta``), so no small test file
can pass it.  The ``cifar_root`` fixture writes real-format pickles and then registers *their*
MD5s in those class tables (``monkeypatch``, undone after each test).  Nothing else changes:
torchvision's own ``_check_integrity`` still hashes every file, its pickle and meta loading run
as for the real data, and ``test_cifar_official_checksums_reject_other_files`` shows the
unpatched tables reject our files.  Production code uses the unmodified classes.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import datasets as tvd

from experiments.data import (
    IMAGE_DATASETS,
    TABULAR_DATASETS,
    ImageSplits,
    TabularSplits,
    load_image_dataset,
    load_tabular_dataset,
    make_loaders,
)
from experiments.errors import UserError

torch.set_num_threads(1)

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def raises_user_error(match: str):
    """pytest.raises(UserError, match=...) that also checks the message is one line."""
    with pytest.raises(UserError, match=match) as info:
        yield info
    assert "\n" not in str(info.value), str(info.value)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dump(path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


def all_indices(splits: ImageSplits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return splits.train.indices, splits.val.indices, splits.test.indices


def assert_disjoint(*index_sets) -> None:
    for i, a in enumerate(index_sets):
        for b in index_sets[i + 1:]:
            assert not set(a.tolist()) & set(b.tolist())


# --------------------------------------------------------------------------- fake CIFAR


CIFAR_LAYOUT = {
    # class: (train files, test files, meta file, meta key, label key)
    tvd.CIFAR10: ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "label_names", "labels"),
    tvd.CIFAR100: (["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


def write_cifar(root, cls, *, per_train_file: int, n_test: int, num_classes: int, seed: int = 0):
    """CIFAR python batches as torchvision reads them: pickled dicts, uint8 (N, 3072) data."""
    train_files, test_files, meta_file, meta_key, label_key = CIFAR_LAYOUT[cls]
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in [(f, per_train_file) for f in train_files] + [(f, n_test) for f in test_files]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: [i % num_classes for i in range(n)], "filenames": [f"{i}.png" for i in range(n)]}
        if cls is tvd.CIFAR100:
            batch["coarse_labels"] = [i % 20 for i in range(n)]
        dump(folder / name, batch)
    dump(folder / meta_file, {meta_key: [f"class{i}" for i in range(num_classes)]})
    return folder


def register_checksums(monkeypatch, cls, folder) -> None:
    """Point the class's MD5 table at the test files (see the module docstring)."""
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A CIFAR-10 directory: 5 x 20 training images, 30 test images, checksums registered."""
    folder = write_cifar(tmp_path, tvd.CIFAR10, per_train_file=20, n_test=30, num_classes=10)
    register_checksums(monkeypatch, tvd.CIFAR10, folder)
    return tmp_path


def load_cifar(root, **kw) -> ImageSplits:
    return load_image_dataset("cifar10", root=str(root), **kw)


# --------------------------------------------------------------------------- fake MNIST


def write_idx(path, array: np.ndarray) -> None:
    """idx-ubyte: magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


# --------------------------------------------------------------------------- fake ImageFolder


def write_pngs(folder, classes=("cat", "dog", "fox"), per_class=5, size=(12, 10)):
    """``folder/<class>/<i>.png`` RGB images of ``size`` (W, H)."""
    rng = np.random.default_rng(len(str(folder)))
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")


@pytest.fixture
def folder_root(tmp_path):
    write_pngs(tmp_path / "train", per_class=10)
    write_pngs(tmp_path / "test", per_class=3)
    return tmp_path


# --------------------------------------------------------------------------- embedded sets


def test_names_are_registered():
    assert IMAGE_DATASETS == ("digits", "mnist5k", "cifar10", "cifar100", "mnist", "imagefolder")
    assert TABULAR_DATASETS == ("breast_cancer", "wine", "iris", "digits_flat", "csv")


@pytest.mark.parametrize("name, total, shape", [("digits", 1797, (1, 8, 8)), ("mnist5k", 5000, (1, 28, 28))])
def test_embedded_sets(name, total, shape):
    s = load_image_dataset(name)
    assert s.name == name and s.num_classes == 10 and s.input_shape == shape
    assert len(s.test) == math.ceil(0.2 * total)  # sklearn rounds the held-out part up
    assert len(s.train) + len(s.val) + len(s.test) == total
    assert len(s.val) == pytest.approx(0.1 * (total - len(s.test)), abs=1)
    assert_disjoint(*all_indices(s))
    x, y = s.val[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape and type(y) is int
    assert np.bincount(s.test.targets).min() >= 0.2 * total / 10 - 2  # stratified


def test_digits_values_are_scaled_then_normalised():
    from sklearn.datasets import load_digits

    s = load_image_dataset("digits", augment=False)
    i = int(s.test.indices[0])
    expected = (torch.tensor(load_digits().images[i] / 16.0, dtype=torch.float32) - 0.3053) / 0.3760
    torch.testing.assert_close(s.test[0][0][0], expected)


def test_same_seed_same_splits_and_fixed_test_set():
    a, b = load_image_dataset("digits", seed=3), load_image_dataset("digits", seed=3)
    for x, y in zip(all_indices(a), all_indices(b)):
        np.testing.assert_array_equal(x, y)
    c = load_image_dataset("digits", seed=4)
    assert not np.array_equal(a.val.indices, c.val.indices)
    np.testing.assert_array_equal(a.test.indices, c.test.indices)  # test set does not move with the seed


def test_limit_keeps_a_stratified_subset_of_train_only():
    full = load_image_dataset("digits")
    s = load_image_dataset("digits", limit=50)
    assert len(s.train) == 50
    assert set(s.train.indices.tolist()) <= set(full.train.indices.tolist())
    assert np.bincount(s.train.targets, minlength=10).min() >= 4
    np.testing.assert_array_equal(s.val.indices, full.val.indices)
    assert len(load_image_dataset("digits", limit=10**6).train) == len(full.train)


def test_augmentation_on_train_only_and_digits_never_flipped():
    s = load_image_dataset("digits", seed=0)
    torch.manual_seed(0)
    draws = [s.train[0][0] for _ in range(10)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert all(torch.equal(s.val[0][0], s.val[0][0]) for _ in range(3))
    assert "Flip" not in repr(s.train.transform)
    plain = load_image_dataset("digits", augment=False)
    assert torch.equal(plain.train[0][0], plain.train[0][0])
    assert repr(plain.train.transform) == repr(plain.val.transform)


def test_image_size_resizes_gray_sets():
    s = load_image_dataset("digits", image_size=16, limit=20)
    assert s.input_shape == (1, 16, 16)
    assert tuple(s.train[0][0].shape) == (1, 16, 16)


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_real_format(cifar_root):
    s = load_cifar(cifar_root, val_fraction=0.2)
    assert (s.num_classes, s.input_shape) == (10, (3, 32, 32))
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 30)
    assert_disjoint(s.train.indices, s.val.indices)
    assert np.bincount(s.val.targets).tolist() == [2] * 10  # stratified
    # pixels: batch row = channel-major 32x32 planes; val uses ToTensor + Normalize only
    folder = cifar_root / "cifar-10-batches-py"
    i = int(s.val.indices[0])
    with open(folder / f"data_batch_{i // 20 + 1}", "rb") as f:
        row = pickle.load(f)["data"][i % 20]
    image = torch.tensor(row.reshape(3, 32, 32), dtype=torch.float32) / 255
    torch.testing.assert_close(s.val[0][0], TF.normalize(image, CIFAR10_MEAN, CIFAR10_STD))


def test_cifar_augmentation_is_the_papers(cifar_root):
    s = load_cifar(cifar_root)
    names = [type(t).__name__ for t in s.train.transform.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    crop, flip = s.train.transform.transforms[:2]
    assert (crop.size, crop.padding, flip.p) == ((32, 32), 4, 0.5)
    assert [type(t).__name__ for t in s.val.transform.transforms] == ["ToTensor", "Normalize"]
    assert s.test.transform is s.val.transform
    torch.manual_seed(0)
    assert any(not torch.equal(s.train[0][0], s.train[0][0]) for _ in range(5))


def test_cifar_image_size_uses_random_resized_crop(cifar_root):
    s = load_cifar(cifar_root, image_size=40)
    assert s.input_shape == (3, 40, 40)
    assert type(s.train.transform.transforms[0]).__name__ == "RandomResizedCrop"
    assert tuple(s.train[0][0].shape) == tuple(s.val[0][0].shape) == (3, 40, 40)


def test_cifar_seeded_determinism(cifar_root):
    a, b, c = load_cifar(cifar_root, seed=1), load_cifar(cifar_root, seed=1), load_cifar(cifar_root, seed=2)
    np.testing.assert_array_equal(a.val.indices, b.val.indices)
    np.testing.assert_array_equal(a.train.indices, b.train.indices)
    assert not np.array_equal(a.val.indices, c.val.indices)


def test_cifar100_real_format(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path, tvd.CIFAR100, per_train_file=200, n_test=100, num_classes=100)
    register_checksums(monkeypatch, tvd.CIFAR100, folder)
    s = load_image_dataset("cifar100", root=str(tmp_path), limit=50)
    assert (s.num_classes, s.input_shape) == (100, (3, 32, 32))
    assert (len(s.train), len(s.val), len(s.test)) == (50, 20, 100)
    assert_disjoint(s.train.indices, s.val.indices)
    assert max(s.test.targets) == 99


def test_cifar_official_checksums_reject_other_files(tmp_path):
    write_cifar(tmp_path, tvd.CIFAR10, per_train_file=2, n_test=2, num_classes=10)
    with raises_user_error(r"data_batch_1 is corrupted \(its MD5 differs"):
        load_cifar(tmp_path)


def test_cifar_missing_folder(tmp_path):
    with raises_user_error("has no cifar-10-batches-py/ folder.*download=True fetches it"):
        load_cifar(tmp_path)


def test_cifar_missing_batch(cifar_root):
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with raises_user_error("missing CIFAR10 file .*data_batch_3"):
        load_cifar(cifar_root)


def test_cifar_altered_batch(cifar_root):
    path = cifar_root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:-10])
    with raises_user_error("test_batch is corrupted"):
        load_cifar(cifar_root)


def test_cifar_unreadable_batch_is_named(cifar_root, monkeypatch):
    folder = cifar_root / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(b"this is not a pickle")
    register_checksums(monkeypatch, tvd.CIFAR10, folder)  # passes MD5, fails unpickling
    with raises_user_error("data_batch_2 is not a readable pickle"):
        load_cifar(cifar_root)


def test_cifar_meta_without_key_is_named(cifar_root, monkeypatch):
    folder = cifar_root / "cifar-10-batches-py"
    dump(folder / "batches.meta", {"names": []})
    register_checksums(monkeypatch, tvd.CIFAR10, folder)
    with raises_user_error("batches.meta has no 'label_names' entry"):
        load_cifar(cifar_root)


# --------------------------------------------------------------------------- MNIST


def test_mnist_real_format(mnist_root):
    s = load_image_dataset("mnist", root=str(mnist_root))
    assert (s.num_classes, s.input_shape) == (10, (1, 28, 28))
    assert (len(s.train), len(s.val), len(s.test)) == (54, 6, 20)
    assert_disjoint(s.train.indices, s.val.indices)
    assert "Flip" not in repr(s.train.transform)
    raw = np.frombuffer((mnist_root / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    expected = (torch.tensor(raw[:784].reshape(1, 28, 28), dtype=torch.float32) / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(s.test[0][0], expected)
    assert s.test[0][1] == 0


def test_mnist_missing_raw_folder(tmp_path):
    with raises_user_error("has no MNIST/raw/ folder.*download=True fetches them"):
        load_image_dataset("mnist", root=str(tmp_path))


def test_mnist_missing_file_with_gz_hint(mnist_root):
    raw = mnist_root / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").rename(raw / "t10k-labels-idx1-ubyte.gz")
    with raises_user_error("missing MNIST file .*t10k-labels-idx1-ubyte.*gunzip"):
        load_image_dataset("mnist", root=str(mnist_root))


def test_mnist_corrupted_file_is_named(mnist_root):
    (mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x09garbage")
    with raises_user_error("train-images-idx3-ubyte is not a valid MNIST idx-ubyte file"):
        load_image_dataset("mnist", root=str(mnist_root))


# --------------------------------------------------------------------------- ImageFolder


def test_imagefolder_with_test_folder(folder_root):
    s = load_image_dataset("imagefolder", root=str(folder_root), val_fraction=0.2)
    assert (s.num_classes, s.input_shape) == (3, (3, 10, 12))  # (C, H, W) of the 12x10 PNGs
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 9)
    assert np.bincount(s.val.targets).tolist() == [2, 2, 2]
    assert_disjoint(s.train.indices, s.val.indices)
    assert tuple(s.train[0][0].shape) == (3, 10, 12)


def test_imagefolder_without_test_folder_is_split(tmp_path):
    write_pngs(tmp_path / "train", per_class=10)
    s = load_image_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert s.input_shape == (3, 8, 8) and len(s.test) == 6
    assert len(s.train) + len(s.val) + len(s.test) == 30
    assert s.train.base is s.test.base
    assert_disjoint(*all_indices(s))


def test_imagefolder_errors(tmp_path):
    with raises_user_error("has no train/ folder"):
        load_image_dataset("imagefolder", root=str(tmp_path))
    (tmp_path / "train").mkdir()
    with raises_user_error("cannot load an image folder"):
        load_image_dataset("imagefolder", root=str(tmp_path))


def test_imagefolder_class_mismatch(tmp_path):
    write_pngs(tmp_path / "train")
    write_pngs(tmp_path / "test", classes=("cat", "dog"))
    with raises_user_error("test classes .* differ from"):
        load_image_dataset("imagefolder", root=str(tmp_path))


def test_imagefolder_unreadable_image_is_named(folder_root):
    (folder_root / "train" / "dog" / "3.png").write_bytes(b"not a png")
    s = load_image_dataset("imagefolder", root=str(folder_root))
    with raises_user_error(r"cannot read image .*dog.3\.png"):
        for view in (s.train, s.val):
            for i in range(len(view)):
                view[i]


# --------------------------------------------------------------------------- loaders


def test_make_loaders(cifar_root):
    s = load_cifar(cifar_root, limit=50)
    train, val, test = make_loaders(s, batch_size=16, seed=5, eval_batch_size=25)
    batches = list(train)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]  # drop_last=False
    assert batches[0][0].shape == (16, 3, 32, 32) and batches[0][1].dtype == torch.int64
    assert [len(y) for _, y in val] == [10] and [len(y) for _, y in test] == [25, 5]
    again = [y for _, y in make_loaders(s, batch_size=16, seed=5)[0]]
    assert all(torch.equal(a, b) for (_, a), b in zip(batches, again))
    other = torch.cat([y for _, y in make_loaders(s, batch_size=16, seed=6)[0]])
    assert not torch.equal(torch.cat(again), other)


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"eval_batch_size": -1}, {"num_workers": -1}])
def test_make_loaders_rejects_bad_sizes(kw):
    s = load_image_dataset("digits", limit=20)
    with raises_user_error(next(iter(kw))):
        make_loaders(s, **kw)


# --------------------------------------------------------------------------- image bad input


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "imagefolder"])
def test_directory_sets_need_root(name):
    with raises_user_error(f"{name}.*root="):
        load_image_dataset(name)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "imagefolder"])
def test_missing_directory(tmp_path, name):
    with raises_user_error("does not exist"):
        load_image_dataset(name, root=str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"name": "cifar"}, "unknown image data set 'cifar'; valid names: digits, mnist5k, cifar10"),
        ({"val_fraction": 0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"val_fraction": True}, "val_fraction"),
        ({"limit": 0}, "limit"),
        ({"limit": -5}, "limit"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_image_arguments(kw, match):
    kw = {"name": "digits", **kw}
    with raises_user_error(match):
        load_image_dataset(kw.pop("name"), **kw)


# --------------------------------------------------------------------------- tabular


@pytest.mark.parametrize(
    "name, n, d, k", [("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3), ("iris", 150, 4, 3), ("digits_flat", 1797, 64, 10)]
)
def test_sklearn_tables(name, n, d, k):
    t = load_tabular_dataset(name)
    assert isinstance(t, TabularSplits) and t.num_classes == k and len(t.feature_names) == d
    assert t.X_train.shape[1] == t.X_val.shape[1] == t.X_test.shape[1] == d
    assert len(t.y_train) + len(t.y_val) + len(t.y_test) == n
    assert len(t.y_test) == pytest.approx(0.2 * n, abs=1) and len(t.y_val) == pytest.approx(0.1 * n, abs=1)
    for y in (t.y_train, t.y_val, t.y_test):
        assert y.dtype == np.int64 and set(np.unique(y)) == set(range(k))  # stratified
    import sklearn.datasets

    loader = "load_digits" if name == "digits_flat" else f"load_{name}"
    original = getattr(sklearn.datasets, loader)().data
    rows = np.concatenate([t.X_train, t.X_val, t.X_test])
    np.testing.assert_array_equal(sorted_rows(rows), sorted_rows(original))  # a partition of the data


def test_digits_flat_is_unscaled():
    t = load_tabular_dataset("digits_flat")
    assert t.X_train.max() == 16 and t.feature_names[0] == "pixel_0_0"


def test_tabular_seeded_determinism():
    a, b, c = (load_tabular_dataset("wine", seed=s) for s in (7, 7, 8))
    for field in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.X_test, c.X_test)


CSV_TEXT = "f1,f2,flag,species\n" + "".join(
    f"{i * 0.5},{i % 7},{i % 2 == 0},{['setosa', 'virginica', 'versicolor'][i % 3]}\n" for i in range(30)
)


def write_csv(tmp_path, text=CSV_TEXT):
    path = tmp_path / "table.csv"
    path.write_text(text)
    return path


def test_csv_happy_path(tmp_path):
    path = write_csv(tmp_path)
    before = path.read_bytes()
    t = load_tabular_dataset("csv", csv=str(path), label="species", val_fraction=0.2, test_fraction=0.3)
    assert path.read_bytes() == before
    assert t.feature_names == ("f1", "f2", "flag") and t.num_classes == 3
    assert (len(t.y_train), len(t.y_val), len(t.y_test)) == (15, 6, 9)
    assert t.X_train.dtype == np.float64
    # labels sorted then encoded: setosa=0, versicolor=1, virginica=2; row i has f1 = i / 2
    rows = np.concatenate([t.X_train, t.X_val, t.X_test])
    labels = np.concatenate([t.y_train, t.y_val, t.y_test])
    expected = {0: 0, 1: 2, 2: 1}
    assert all(labels[r] == expected[int(rows[r, 0] * 2) % 3] for r in range(30))
    assert sorted((rows[:, 0] * 2).astype(int).tolist()) == list(range(30))


def _table(n_per_class=4, classes="ab", extra=""):
    rows = "".join(f"{i},{i * 2},{c}\n" for c in classes for i in range(n_per_class))
    return "x,y,label\n" + rows + extra


@pytest.mark.parametrize(
    "text, kw, match",
    [
        (_table(), {"label": "target"}, "label column 'target' is not in .*columns: x, y, label"),
        (_table(), {"label": None}, "needs label="),
        ("x,y,label\n1,,a\n2,3,b\n" + _table()[12:], {}, "column 'y' has 1 missing value.*line 2"),
        ("x,y,label\n" + "".join(f"{i},v{i},{'ab'[i % 2]}\n" for i in range(10)), {}, "non-numeric feature column.*'y'"),
        (_table(classes="a"), {}, r"single value \('a'\)"),
        (_table(extra="9,9,c\n9,9,c\n"), {}, "class 'c' has 2 sample"),
        (_table(n_per_class=3, classes="abcde"), {}, "too few samples for a stratified test split.*5 classes"),
        ("x,y,label\n", {}, "has no rows"),
        ("", {}, "cannot parse CSV"),
        ("label\na\nb\n", {}, "no feature columns"),
    ],
)
def test_csv_bad_input(tmp_path, text, kw, match):
    path = write_csv(tmp_path, text)
    before = path.read_bytes()
    kw = {"label": "label", **kw}
    with raises_user_error(match):
        load_tabular_dataset("csv", csv=str(path), **kw)
    assert path.read_bytes() == before


def test_csv_file_arguments(tmp_path):
    with raises_user_error("does not exist"):
        load_tabular_dataset("csv", csv=str(tmp_path / "nope.csv"), label="y")
    with raises_user_error("needs csv="):
        load_tabular_dataset("csv", label="y")
    with raises_user_error("apply only to the 'csv' data set"):
        load_tabular_dataset("iris", label="y")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"name": "mnist"}, "unknown tabular data set 'mnist'; valid names: breast_cancer, wine, iris, digits_flat, csv"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction must be below 1"),
    ],
)
def test_bad_tabular_arguments(kw, match):
    kw = {"name": "iris", **kw}
    with raises_user_error(match):
        load_tabular_dataset(kw.pop("name"), **kw)

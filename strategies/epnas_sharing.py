"""EPNAS's global parameter-sharing dictionary (paper 004, Sec. 3.4 "parameter sharing").

Every trained network writes its layers' weights into one dictionary keyed by
``"<layer index>:<op type>"``; a new network starts from the stored weights of the keys it has
(shapes that differ are sliced or padded, :func:`copy_sliced`).  When two networks write the same
key, the weights of the better-scoring one win (:func:`merge_entries`, the paper's clash rule).
:class:`SharedWeights` keeps the dictionary in one file that concurrent trials share.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from search_spaces.files import atomic_write_bytes

__all__ = ["SharedWeights", "copy_sliced", "merge_entries"]


def copy_sliced(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy the overlapping block of ``src`` into ``dst`` (sliced where larger, ``dst``'s own
    values kept where ``src`` is smaller: padding); scalars/0-d copied when shapes match."""
    if dst.shape == src.shape:
        dst.copy_(src)
        return
    if dst.dim() != src.dim():
        return
    idx = tuple(slice(0, min(a, b)) for a, b in zip(dst.shape, src.shape))
    dst[idx].copy_(src[idx])


def merge_entries(store: dict[str, dict], new: Mapping[str, Mapping[str, Any]], score: float) -> int:
    """Clash rule of Sec. 3.4: for each key, the weights of the better-scoring model win.

    ``store``/``new``: ``{key: {name: tensor}}``; ``store`` values are ``{"score", "state"}``.
    Returns the number of keys written."""
    written = 0
    for key, state in new.items():
        old = store.get(key)
        if old is None or score >= float(old["score"]):
            store[key] = {"score": float(score), "state": {k: v.detach().cpu().clone() for k, v in state.items()}}
            written += 1
    return written


class SharedWeights:
    """The global parameter-sharing dictionary of Sec. 3.4 in one file.

    ``{"version": 1, "entries": {key: {"score": accuracy, "state": {name: tensor}}}}``, read and
    written under an ``fcntl`` lock on ``<file>.lock`` (read-modify-write is serialised between
    concurrent trials) and replaced atomically (temp file + rename: a reader never sees a torn
    file).  A file that cannot be read is ignored with a warning and replaced on the next write.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            blob = torch.load(io.BytesIO(self.path.read_bytes()), weights_only=True, map_location="cpu")
            entries = blob["entries"]
            if blob.get("version") != 1 or not isinstance(entries, dict):
                raise ValueError("unexpected layout")
            for key, e in entries.items():
                float(e["score"])
                if not all(isinstance(t, torch.Tensor) for t in e["state"].values()):
                    raise ValueError(f"entry {key!r} holds non-tensors")
            return entries
        except Exception as exc:  # noqa: BLE001 - any unreadable file is ignored, never a crash
            warnings.warn(f"ignoring unreadable parameter-sharing file {self.path}: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
            return {}

    def load_into(self, model: nn.Module) -> int:
        """Copy stored weights into ``model.shareable()`` modules; returns the number of keys used."""
        with self._locked(exclusive=False):
            entries = self.read()
        used = 0
        with torch.no_grad():
            for key, module in model.shareable().items():
                entry = entries.get(key)
                if entry is None:
                    continue
                own = module.state_dict()
                for name, tensor in entry["state"].items():
                    if name in own:
                        copy_sliced(own[name], tensor.to(own[name].dtype))
                used += 1
        return used

    def update(self, model: nn.Module, score: float) -> int:
        """Merge ``model``'s weights in (per key, the higher score wins); returns keys written."""
        with self._locked(exclusive=True):
            entries = self.read()
            written = merge_entries(entries, {k: m.state_dict() for k, m in model.shareable().items()}, score)
            buf = io.BytesIO()
            torch.save({"version": 1, "entries": entries}, buf)
            atomic_write_bytes(self.path, buf.getvalue())
        return written

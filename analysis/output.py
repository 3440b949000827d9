"""What a report produces: files written, tables, and text for the terminal."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["Output", "save_csv", "save_figure", "format_table"]

DPI = 120


@dataclass
class Output:
    files: list[Path] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)

    def extend(self, other: "Output") -> "Output":
        self.files.extend(other.files)
        self.tables.update(other.tables)
        self.text.extend(other.text)
        return self


def _atomic(path: Path, write) -> Path:
    # Same temp-file + rename rule as the run folders: a reader never sees a torn file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    return _atomic(Path(path), lambda tmp: df.to_csv(tmp, index=False))


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    return _atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))


def format_table(df: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """``df`` as aligned text; NaN/None print as ``-``; ``formats`` maps column -> format spec."""
    formats = formats or {}
    shown = pd.DataFrame(index=df.index)
    for c in df.columns:
        spec = formats.get(c)

        def fmt(v, spec=spec):
            if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
                return "-"
            if spec:
                try:
                    return format(v, spec)
                except (TypeError, ValueError):
                    pass
            return str(v)

        shown[c] = df[c].map(fmt)
    return shown.to_string(index=False)

"""The README's "Python API" examples run as written (one per method, 15 lines or fewer)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
METHODS = ("proxyless", "epnas", "growth", "scann")


def _examples() -> list[str]:
    text = README.read_text()
    start = text.index("\n## Python API\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_one_short_example_per_method():
    blocks = _examples()
    assert len(blocks) == len(METHODS)
    for method, code in zip(METHODS, blocks):
        assert len(code.rstrip("\n").splitlines()) <= 15, method
        compile(code, f"README:{method}", "exec")


@pytest.mark.parametrize("method", METHODS)
def test_readme_example_runs(method, tmp_path, monkeypatch, capsys):
    code = dict(zip(METHODS, _examples()))[method]
    monkeypatch.chdir(tmp_path)                       # out_dir="runs/..." lands here
    monkeypatch.setenv("HOME", str(tmp_path))         # NNI's experiment folders
    ns: dict = {"__name__": f"readme_{method}"}
    try:
        exec(compile(code, f"README:{method}", "exec"), ns)
    finally:
        if "exp" in ns and hasattr(ns["exp"], "stop"):
            ns["exp"].stop()
    out = capsys.readouterr().out
    assert out.strip(), "the example prints its result"
    if method == "proxyless":
        r = ns["strategy"].result
        assert 0 <= r["test_acc"] <= 1 and r["search_epochs"] == 3
        run = tmp_path / "runs" / "api" / "proxyless"
        assert {"metrics.csv", "trajectory.csv", "arch.json", "summary.json"} <= {p.name for p in run.iterdir()}
    elif method == "epnas":
        final = ns["strategy"].final
        assert final.finished and final.records and all(r["status"] == "done" for r in final.results())
        assert all(r["params"] <= 5e4 and 0 <= r["test_acc"] <= 1 for r in final.results())
    elif method == "growth":
        r = ns["result"]
        assert 0 < r["params_ratio"] <= 1 and 0 <= r["test_acc"] <= 1 and {"grow", "finetune"} == {
            row["phase"] for row in r["rows"]}
    else:
        r = ns["result"]
        assert r["test_acc"] > 0.8 and r["params"] > 0

"""The NNI web UI, checked in a real browser (issue 21): a finished small experiment's trials page
in headless Chromium (Debian's ``chromium``; installed here when missing and we are root) lists
every trial with its ``default``, ``params`` and ``flops`` -- the numeric keys our trials report,
which the web UI turns into columns.

The browser is driven over the Chrome DevTools Protocol (``websockets``, which NNI already
needs): the trials table shows only its default columns until a user picks more in "Add/Remove
columns", a choice the web UI keeps in ``localStorage`` (``<experiment id>_columns``); the test
stores the same choice there, as that dialog would, then reads the rendered page's text.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from experiments.launch import free_port, run_experiment

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.nnictl]

COLUMNS = ["sequenceId", "id", "status", "latestAccuracy", "metric/default", "metric/params", "metric/flops"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if cmd[1] == "install" and done.returncode == 0:
            break
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"chromium could not be installed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return found


class Browser:
    """One headless Chromium page, driven over the DevTools Protocol."""

    def __init__(self, chromium: str, profile: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--remote-debugging-port={self.port}", "--remote-allow-origins=*", f"--user-data-dir={profile}",
             "--window-size=1600,1200", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("headless chromium did not start its DevTools endpoint")
            time.sleep(0.3)
        from websockets.sync.client import connect

        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:   # events arrive in between; the answer carries our id
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    def open(self, url: str, timeout: float = 30) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while self.evaluate("document.readyState") != "complete":
            if time.time() > deadline:
                raise TimeoutError(f"{url} did not load")
            time.sleep(0.2)

    def text_when(self, ready, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while True:
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if ready(text) or time.time() > deadline:
                return text
            time.sleep(0.5)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _shown(value: float) -> list[str]:
    """How the web UI may print a metric value (integers plain, floats to 6 significant digits)."""
    forms = {str(value), f"{value:.6g}", f"{value:.6f}".rstrip("0").rstrip(".")}
    if float(value).is_integer():
        forms.add(str(int(value)))
    return sorted(forms)


def test_web_ui_lists_every_trial_with_its_metrics(tmp_path):
    chromium = _chromium()
    config = {
        "experimentName": "test-webui",
        "searchSpace": {"scope": {"_type": "choice", "_value": ["none", "s"]}},
        "trialCommand": ("python -m experiments.trial proxyless --dataset digits --limit 400 --width 0.0625 "
                         "--batch_size 32 --search_epochs 2 --retrain_epochs 2 --threads 1 --device cpu "
                         "--progress false --allow_degenerate true"),   # what the page shows is the point
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": 2,
        "maxTrialNumber": 2,
        "tuner": {"name": "GridSearch"},
        "trainingService": {"platform": "local", "useActiveGpu": False},
    }
    with run_experiment(config, tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(2), exp.log_tail()
        finals = {tid: exp.final_metric(tid) for tid in exp.trial_ids}
        browser = Browser(chromium, tmp_path / "chrome")
        try:
            origin = f"http://127.0.0.1:{exp.port}"
            browser.open(f"{origin}/oview")
            stored = json.dumps({"value": json.dumps(COLUMNS), "time": int(time.time() * 1000),
                                 "expire": 2592e6, "isSelectall": False})
            browser.evaluate(f"localStorage.setItem({json.dumps(exp.experiment_id + '_columns')}, {json.dumps(stored)})")
            browser.open(f"{origin}/detail")
            text = browser.text_when(lambda t: all(tid in t for tid in finals) and "flops" in t)
            (tmp_path / "detail.txt").write_text(text)
            shot = browser.call("Page.captureScreenshot")["data"]   # base64 PNG, kept for a look
            (tmp_path / "detail.png").write_bytes(__import__("base64").b64decode(shot))
        finally:
            browser.close()
    # each trial's row: from its ID to the next trial's (the table prints one cell per line)
    starts = sorted((text.index(tid), tid) for tid in finals if tid in text)
    assert [tid for _, tid in starts] and len(starts) == len(finals), f"trials missing on the page:\n{text[:2000]}"
    for (at, tid), nxt in zip(starts, [*starts[1:], (len(text), None)]):
        row = text[at:nxt[0]]
        assert "SUCCEEDED" in row
        for key in ("default", "params", "flops"):
            assert any(form in row for form in _shown(finals[tid][key])), \
                f"trial {tid}: {key}={finals[tid][key]} not in its row:\n{row}"

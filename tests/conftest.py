import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")
os.environ.setdefault("COMPACTNAS_TEST", "1")


@pytest.fixture(autouse=True, scope="session")
def _nni_registry_in_tmp(tmp_path_factory):
    """NNI binds its experiment registry (``~/nni-experiments/.experiment``) to the HOME it sees at
    import (``nni/tools/nnictl/constants.py``), so a test's ``monkeypatch.setenv("HOME", ...)``
    comes too late for NasExperiment runs: point the registry at a temp dir for the session."""
    from nni.tools.nnictl import config_utils

    home = tmp_path_factory.mktemp("nni-home") / "nni-experiments"
    old = config_utils.Experiments.__init__.__defaults__
    config_utils.Experiments.__init__.__defaults__ = (str(home),)
    yield
    config_utils.Experiments.__init__.__defaults__ = old


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture
def run_notebook(tmp_path, monkeypatch):
    """Execute a notebook of ``analysis/notebooks/`` (``trajectories.ipynb`` unless named) top to
    bottom on a folder (``COMPACTNAS_RUN_DIR``); returns its code-cell outputs, none an error.

    A private kernelspec runs *this* interpreter, so a global "python3" kernel (or none at all)
    on the machine cannot change what executes the notebook.
    """
    import json
    import sys
    from pathlib import Path

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = Path(__file__).resolve().parents[1]
    kdir = tmp_path / "jupyter" / "kernels" / "compactnas-test"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "compactnas test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    def run(folder, notebook: str = "trajectories.ipynb"):
        monkeypatch.setenv("COMPACTNAS_RUN_DIR", str(folder))
        nb = nbformat.read(root / "analysis" / "notebooks" / notebook, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name="compactnas-test", timeout=180,
                                         resources={"metadata": {"path": str(root / "analysis" / "notebooks")}})
        client.execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        return outputs

    return run

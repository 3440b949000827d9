"""One source of truth for SCANN's nnictl sweep (issue #20, part 2): ``scann_schemes.yml``'s
searchSpace is what ``search_spaces.feedforward`` declares, and it declares nothing else."""
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from experiments.methods.scann import ScannTrialConfig
from search_spaces.errors import UserError
from search_spaces.feedforward import (DR_SWEEP_RATIOS, SCHEMES, SWEEP_KEYS, dr_choice, synthesis_mutables,
                                       synthesis_search_space)
from strategies.dimred import INDUCTIVE_METHODS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "scann_schemes.yml"


def test_scann_schemes_yml_is_the_declared_sweep():
    conf = yaml.safe_load(CONFIG.read_text())
    declared = synthesis_search_space(["scheme"], dr_methods=INDUCTIVE_METHODS)
    assert conf["searchSpace"] == declared
    # the grid of that space is what maxTrialNumber budgets: every scheme x (none + method x ratio)
    assert conf["maxTrialNumber"] == len(SCHEMES) * (1 + len(INDUCTIVE_METHODS) * len(DR_SWEEP_RATIOS))


def test_only_swept_settings_are_declared():
    # scheme is the only setting with a default sweep; the others exist only when given values
    assert set(synthesis_mutables()) == {"scheme"}
    m = synthesis_mutables(prune_keep=[0.05, 0.1], iterations=[3])
    assert set(m) == {"scheme", "prune_keep", "iterations"} and list(m["prune_keep"].values) == [0.05, 0.1]
    trial_keys = {f.name for f in fields(ScannTrialConfig)}
    assert set(SWEEP_KEYS) <= trial_keys and {"dr_method", "dr_ratio"} <= trial_keys
    with pytest.raises(UserError, match="unknown synthesis setting 'prune_keeps'"):
        synthesis_mutables(prune_keeps=[0.05])
    with pytest.raises(UserError, match="needs at least one value"):
        synthesis_mutables(iterations=[])


def test_dr_choice_is_nested_and_sweeps_none_once():
    choice = dr_choice(["pca", "ica"], [0.5])
    assert choice == {"_type": "choice", "_value": [
        {"_name": "none"},
        {"_name": "pca", "dr_ratio": {"_type": "choice", "_value": [0.5]}},
        {"_name": "ica", "dr_ratio": {"_type": "choice", "_value": [0.5]}}]}
    with pytest.raises(UserError, match="always swept"):
        dr_choice(["none", "pca"])
    with pytest.raises(UserError, match="at least one method"):
        dr_choice([])
    assert "dr_method" not in synthesis_search_space()

"""DR for DR+SCANN: range normalisation, the nine DR methods, Algorithm 1, the DR+SCANN trial."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from experiments import nni_bridge
from experiments.config import build_config
from experiments.data import load_tabular_dataset
from experiments.errors import UserError
from experiments.harness import execute
from experiments.methods.scann import ScannTrialConfig, run as scann_run
from search_spaces.feedforward import PrunedFeedForward
from strategies.dimred import (
    DR_METHODS,
    INDUCTIVE_METHODS,
    DREval,
    GlobalScaler,
    RangeNormalizer,
    check_ratio,
    dr_search,
    n_components,
    reduce_dataset,
    shrink_hidden,
)


def one_line_user_error(fn, match: str):
    with pytest.raises(UserError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def cancer():
    return load_tabular_dataset("breast_cancer", seed=0)


def test_range_normalisation_is_fit_on_the_training_split_only():
    train = np.array([[0.0, 5.0, 1.0], [10.0, 7.0, 1.0], [5.0, 6.0, 1.0]])
    held_out = np.array([[20.0, 4.0, 3.0]])
    norm = RangeNormalizer().fit(train)
    assert np.allclose(norm.transform(train), [[0, 0, 0], [1, 1, 0], [0.5, 0.5, 0]])
    assert np.allclose(norm.transform(held_out), [[2.0, -0.5, 2.0]])  # held-out data may leave [0, 1]


def test_global_scaler_keeps_the_relative_spread_of_the_features():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 3)) * [10.0, 1.0, 0.1] + [5.0, -2.0, 0.0]
    sc = GlobalScaler().fit(train)
    z = sc.transform(train)
    assert np.allclose(z.mean(0), 0) and np.sqrt(np.mean(z.var(0))) == pytest.approx(1)
    # one scale for all: the spreads keep their ratios 100 : 10 : 1 (a per-feature scaler makes them equal)
    assert z.std(0) / z.std(0)[2] == pytest.approx([100, 10, 1], rel=0.1)
    assert np.allclose(sc.transform(train.mean(0, keepdims=True)), 0)  # the training mean maps to 0
    assert np.allclose(GlobalScaler().fit(np.ones((4, 2))).transform(np.ones((1, 2))), 0)  # no spread: centred only
    with pytest.raises(UserError, match="2-D"):
        GlobalScaler().fit(np.ones(3))


def test_pca_keeps_its_low_variance_tail_small():
    """The reduced features reach the DR model with PCA's variance ordering intact: the
    last component spreads far less than the first (a per-feature [0, 1] rescaling made them
    equal and cost the digits DR models about 2 points of accuracy)."""
    digits = load_tabular_dataset("digits_flat", seed=0)
    red = reduce_dataset(digits.X_train, digits.X_val, method="pca", ratio=0.75, seed=0)
    spread = red.X_train.std(0)
    assert spread[0] > 10 * spread[-1]


@pytest.mark.parametrize("method", INDUCTIVE_METHODS)
def test_every_inductive_method_is_fit_on_train_only(cancer, method):
    ratio = 0.2
    a = reduce_dataset(cancer.X_train, cancer.X_val, cancer.X_test, method=method, ratio=ratio, seed=0)
    k = n_components(cancer.X_train.shape[1], ratio)
    assert a.n_components == k == 6 and not a.transductive
    assert a.X_train.shape == (len(cancer.X_train), k) and a.X_test.shape == (len(cancer.X_test), k)
    # centred on train, one overall scale: unit root-mean-square spread, relative spreads kept
    assert np.allclose(a.X_train.mean(0), 0) and np.sqrt(np.mean(a.X_train.var(0))) == pytest.approx(1)
    # held-out data cannot influence the fit: scrambling it leaves the training features unchanged
    rng = np.random.default_rng(1)
    b = reduce_dataset(cancer.X_train, rng.permutation(cancer.X_val) * 7 + 3, cancer.X_test[:5] * -2,
                       method=method, ratio=ratio, seed=0)
    assert np.allclose(a.X_train, b.X_train)
    # and the fitted pieces map new raw samples exactly like the held-out splits
    assert np.allclose(a.transform(cancer.X_test), a.X_test, atol=1e-8)


def test_random_projection_matrices_are_the_papers_four():
    X = np.random.default_rng(0).random((60, 400))
    k = 100

    def matrix(method):
        r = reduce_dataset(X[:40], X[40:], None, method=method, ratio=k / 400, seed=0)
        m = r.reducer.components_
        return m.toarray() if hasattr(m, "toarray") else np.asarray(m)

    g = matrix("rp_gaussian")
    assert g.shape == (k, 400) and abs(g.std() * math.sqrt(k) - 1) < 0.05  # N(0, 1/k)
    b = matrix("rp_binary")
    assert np.allclose(np.abs(b), 1 / math.sqrt(k))  # +-1 (scaled), no zeros
    assert abs((b > 0).mean() - 0.5) < 0.02
    a = matrix("rp_achlioptas")
    assert set(np.round(np.unique(np.abs(a)) * math.sqrt(k), 6)) == {0.0, round(math.sqrt(3), 6)}
    assert abs((a != 0).mean() - 1 / 3) < 0.02
    li = matrix("rp_li")
    assert abs((li != 0).mean() - 1 / math.sqrt(400)) < 0.01  # very sparse: density 1/sqrt(d)
    assert set(np.round(np.unique(np.abs(li)) * math.sqrt(k), 6)) == {0.0, round(400 ** 0.25, 6)}


def test_spectral_embedding_is_refused_unless_marked_transductive(cancer):
    one_line_user_error(lambda: reduce_dataset(cancer.X_train, cancer.X_val, cancer.X_test, method="spectral",
                                               ratio=0.2), "cannot transform held-out data")
    r = reduce_dataset(cancer.X_train, cancer.X_val, cancer.X_test, method="spectral", ratio=0.2,
                       allow_transductive=True)
    assert r.transductive and r.X_test.shape == (len(cancer.X_test), 6)
    one_line_user_error(lambda: r.transform(cancer.X_test), "transductive")
    one_line_user_error(lambda: dr_search(cancer.X_train, cancer.X_val, None, evaluate=lambda d: DREval(0.5),
                                          methods=["pca", "spectral"]), "transductive")
    assert DR_METHODS["spectral"].transductive and "spectral" not in INDUCTIVE_METHODS


@pytest.mark.parametrize("ratio", [0, 1, 1.0, -0.3, 2, float("nan"), "half", True, None])
def test_compression_ratio_outside_0_1_is_rejected(ratio):
    one_line_user_error(lambda: check_ratio(ratio), "strictly between 0 and 1")


def test_bad_ratio_and_method_reach_the_user_as_one_line(cancer):
    one_line_user_error(lambda: reduce_dataset(cancer.X_train, cancer.X_val, method="pca", ratio=1.5), "dr_ratio")
    one_line_user_error(lambda: reduce_dataset(cancer.X_train, cancer.X_val, method="lda", ratio=0.5),
                        "unknown DR method")
    one_line_user_error(lambda: build_config(ScannTrialConfig, {"dr_method": "search", "dr_ratios": [0.5, 1.2]}),
                        "dr_ratios")


def test_dr_model_shrinks_every_hidden_layer_by_the_ratio():
    assert shrink_hidden((128, 64), 0.25) == (32, 16)
    assert shrink_hidden((10, 3), 0.1) == (1, 1)
    assert n_components(30, 0.5) == 15 and n_components(4, 0.01) == 1 and n_components(4, 0.99) == 3


def test_algorithm1_terminates_poor_methods_and_stops_at_accuracy_drops(cancer):
    # scripted validation accuracies per (method, ratio)
    acc = {("pca", 0.75): 0.95, ("pca", 0.5): 0.96, ("pca", 0.25): 0.90, ("pca", 0.1): 0.97,
           ("rp_binary", 0.75): 0.80, ("rp_binary", 0.5): 0.99,
           ("rp_gaussian", 0.75): 0.94, ("rp_gaussian", 0.5): 0.96, ("rp_gaussian", 0.25): 0.96,
           ("rp_gaussian", 0.1): 0.95}
    seen = []

    def evaluate(data):
        seen.append((data.method, data.ratio))
        return DREval(val_acc=acc[(data.method, data.ratio)], test_acc=0.0, payload=data.method)

    res = dr_search(cancer.X_train, cancer.X_val, cancer.X_test, evaluate=evaluate,
                    methods=["pca", "rp_binary", "rp_gaussian"], ratios=[0.25, 0.75, 0.1, 0.5], poor_margin=0.05,
                    drop_margin=0.02)
    status = {(r.method, r.ratio): r.status for r in res.records}
    assert status[("pca", 0.25)] == "stopped" and status[("pca", 0.1)] == "skipped"  # drop > 2 points
    assert status[("rp_binary", 0.75)] == "terminated" and status[("rp_binary", 0.5)] == "skipped"  # poor start
    assert ("rp_binary", 0.5) not in seen and ("pca", 0.1) not in seen
    # best validation accuracy, ties broken by the smaller ratio: rp_gaussian 0.25 beats 0.5
    assert (res.best.method, res.best.ratio, res.best.val_acc) == ("rp_gaussian", 0.25, 0.96)
    assert res.payload == "rp_gaussian" and res.data.ratio == 0.25
    assert len(res.records) == 12


def test_algorithm1_most_compressed_takes_the_best_methods_smallest_ratio_within_tolerance(cancer):
    """``select="most_compressed"``: the paper's DR (M.C.) model -- the method of the best validation
    DR model (Table VI's note: the same method, maybe another ratio), at its smallest ratio within
    ``tolerance`` of the reference; no model of that method holds it: the best one."""
    acc = {("pca", 0.75): 0.970, ("pca", 0.5): 0.965, ("pca", 0.25): 0.962, ("pca", 0.1): 0.955,
           ("rp_gaussian", 0.75): 0.960, ("rp_gaussian", 0.5): 0.962, ("rp_gaussian", 0.25): 0.966,
           ("rp_gaussian", 0.1): 0.966}

    def search(select, reference, tolerance=0.005):
        return dr_search(cancer.X_train, cancer.X_val, cancer.X_test, methods=["pca", "rp_gaussian"],
                         evaluate=lambda d: DREval(acc[(d.method, d.ratio)], payload=(d.method, d.ratio)),
                         ratios=[0.75, 0.5, 0.25, 0.1], reference_acc=reference, select=select,
                         tolerance=tolerance)

    best = search("best", 0.966)
    assert (best.best.method, best.best.ratio) == ("pca", 0.75) == (best.highest.method, best.highest.ratio)
    mc = search("most_compressed", 0.966)  # floor 0.961: pca 0.25 holds, pca 0.1 does not
    assert (mc.best.method, mc.best.ratio) == ("pca", 0.25) and mc.payload == ("pca", 0.25)
    assert mc.data.method == "pca" and mc.data.n_components == 8  # its own reduced data, 0.25 x 30
    assert (mc.highest.method, mc.highest.ratio) == ("pca", 0.75)  # rp_gaussian 0.1 holds too: another method
    assert [(r.method, r.ratio, r.status) for r in mc.records] == [(r.method, r.ratio, r.status) for r in best.records]
    assert search("most_compressed", 0.966, tolerance=0.02).best.ratio == 0.1
    assert search("most_compressed", 0.99).best.ratio == 0.75  # none holds: the best
    assert search("most_compressed", None).best.ratio == 0.5  # no reference: the best DR model's 0.970
    one_line_user_error(lambda: search("smallest", 0.966), "dr_select must be one of")
    one_line_user_error(lambda: search("most_compressed", 0.966, tolerance=-0.1), "tolerance")


def test_dr_scann_trial_end_to_end(tmp_path, cancer):
    nni_bridge._reset_for_tests()
    cfg = build_config(ScannTrialConfig, dict(dataset="breast_cancer", dr_method="search", dr_methods=["pca", "rp_li"],
                                              dr_ratios=[0.5, 0.2], baseline_hidden=[16], baseline_epochs=5,
                                              iterations=1, epochs_per_op=2, scheme="C", prune_keep=0.3,
                                              progress=False, device="cpu"))
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    folder = tmp_path / "run"
    assert summary["dr_method"] in ("pca", "rp_li") and summary["dr_ratio"] in (0.5, 0.2)
    k = summary["dr_n_components"]
    assert k == round(30 * summary["dr_ratio"])
    import pandas as pd

    dr = pd.read_csv(folder / "dr.csv")
    assert len(dr) == 4 and set(dr["dr_method"]) == {"pca", "rp_li"}
    # the DR model: hidden layer shrunk by the ratio
    assert summary["dr_neurons"] == math.ceil(16 * summary["dr_ratio"])
    # preprocess.pkl + model.pt reproduce the reported test accuracy from raw test data
    import json

    arch = json.loads((folder / "arch.json").read_text())
    assert arch["num_inputs"] == k and arch["preprocess"]["kind"] == "dr"
    pre = pickle.loads((folder / "preprocess.pkl").read_bytes())
    X = pre["post_normalizer"].transform(pre["reducer"].transform(pre["normalizer"].transform(cancer.X_test)))
    model = PrunedFeedForward(k, arch["pruned_shapes"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    with torch.no_grad():
        pred = model(torch.as_tensor(X, dtype=torch.float32)).argmax(1).numpy()
    assert (pred == cancer.y_test).mean() == pytest.approx(summary["test_acc"])

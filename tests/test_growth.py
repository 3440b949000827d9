"""Growing by structured continuous sparsification: layout rules, Eq. 4 / Eq. 7 mechanics, real
training savings, exact export, the trial runner (run folder, resume) and bad input."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from experiments.config import build_config
from experiments.harness import execute
from experiments.methods.growth import GrowthTrialConfig, run
from search_spaces import cost as costmodel
from search_spaces.errors import UserError, exit_on_error
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.growth_spaces import (FAMILIES, ConvSpec, GrowableNet, Layout, Plan, UnitSpec, build_compact,
                                         compact_arch, full_arch, make_layout)
from strategies.growth import GrowthConfig, GrowthSearch, layer_train_flops

REPO = Path(__file__).resolve().parents[1]
# allow_degenerate: the networks these tiny runs train learn nothing (exported anyway; the check: test_degenerate.py)
TINY = dict(dataset="digits", limit=128, family="basic3resnet", width=0.25, stage_blocks=[2, 2, 2], epochs=3,
            batch_size=32, budget=0.5, budget_every=2, final_beta=10.0, progress=False, threads=1,
            allow_degenerate=True)


def _search(family="basic3resnet", blocks=(2, 2, 2), width=0.25, seed=0, in_ch=1, **kw):
    layout = make_layout(family, num_classes=10, in_channels=in_ch, width=width,
                         stage_blocks=None if family == "vgg16" else blocks)
    torch.manual_seed(seed)
    net = GrowableNet(layout)
    cfg = GrowthConfig(**{"epochs": 4, **kw})
    return GrowthSearch(net, cfg, input_shape=(in_ch, 8, 8), steps_per_epoch=4, seed=seed)


def _batch(n=16, in_ch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_ch, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ---- configuration spaces ----------------------------------------------------------------------
def test_residual_tied_channels_share_one_indicator():
    lay = make_layout("resnet20", width=0.5)
    prod = lay.producers()
    # stage 1: the stem and the last conv of each of the 3 blocks add into one stream
    assert sorted(prod["stage1"]) == sorted(["stem", "s1u0_c2", "s1u1_c2", "s1u2_c2"])
    # stages 2, 3: the projection shortcut and the blocks' last convs
    assert sorted(prod["stage2"]) == sorted(["s2u0_sc", "s2u0_c2", "s2u1_c2", "s2u2_c2"])
    net = GrowableNet(lay)
    assert net.s_chan["stage2"].shape == (lay.groups["stage2"],)     # one indicator per tied filter
    assert not lay.growable_units()                                   # ResNet-20: channels only
    # every conv writes exactly one group; private groups have exactly one producer
    assert all(len(v) == 1 for g, v in prod.items() if not g.startswith("stage"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layer_indicators_never_on_resolution_changing_units(family):
    lay = make_layout(family, width=0.125, stage_blocks=None if family == "vgg16" else (2,) * len(
        FAMILIES[family]["widths"]))
    for u in lay.growable_units():
        assert all(c.stride == 1 for c in u.convs) and u.shortcut is None and u.cin == u.cout
    if FAMILIES[family]["grow_layers"]:
        assert lay.growable_units()
        # init: one unit per stage (the fixed transition unit, or the first growable one)
        net = GrowableNet(lay)
        active = net.active_units(net.deterministic_plan())
        for s in range(1, lay.n_stages + 1):
            assert sum(1 for u in lay.units if u.stage == s and u.name in active) == 1
        assert all(len((net.s_chan[g] > 0).nonzero()) == 1 for g in lay.groups)


def test_layer_indicator_on_strided_unit_is_user_error():
    conv = ConvSpec(name="c", cin="a", cout="b", kernel=3, stride=2)
    with pytest.raises(UserError, match="changes resolution"):
        Layout(family="x", in_channels=3, num_classes=10, groups={"a": 4, "b": 8},
               stem=(ConvSpec(name="stem", cin="input", cout="a", kernel=3),), stem_pool=False,
               units=(UnitSpec(name="u", kind="plain", stage=1, convs=(conv,), growable=True),), head="b",
               n_stages=1)
    with pytest.raises(UserError, match="vgg16 grows channels only"):
        make_layout("vgg16", grow_layers=True)
    with pytest.raises(UserError, match="unknown seed family"):
        make_layout("resnet21")


# ---- Eq. 7: structure-wise temperature ---------------------------------------------------------
def test_structure_counters_advance_only_when_sampled():
    s = _search()
    plans = []
    orig = s.sample_plan

    def record():
        p = orig()
        plans.append(p)
        return p

    s.sample_plan = record
    x, y = _batch()
    s.train_step(x, y)
    plan = plans[0]
    computed = {c.cout for c in s.net.layout.convs() if c.name in s.net.used}
    for g, t in s.t_chan.items():
        expect = torch.zeros_like(t)
        if g in computed:
            expect[plan.idx[g]] = 1 / s.steps_per_epoch
        assert torch.equal(t, expect), g
    for u, t in s.t_unit.items():
        assert float(t) == (1 / s.steps_per_epoch if plan.units[u] is not None else 0.0)
    # beta = beta0 * gamma ** t: sampled structures got stiffer, the others did not move
    g = "stage1"
    beta = s.net.beta_chan(g)
    assert torch.allclose(beta, s.gamma ** s.t_chan[g])
    # a detached unit's private filters were not computed: their counters stay 0
    for u in s.net.layout.growable_units():
        if plan.units[u.name] is None:
            assert float(s.t_chan[u.convs[0].cout].sum()) == 0.0


def test_global_schedule_ablation_uses_epoch():
    s = _search(temperature="global")
    x, y = _batch()
    s.train_step(x, y)
    assert all(torch.all(s.net.beta_chan(g) == 1.0) for g in s.t_chan)
    s.epoch = 2
    s._apply_temperatures()
    assert all(torch.allclose(s.net.beta_chan(g), torch.full_like(s.net.beta_chan(g), s.gamma ** 2)) for g in s.t_chan)


def test_random_baseline_gumbel_and_flops_budget_options():
    s = _search(family="resnet20", width=0.5, sampling="random", random_prob=0.3)
    plan = s.sample_plan()
    n = sum(i.numel() for i in plan.idx.values())
    total = sum(s.net.layout.groups.values())
    assert 0.2 < n / total < 0.4                     # Table 5 baseline: fixed probability, not sigmoid(beta*s)
    x, y = _batch()
    s.train_step(x, y)
    g = _search(relax="gumbel", budget_type="flops")
    assert g.delta_u == pytest.approx((1 - g.cfg.budget) - (1 - g.current["flops"] / g.full_flops))
    loss, _, flops = g.train_step(x, y)
    assert math.isfinite(loss) and flops > 0


# ---- Eq. 4: budget-aware lambda ----------------------------------------------------------------
def test_budget_update_sign_grows_when_too_sparse_and_prunes_when_too_dense():
    s = _search(budget=0.5)
    assert s.current["params"] < 0.5 * s.full_params
    assert s.delta_u < 0 and s.lam_chan < 0 and s.lam_unit < 0        # too sparse: grow
    s.net.zero_grad()
    s.penalty().backward()
    assert all(torch.all(p.grad < 0) for p in s.net.s_chan.values())  # gradient descent raises s
    with torch.no_grad():                                            # everything active: too dense
        for p in s.net.mask_parameters():
            p.fill_(3.0)
    s.update_budget()
    assert s.current["params"] == s.full_params
    assert s.delta_u == pytest.approx(0.5) and s.lam_chan > 0
    s.net.zero_grad()
    s.penalty().backward()
    assert all(torch.all(p.grad > 0) for p in s.net.s_chan.values())


# ---- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_equals_grown_network_deterministic_outputs(family):
    in_ch = 3
    s = _search(family=family, blocks=(2,) * max(1, len(FAMILIES[family]["widths"])), width=0.125, in_ch=in_ch)
    x, y = _batch(in_ch=in_ch)
    for _ in range(3):
        s.train_step(x, y)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():                      # a mixed state: some filters/units on, some off
        for p in s.net.mask_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    s.net.eval()
    ref = s.net(x)
    compact, arch = s.export()
    compact.eval()
    assert (compact(x) - ref).abs().max().item() < 1e-6
    assert costmodel.count_params(compact) < costmodel.count_params(build_compact(full_arch(s.net.layout)))
    # the budget's analytic costs are the cost model's on the exported network
    assert s.current_cost() == {"params": costmodel.count_params(compact),
                                "flops": costmodel.count_flops(compact, (in_ch, 8, 8))}
    # arch.json is enough to rebuild the module and load its state_dict
    again = build_compact(json.loads(json.dumps(arch)))
    again.load_state_dict(compact.state_dict())
    again.eval()
    assert torch.equal(again(x), compact(x))


# ---- real training savings ---------------------------------------------------------------------
def test_train_flops_drop_when_structures_inactive_and_match_whole_network_count():
    s = _search()
    x, y = _batch()
    _, _, grown = s.train_step(x, y)
    full_net = build_compact(full_arch(s.net.layout)).train()
    full = costmodel.count_train_flops(full_net, x, y)
    assert 0 < grown < 0.5 * full
    # the per-layer count equals counting the whole network on the same plan
    plan = s.sample_plan()
    plan = Plan(idx=plan.idx, mult={k: v.detach() for k, v in plan.mult.items()},
                units={k: (None if v is None else v.detach()) for k, v in plan.units.items()})
    s.net.plan = plan
    s.net.freeze_bn_stats = True
    whole = costmodel.count_train_flops(s.net, x, y)
    per_layer = sum(layer_train_flops(sh) for sh in s.net.shapes.values()) * x.shape[0]
    s.net.freeze_bn_stats = False
    assert per_layer == whole
    # the full plan costs as much as the dense full network
    s.net.plan = Plan(idx={g: torch.arange(n) for g, n in s.net.layout.groups.items()},
                      mult={g: torch.ones(n) for g, n in s.net.layout.groups.items()},
                      units={u: torch.tensor(1.0) for u in s.net.s_unit})
    s.net.freeze_bn_stats = True
    assert costmodel.count_train_flops(s.net, x, y) == full
    s.net.freeze_bn_stats = False


@pytest.mark.parametrize("family", ["basic3resnet", "resnet20"])
def test_step_train_flops_are_a_dense_network_at_the_sampled_widths(family):
    """What a step runs (torch's FLOP counter around it) is what it reports, and both equal a
    dense network built at the sampled widths: computing every filter and then gathering fails."""
    s = _search(family=family, width=0.5)
    x, y = _batch()
    s.train_step(x, y)                       # fills the per-geometry FLOP cache (no nested counting)
    plans = []
    orig = s.sample_plan
    s.sample_plan = lambda: plans.append(orig()) or plans[-1]
    counter = FlopCounterMode(display=False)
    with counter:
        _, _, reported = s.train_step(x, y)
    plan = plans[0]
    arch = compact_arch(s.net.layout, {g: i.tolist() for g, i in plan.idx.items()}, sorted(s.net.active_units(plan)))
    dense = costmodel.count_train_flops(build_compact(arch).train(), x, y)
    assert reported == counter.get_total_flops() == dense
    full = costmodel.count_train_flops(build_compact(full_arch(s.net.layout)).train(), x, y)
    assert reported < 0.5 * full
    # gradients (and the optimizer's arithmetic) only for the computed blocks: none on the full tensors
    assert all(p.grad is None for _, p in s.net.weight_parameters())
    assert not s.net.live


def test_flop_bookkeeping_leaves_the_global_rng_alone():
    """Counting a new layer geometry builds a layer; its init must not draw from the run's RNG
    (augmentation draws from it: a resumed process, whose cache starts empty, would diverge)."""
    from strategies import growth as growth_mod

    shape = ("conv", (3, 11, 13), (5, 3, 3, 3), 1, 1, True)
    growth_mod._LAYER_FLOPS.pop(("conv", (11, 13), (3, 3), 1, 1, True), None)
    before = torch.get_rng_state()
    assert layer_train_flops(shape) > 0
    assert torch.equal(torch.get_rng_state(), before)

def test_detached_structure_keeps_and_gets_back_its_weights():
    s = _search(family="resnet20", width=0.25, in_ch=1)
    x, y = _batch()
    for _ in range(2):
        s.train_step(x, y)                      # momentum buffers exist now
    g, k = "s2u1_c1", 0                        # the initially active filter of a private group
    conv = "s2u1_c1"
    with torch.no_grad():
        s.net.s_chan[g][k] = -60.0               # detach it: never sampled (prob ~ 0)
        s.net.s_chan[g][1] = 60.0                # keep the group alive
    w0 = s.net.weight[conv][k].clone()
    bn0 = (s.net.bn_weight[conv][k].item(), s.net.bn_bias[conv][k].item(),
           getattr(s.net, f"rm_{conv}")[k].item(), getattr(s.net, f"rv_{conv}")[k].item())
    buf0 = s.bufs[f"weight.{conv}"][k].clone()
    for _ in range(3):
        s.train_step(x, y)
        assert k not in s.net.used[conv][0].tolist()
    assert torch.equal(s.net.weight[conv][k], w0)                 # no decay, no momentum drift
    assert torch.equal(s.bufs[f"weight.{conv}"][k], buf0)         # optimizer state frozen with it
    assert bn0 == (s.net.bn_weight[conv][k].item(), s.net.bn_bias[conv][k].item(),
                   getattr(s.net, f"rm_{conv}")[k].item(), getattr(s.net, f"rv_{conv}")[k].item())
    with torch.no_grad():
        s.net.s_chan[g][k] = 60.0                # revive: computed again, with its old weights
    plan = s.sample_plan()
    assert k in plan.idx[g].tolist()
    s.net.eval()
    s.net(x)
    assert k in s.net.used[conv][0].tolist()
    assert torch.equal(s.net.weight[conv][k], w0)


# ---- the trial runner --------------------------------------------------------------------------
def _cfg(**kw):
    return build_config(GrowthTrialConfig, {**TINY, **kw})


def test_runner_end_to_end_on_digits(tmp_path):
    summary = execute("growth", _cfg(), run, tmp_path / "r")
    r = tmp_path / "r"
    for f in ("config.json", "metrics.csv", "structure.csv", "arch.json", "model.pt", "summary.json"):
        assert (r / f).exists(), f
    assert not (r / "checkpoint.pt").exists()
    for k in ("default", "top1", "params", "flops", "train_flops", "full_train_flops", "train_cost_savings",
              "params_ratio", "units_stage1"):
        assert isinstance(summary[k], (int, float)) and math.isfinite(summary[k]), k
    assert 0 <= summary["top1"] <= 1 and summary["train_flops"] < summary["full_train_flops"]
    import pandas as pd

    m = pd.read_csv(r / "metrics.csv")
    assert list(m["epoch"]) == [0, 1, 2]
    for col in ("val_acc", "params", "flops", "train_flops", "units_stage1", "units_stage3", "lambda_chan"):
        assert m[col].notna().all(), col
    st = pd.read_csv(r / "structure.csv")
    assert sorted(st["epoch"].unique()) == [0, 1, 2, 3]
    assert {"structure", "kind", "active", "temperature", "prob", "counter"} <= set(st.columns)
    arch = json.loads((r / "arch.json").read_text())
    model = build_compact(arch)
    model.load_state_dict(torch.load(r / "model.pt", weights_only=True))
    assert costmodel.count_params(model) == summary["params"]
    # the analysis reads the folder only
    from analysis.growth import report_run, report_study

    files = report_run(r, tmp_path / "an")
    assert {f.name for f in files} >= {"growth.png", "widths.png", "stage_channels.csv"}
    study = report_study([r], tmp_path / "an_study")
    t1 = pd.read_csv([f for f in study if f.name == "table1.csv"][0])
    assert t1.loc[0, "params_%"] == pytest.approx(100 * summary["params_ratio"])


def test_resume_after_interruption_restores_structures_and_optimizer(tmp_path, monkeypatch):
    ref = execute("growth", _cfg(), run, tmp_path / "ref")
    ref_struct = (tmp_path / "ref" / "structure.csv").read_text()

    calls = {"n": 0}
    orig = GrowthSearch.run_epoch

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-growth")
        return orig(self, *a, **kw)

    monkeypatch.setattr(GrowthSearch, "run_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        execute("growth", _cfg(), run, tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["state"]["phases"]["grow"]["state"]["search"]
    assert ckpt["epoch"] == 2

    seen = {}
    orig_load = GrowthSearch.load_state_dict

    def spy(self, state):
        orig_load(self, state)
        seen["t"] = {k: v.clone() for k, v in self.t_chan.items()}
        seen["bufs"] = {k: v.clone() for k, v in self.bufs.items()}
        seen["beta"] = self.net.beta_chan("stage1").clone()
        seen["mask_opt"] = self.mask_opt.state_dict()

    monkeypatch.setattr(GrowthSearch, "run_epoch", orig)
    monkeypatch.setattr(GrowthSearch, "load_state_dict", spy)
    resumed = execute("growth", _cfg(), run, tmp_path / "r")
    assert all(torch.equal(seen["t"][k], ckpt["t_chan"][k]) for k in ckpt["t_chan"])
    assert all(torch.equal(seen["bufs"][k], ckpt["bufs"][k]) for k in ckpt["bufs"])
    assert torch.equal(seen["beta"], ckpt["net"]["beta_chan_stage1"])
    assert seen["mask_opt"]["state"].keys() == ckpt["mask_opt"]["state"].keys()
    # the resumed run is the uninterrupted run
    assert (tmp_path / "r" / "structure.csv").read_text() == ref_struct
    for k in ("top1", "params", "flops", "train_flops"):
        assert resumed[k] == ref[k], k


def test_kill_mid_step_resumes_bit_identically(tmp_path, monkeypatch):
    """Killed inside a step of the second epoch (after the SGD arithmetic on the live blocks, before
    they are written back), the run resumes through TrainingPhase from the last epoch end and ends
    exactly where the uninterrupted run does: same structures, metrics and exported weights."""
    ref = execute("growth", _cfg(finetune_epochs=1), run, tmp_path / "ref")
    calls = {"n": 0}
    orig = GrowthSearch.train_step

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:                     # epoch 1 (4 steps per epoch), second step
            monkeypatch.setattr(self.net, "write_back", lambda: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
        return orig(self, *a, **kw)

    monkeypatch.setattr(GrowthSearch, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        execute("growth", _cfg(finetune_epochs=1), run, tmp_path / "r")
    monkeypatch.setattr(GrowthSearch, "train_step", orig)
    resumed = execute("growth", _cfg(finetune_epochs=1), run, tmp_path / "r")
    assert resumed["top1"] == ref["top1"] and resumed["train_flops"] == ref["train_flops"]
    for f in ("structure.csv", "arch.json"):
        assert (tmp_path / "r" / f).read_text() == (tmp_path / "ref" / f).read_text(), f
    import pandas as pd

    cols = [c for c in pd.read_csv(tmp_path / "ref" / "metrics.csv").columns if not c.endswith("time_s")]
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")[cols].equals(pd.read_csv(tmp_path / "ref" / "metrics.csv")[cols])
    a = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("over,needle", [
    ({"budget": 0}, "budget must be in (0, 1]"),
    ({"budget": 1.5}, "budget must be in (0, 1]"),
    ({"family": "resnet21"}, "unknown seed family 'resnet21'"),
    ({"budgett": 0.3}, "unknown config key 'budgett' (did you mean 'budget'?)"),
    ({"relax": "softmax"}, "relax"),
    ({"family": "vgg16", "grow_layers": True, "stage_blocks": []}, "vgg16 grows channels only"),
])
def test_bad_input_one_line_exit_2(over, needle, capsys, tmp_path):
    def go():
        return execute("growth", build_config(GrowthTrialConfig, {**TINY, **over}), run, tmp_path / "bad")

    with pytest.raises(SystemExit) as exc:
        exit_on_error(go)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle.lower() in err[0].lower()


@pytest.mark.parametrize("name", ["growth_demo.yml", "growth_budgets.yml"])
def test_nnictl_configs_are_valid(name):
    cfg = yaml.safe_load((REPO / "experiments" / "configs" / name).read_text())
    assert cfg["trialCommand"].split()[:4] == ["python", "-m", "experiments.trial", "growth"]
    from experiments.config import parse_cli_overrides

    opts = parse_cli_overrides(cfg["trialCommand"].split()[4:])
    space = cfg["searchSpace"]
    for key, spec in space.items():
        for value in spec["_value"]:
            build_config(GrowthTrialConfig, {**opts, key: value})


def test_survey_bench_pairs_growth_with_the_best_baseline_seed_by_seed(tmp_path):
    from bench.compact_survey import paired_differences

    folders = []
    for variant, accs in (("morphnet", (0.98, 0.99, 0.97)), ("growth", (0.97, 0.97, 0.96))):
        for seed, acc in enumerate(accs):
            d = tmp_path / f"seed{seed}" / variant
            d.mkdir(parents=True)
            (d / "config.json").write_text(json.dumps({"config": {"variant": variant, "seed": seed}}))
            (d / "summary.json").write_text(json.dumps({"variant": variant, "top1": acc}))
            folders.append(d)
    p = paired_differences(folders, "morphnet", ["growth", "epnas"])
    assert set(p) == {"growth"} and p["growth"]["n"] == 3
    assert p["growth"]["diffs"] == pytest.approx([-1.0, -2.0, -1.0])
    mean, sd = -4 / 3, math.sqrt(1 / 3)
    half = 4.302653 * sd / math.sqrt(3)                    # t(0.975, 2 degrees of freedom)
    assert p["growth"]["mean"] == pytest.approx(mean)
    assert p["growth"]["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-5)

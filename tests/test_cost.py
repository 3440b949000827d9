"""The cost model's conventions (FLOPs = 2 x MACs per sample, bytes, intensity, latency)."""
import torch
import torch.nn as nn

from search_spaces import cost


def test_linear_flops_are_two_macs_per_sample():
    m = nn.Linear(10, 4)
    assert cost.count_flops(m, (10,)) == 2 * 10 * 4
    assert cost.count_flops(m, example=torch.zeros(5, 10)) == 2 * 10 * 4


def test_conv_flops():
    m = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert cost.count_flops(m, (3, 6, 6)) == 2 * 3 * 8 * 9 * 36


def test_bytes_and_intensity():
    m = nn.Sequential(nn.Linear(10, 4), nn.ReLU())
    c = cost.profile(m, (10,))
    assert c.params == 44
    assert c.bytes == (44 + 4 + 4) * 4  # weights + two leaf outputs, fp32
    assert c.intensity == c.flops / c.bytes


def test_train_flops_count_forward_and_backward_and_keep_grads():
    m = nn.Linear(10, 4)
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    f = cost.count_train_flops(m, x, y)
    fwd = 2 * 8 * 10 * 4
    assert f >= 2 * fwd  # backward costs about twice the forward
    assert m.weight.grad is None


def test_latency_is_positive():
    assert cost.measure_latency(nn.Linear(4, 4), (4,), repeats=3, warmup=1) > 0


def test_counted_loader_counts_every_sample_of_every_pass_and_changes_nothing():
    """A search's counted training FLOPs: the first step of a pass is counted per sample, times
    every sample of the pass (a last batch of another size included); batches and RNG unchanged."""
    from strategies.training import TensorLoader, train_epoch

    torch.manual_seed(0)
    X, y = torch.randn(70, 12), torch.randint(0, 3, (70,))
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    per_sample = cost.count_train_flops(model, X[:32], y[:32]) / 32
    plain = TensorLoader(X, y, batch_size=32, generator=torch.Generator().manual_seed(1))
    counted = cost.CountedLoader(TensorLoader(X, y, batch_size=32, generator=torch.Generator().manual_seed(1)))
    assert len(counted) == 3 and counted.generator is counted.loader.generator
    for a, b in zip(plain, counted):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert counted.flops == 0    # iterating computes nothing: what runs is what is counted
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rng = torch.get_rng_state()
    for epoch in (1, 2):
        train_epoch(model, counted, opt)
        assert counted.flops == round(per_sample * 70) * epoch
    assert torch.equal(torch.get_rng_state(), rng)

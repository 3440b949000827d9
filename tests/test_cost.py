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

"""ftune's CPU dropout (ftune.cpu.dropout) is dropout as PyTorch defines it: rate, scale, gradient, reproducibility."""

import math

import pytest
import torch
import torch.nn.functional as F

from ftune.cpu.dropout import BLOCK, cpu_dropout, scaled_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_rate_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(3 * BLOCK + 17)
    with cpu_dropout():
        y = F.dropout(x, p=p, training=True)
    kept = y != 0
    share = 1 - kept.float().mean().item()
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / x.numel())  # five standard deviations
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / (1 - p)))


def test_gradient_flows_through_kept_values_only():
    torch.manual_seed(1)
    x = torch.randn(64, 4096, requires_grad=True)
    with cpu_dropout():
        y = torch.nn.Dropout(0.2).train()(x)
    y.backward(torch.full_like(y, 3.0))
    kept = y.detach() != 0
    assert torch.allclose(y.detach()[kept], x.detach()[kept] / 0.8)
    assert torch.allclose(x.grad, kept.float() * 3.0 / 0.8)


def test_bf16_values_as_pytorch_scales_them():
    """The scale 1 / (1 - p) is held in the values' type, as PyTorch's own dropout holds its mask."""
    x = torch.randn(8, 512).to(torch.bfloat16)
    with cpu_dropout():
        y = F.dropout(x, 0.1, training=True)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    scale = torch.tensor(1 / 0.9).to(torch.bfloat16)
    assert torch.equal(y[kept], x[kept] * scale)
    torch.manual_seed(0)
    theirs = F.dropout(x, 0.1, training=True)
    assert torch.equal(theirs[theirs != 0], x[theirs != 0] * scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_each_type_gets_the_same_mask_in_its_own_scale(dtype):
    torch.manual_seed(2)
    reference = scaled_mask((3, BLOCK), 0.3, torch.float32)
    torch.manual_seed(2)
    mask = scaled_mask((3, BLOCK), 0.3, dtype)
    assert mask.dtype == dtype and torch.equal(mask != 0, reference != 0)
    assert torch.equal(mask[mask != 0].unique(), torch.tensor([1 / 0.7], dtype=dtype))


def test_masks_repeat_with_the_seed_and_not_otherwise():
    def masks():
        torch.manual_seed(7)
        return [scaled_mask((5, BLOCK // 3), 0.3, torch.float32) for _ in range(2)]

    first, second = masks(), masks()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])


def test_masks_follow_the_torch_generator_state():
    """What a resumed run relies on: the Trainer restores PyTorch's generator, and the masks follow it."""
    torch.manual_seed(3)
    scaled_mask((100,), 0.5, torch.float32)
    state = torch.get_rng_state()
    drawn = scaled_mask((4, BLOCK), 0.5, torch.float32)
    torch.set_rng_state(state)
    assert torch.equal(scaled_mask((4, BLOCK), 0.5, torch.float32), drawn)


def test_masks_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        drawn = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            torch.manual_seed(11)
            drawn.append(scaled_mask((5 * BLOCK + 3,), 0.25, torch.float32))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(drawn[0], drawn[2])


def test_left_to_pytorch_outside_training_and_in_place():
    x = torch.randn(1000)
    with cpu_dropout():
        assert torch.equal(F.dropout(x, 0.5, training=False), x)
        assert torch.equal(F.dropout(x, 0.0, training=True), x)
        torch.manual_seed(5)
        in_place = F.dropout(x.clone(), 0.5, training=True, inplace=True)
    torch.manual_seed(5)
    assert torch.equal(in_place, F.dropout(x.clone(), 0.5, training=True, inplace=True))  # PyTorch's own draw

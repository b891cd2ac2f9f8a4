"""Samplers, losses, schedule and optimizer groups of the trainer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from compofa_bench import spaces
from compofa_bench.train.losses import distillation_loss, label_smoothed_ce
from compofa_bench.train.optim import param_groups
from compofa_bench.train.sampling import step_resolution, step_subnets
from compofa_bench.train.schedule import CosineWarmup

SPACE = spaces.get("compofa", resolutions=(32, 48))


def test_upper_attentive_has_largest_first_and_never_smallest():
    smallest = SPACE.smallest(32)
    for step in range(1500):
        archs = step_subnets(SPACE, "upper-attentive", 3, 32, 0, 1, step)
        assert len(archs) == 3
        assert archs[0] == SPACE.largest(32)
        assert smallest not in archs


def test_uniform_draws_would_hit_the_smallest():
    # The guard above is meaningful: plain uniform draws do produce the smallest subnet.
    smallest = SPACE.smallest(32)
    hits = sum(
        smallest in step_subnets(SPACE, "uniform", 2, 32, 0, 1, step) for step in range(1500)
    )
    assert hits > 0


def test_sandwich_has_largest_and_smallest():
    archs = step_subnets(SPACE, "sandwich", 4, 48, 3, 0, 17)
    assert archs[0] == SPACE.largest(48) and archs[1] == SPACE.smallest(48)
    assert all(a.resolution == 48 for a in archs)


def test_compound_sampler_yields_members_and_covers_the_space():
    seen = set()
    for step in range(1500):
        for a in step_subnets(SPACE, "uniform", 4, 32, 0, 2, step):
            SPACE.validate(a)  # raises for a non-member
            seen.add(a.key())
    assert len(seen) == 243


def test_choices_are_a_function_of_seed_phase_and_step():
    a = step_subnets(SPACE, "uniform", 4, 32, 5, 1, 10)
    assert a == step_subnets(SPACE, "uniform", 4, 32, 5, 1, 10)
    assert a != step_subnets(SPACE, "uniform", 4, 32, 5, 1, 11)
    res = {step_resolution((32, 48, 64), 0, 0, s) for s in range(100)}
    assert res == {32, 48, 64}


def test_distillation_target_carries_no_gradient():
    torch.manual_seed(0)
    student = torch.randn(8, 10, requires_grad=True)
    teacher = torch.randn(8, 10, requires_grad=True)
    labels = torch.randint(0, 10, (8,))
    distillation_loss(student, labels, 0.1, teacher, 1.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_losses_match_ofa():
    from ofa.utils.pytorch_utils import (
        cross_entropy_loss_with_soft_target,
        cross_entropy_with_label_smoothing,
    )

    torch.manual_seed(1)
    logits, t_logits = torch.randn(16, 10), torch.randn(16, 10)
    labels = torch.randint(0, 10, (16,))
    ours = distillation_loss(logits, labels, 0.1, t_logits, 0.7)
    ref = cross_entropy_with_label_smoothing(logits, labels, 0.1) + 0.7 * (
        cross_entropy_loss_with_soft_target(logits, torch.softmax(t_logits, 1))
    )
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert label_smoothed_ce(logits, labels, 0.0).item() == pytest.approx(
        nn.functional.cross_entropy(logits, labels).item(), rel=1e-6
    )


def test_cosine_schedule_with_warmup():
    s = CosineWarmup(lr=1.0, total_steps=110, warmup_steps=10, warmup_lr=0.0)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)
    assert s(110) == pytest.approx(0.0, abs=1e-12)
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert CosineWarmup(0.2, 4)(2) == pytest.approx(0.1 * (1 + math.cos(math.pi / 2)))


def test_no_weight_decay_on_bn_and_bias():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)
    )
    net(torch.randn(1, 3, 5, 5))
    decay, no_decay = param_groups(net, 3e-5)
    assert decay["weight_decay"] == 3e-5 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(net[1].weight),
        id(net[1].bias),
        id(net[3].bias),
    }

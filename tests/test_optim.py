import math

import pytest
import torch

from segtrain import config
from segtrain.config import TrainConfig
from segtrain.model import build_model
from segtrain.optim import DECAY_SHAPES, build_optimizer, decay_branch_lrs, poly_schedule, wsd_schedule


@pytest.fixture(scope="module")
def model():
    return build_model("resnet50", 16)


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                        ("adamw", torch.optim.AdamW)])
def test_groups_head_lr_and_no_decay_on_batchnorm_and_bias(model, name, kind):
    cfg = TrainConfig(optimizer=name, lr=0.002, head_lr_multiplier=10.0, weight_decay=1e-4)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, kind)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == 0.002 and groups["head"]["lr"] == pytest.approx(0.02)
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.backbone.bn1.weight) in ids["backbone-no-decay"]
    assert id(model.classifier[4].bias) in ids["head-no-decay"]  # the final 1x1 conv's bias
    assert id(model.backbone.conv1.weight) in ids["backbone"]
    assert groups["backbone-no-decay"]["weight_decay"] == 0.0
    assert groups["head"]["weight_decay"] == 1e-4
    assert sum(len(v) for v in ids.values()) == len(list(model.parameters()))


def test_sgd_momentum_and_nesterov_pass_through(model):
    optimizer = build_optimizer(model, TrainConfig(momentum=0.8, nesterov=True))
    assert optimizer.param_groups[0]["momentum"] == 0.8 and optimizer.param_groups[0]["nesterov"]


def test_poly_schedule_with_warmup():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = poly_schedule(optimizer, total_steps=12, warmup_steps=2, power=0.9)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])  # linear warmup, then the full lr
    assert lrs[7] == pytest.approx((1 - 5 / 10) ** 0.9)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # strictly decaying after warmup
    assert optimizer.param_groups[0]["lr"] == 0.0  # reaches zero at the end of the budget


# the decay shapes written out, to check segtrain.optim's against
SHAPES = {"1-sqrt": lambda p: 1 - math.sqrt(p), "linear": lambda p: 1 - p,
          "cosine": lambda p: (1 + math.cos(math.pi * p)) / 2}


def test_every_decay_shape_a_config_accepts_has_a_formula():
    assert set(DECAY_SHAPES) == set(config.DECAY_SHAPES) == set(SHAPES)


@pytest.mark.parametrize("shape", SHAPES)
def test_wsd_schedule_lr_at_every_step_is_its_formula(shape):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = wsd_schedule(optimizer, total_steps=20, warmup_steps=3, decay_steps=5, shape=shape)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [2.0 * (step + 1) / 3 for step in range(3)] + [2.0] * 12 + \
               [2.0 * SHAPES[shape](step / 5) for step in range(5)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == 0.0  # reaches zero at the end of the budget


@pytest.mark.parametrize("shape", SHAPES)
def test_decay_branch_lrs_decay_each_group_from_its_current_lr_to_zero(shape):
    branch = list(decay_branch_lrs([0.3, 3.0], steps=4, shape=shape))
    assert len(branch) == 4
    for step, lrs in enumerate(branch):
        assert lrs == pytest.approx([0.3 * SHAPES[shape](step / 4), 3.0 * SHAPES[shape](step / 4)], rel=1e-12)
    assert branch[0] == [0.3, 3.0]  # the branch's first step is at the run's current lr

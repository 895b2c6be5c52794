import json

import pytest

from segtrain.config import TrainConfig, field_names
from segtrain.errors import ConfigError


def test_defaults_are_the_standard_recipe_and_round_trip_through_json():
    cfg = TrainConfig()
    assert (cfg.backbone, cfg.output_stride, cfg.crop_size, cfg.batch_size, cfg.optimizer) == \
        ("resnet50", 16, 513, 16, "sgd")
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    custom = TrainConfig(lr=0.02, pretrained=None, synthetic=True, crop_size=65)
    assert TrainConfig.from_json(custom.to_json()) == custom
    assert set(json.loads(custom.to_json())) == set(field_names())


def test_toml_style_values_are_normalised():
    cfg = TrainConfig.from_dict({"lr": 1, "pretrained": "none"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.pretrained is None


@pytest.mark.parametrize("values, key, words", [
    ({"lrr": 0.1}, "lrr", "did you mean 'lr'"),
    ({"lr": 0}, "lr", "> 0"),
    ({"lr": "fast"}, "lr", "must be float"),
    ({"batch_size": 1}, "batch_size", ">= 2"),
    ({"batch_size": 4.0}, "batch_size", "must be int"),
    ({"aux_loss": 1}, "aux_loss", "must be bool"),
    ({"optimizer": "rmsprop"}, "optimizer", "sgd, adam, adamw"),
    ({"output_stride": 32}, "output_stride", "8 or 16"),
    ({"backbone": "resnet18"}, "backbone", "resnet50"),
    ({"train_split": "test"}, "train_split", "train_aug"),
    ({"min_scale": 2.5}, "min_scale", "max_scale"),
    ({"momentum": 1.0}, "momentum", "[0, 1)"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov", "momentum > 0"),
    ({"device": "tpu"}, "device", "cuda:N"),
    ({"synthetic_classes": 21}, "synthetic_classes", "1-20"),
    ({"schedule": "cosine"}, "schedule", "poly, wsd"),
    ({"decay_fraction": 1.0}, "decay_fraction", "(0, 1)"),
    ({"decay_shape": "sqrt"}, "decay_shape", "1-sqrt, linear, cosine"),
    ({"schedule": "wsd", "epochs": 2.0, "warmup_epochs": 1.8}, "warmup_epochs", "<= epochs * (1 - decay_fraction) = 1.6"),
])
def test_bad_values_name_their_key(values, key, words):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(values)
    assert caught.value.key == key
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_long_warmup_is_fine_under_poly():
    assert TrainConfig(epochs=2.0, warmup_epochs=1.8).schedule == "poly"


def test_replace_validates():
    cfg = TrainConfig().replace(lr=0.1, crop_size=321)
    assert (cfg.lr, cfg.crop_size) == (0.1, 321)
    with pytest.raises(ConfigError):
        TrainConfig().replace(crop_size=8)

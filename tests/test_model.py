from collections import OrderedDict
from urllib.error import URLError

import pytest
import torch
import torchvision

from segtrain.errors import WeightsError
from segtrain.model import build_model, count_parameters, load_backbone_weights


def dilations(layer: torch.nn.Module) -> set[int]:
    return {m.dilation[0] for m in layer.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}


def aspp_rates(model) -> list[int]:
    convs = model.classifier[0].convs
    return [convs[i][0].dilation[0] for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def resnet50_state(module_tmp):
    """A torchvision ResNet-50 state_dict on disk, standing in for downloaded ImageNet weights."""
    torch.manual_seed(123)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = module_tmp("weights") / "resnet50-local.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("stride, rates, layer3, layer4", [
    (16, [6, 12, 18], {1}, {1, 2}),  # layer4 dilated only (its first block keeps 1)
    (8, [12, 24, 36], {1, 2}, {2, 4}),  # layer3 and layer4 dilated
])
def test_output_stride_sets_dilation_and_aspp_rates(stride, rates, layer3, layer4):
    model = build_model("resnet50", stride)
    assert aspp_rates(model) == rates
    assert dilations(model.backbone.layer3) == layer3
    assert dilations(model.backbone.layer4) == layer4
    with torch.no_grad():
        features = model.eval().backbone(torch.zeros(1, 3, 64, 64))["out"]
    assert features.shape[-1] == 64 // stride


def test_output_matches_odd_input_size_and_aux_head():
    model = build_model("resnet50", 16, num_classes=21, aux_loss=True).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 65, 97))
    assert out["out"].shape == (2, 21, 65, 97)
    assert out["aux"].shape == (2, 21, 65, 97)


def test_local_weights_load_into_the_backbone_only(resnet50_state):
    path, state = resnet50_state
    model = build_model("resnet50", 16, pretrained=path)
    for key in ("conv1.weight", "layer4.2.conv3.weight", "layer2.0.bn1.running_mean"):
        assert torch.equal(model.backbone.state_dict()[key], state[key])
    assert not any(k.startswith("fc.") for k in model.state_dict())
    scratch = build_model("resnet50", 16)
    assert not torch.equal(scratch.backbone.conv1.weight, state["conv1.weight"])


def test_mismatched_weights_are_a_readable_error(resnet50_state):
    path, _ = resnet50_state
    with pytest.raises(WeightsError, match=r"missing 255 keys \(layer3\.10\."):
        build_model("resnet101", 16, pretrained=path)


def test_weights_load_exactly_when_torchvision_would_load_them(resnet50_state, tmp_path):
    """Files from before BatchNorm's num_batches_tracked (no such keys, no version metadata) load
    into torchvision's ResNet with strict=True, and so here; the same dict declaring the current
    module versions does not, and is rejected here too."""
    _, state = resnet50_state
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # a plain dict
    torchvision.models.resnet50().load_state_dict(legacy, strict=True)  # torchvision accepts it
    torch.save(legacy, tmp_path / "legacy.pth")
    model = build_model("resnet50", 16, pretrained=tmp_path / "legacy.pth")
    assert torch.equal(model.backbone.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])

    versioned = OrderedDict(legacy)
    versioned._metadata = state._metadata  # says version 2: num_batches_tracked must be there
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        torchvision.models.resnet50().load_state_dict(versioned, strict=True)
    with pytest.raises(WeightsError, match=r"legacy.pth: does not fit this backbone: missing 53 keys \(bn1.num"):
        load_backbone_weights(torchvision.models.resnet50(), versioned, "legacy.pth")


def test_bad_weights_file_names_it(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        build_model("resnet50", 16, pretrained=tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: not a loadable state_dict"):
        build_model("resnet50", 16, pretrained=junk)


def test_imagenet_weights_come_from_torchvision_safely(monkeypatch, resnet50_state):
    _, state = resnet50_state
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return state

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = build_model("resnet50", 16, pretrained="imagenet")
    assert calls[0][0] == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert calls[0][1]["weights_only"] is True and calls[0][1]["check_hash"] is True
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])


def test_offline_imagenet_download_is_a_clear_error(monkeypatch):
    def offline(url, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="offline.*--pretrained PATH, hpo.finalize --pretrained-weights PATH"):
        build_model("resnet101", 16, pretrained="imagenet")


def test_parameter_count_is_deeplabv3_resnet50():
    # torchvision's deeplabv3_resnet50 (no aux) has 39.6M parameters
    assert 39.5e6 < count_parameters(build_model("resnet50", 16)) < 39.7e6

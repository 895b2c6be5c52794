from collections import OrderedDict
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision

from segtrain.config import TrainConfig
from segtrain.engine import train
from segtrain.errors import WeightsError
from segtrain.model import build_model, count_parameters, head_logits, load_backbone_weights
from tests.test_train_cli import all_background_miou


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


# --- DeepLabV3+


@pytest.mark.parametrize("stride", [16, 8])
def test_deeplabv3plus_output_matches_odd_input_sizes(stride):
    model = build_model("resnet50", stride, num_classes=21, aux_loss=True, model="deeplabv3plus").eval()
    with torch.no_grad():
        for height, width in ((33, 47), (41, 29)):  # layer1 at ceil(size / 4), layer4 at ceil(size / stride)
            out = model(torch.randn(2, 3, height, width))
            assert out["out"].shape == (2, 21, height, width)
            assert out["aux"].shape == (2, 21, height, width)
    assert aspp_rates_plus(model) == ([6, 12, 18] if stride == 16 else [12, 24, 36])
    assert dilations(model.backbone.layer4) == ({1, 2} if stride == 16 else {2, 4})


def aspp_rates_plus(model) -> list[int]:
    convs = model.classifier.aspp.convs
    return [convs[i][0].dilation[0] for i in (1, 2, 3)]


def test_deeplabv3plus_loads_imagenet_weights_into_its_backbone(resnet50_state):
    path, state = resnet50_state
    model = build_model("resnet50", 16, pretrained=path, model="deeplabv3plus")
    for key in ("conv1.weight", "layer1.2.conv3.weight", "layer4.2.bn3.running_var"):
        assert torch.equal(model.backbone.state_dict()[key], state[key])


def shapes(module: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in module.parameters()]


def test_deeplabv3plus_decoder_against_segmentation_models_pytorch():
    """Against smp's DeepLabV3Plus (an independent implementation, built without weights) with plain
    convolutions in its ASPP and the V3 rates: the same backbone, ASPP, 48-channel projection of layer1
    and classifier, parameter for parameter. Where smp departs from the paper's ResNet decoder (Table 2:
    two 3x3 convolutions of 256 after the concatenation), it has one depthwise-separable 3x3 convolution
    there and another after the ASPP; the difference in parameters is exactly those, counted by hand."""
    import segmentation_models_pytorch as smp  # the dev extra's; imported here, as it takes seconds
    theirs = smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=21, encoder_output_stride=16,
                               decoder_atrous_rates=(6, 12, 18), decoder_aspp_separable=False)
    ours = build_model("resnet50", 16, model="deeplabv3plus")
    head = ours.classifier
    assert count_parameters(ours.backbone) == count_parameters(theirs.encoder) == 23_508_032
    assert shapes(head.aspp) == shapes(theirs.decoder.aspp[0])
    assert [m.dilation for m in head.aspp.modules() if isinstance(m, torch.nn.Conv2d)] == \
        [m.dilation for m in theirs.decoder.aspp[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert shapes(head.project) == shapes(theirs.decoder.block1) == [(48, 256, 1, 1), (48,), (48,)]
    assert shapes(head.classifier) == shapes(theirs.segmentation_head) == [(21, 256, 1, 1), (21,)]

    def batchnorm(channels: int) -> int:
        return 2 * channels

    ours_fuse = (304 * 256 * 9 + batchnorm(256)) + (256 * 256 * 9 + batchnorm(256))  # [3x3, 256] x 2
    theirs_after_aspp = 256 * 9 + 256 * 256 + batchnorm(256)  # depthwise 3x3, pointwise 1x1
    theirs_fuse = 304 * 9 + 304 * 256 + batchnorm(256)
    assert count_parameters(head.fuse) == ours_fuse == 1_291_264
    assert count_parameters(theirs.decoder.aspp[1:]) == theirs_after_aspp
    assert count_parameters(theirs.decoder.block2) == theirs_fuse
    assert count_parameters(ours) == count_parameters(theirs) - theirs_after_aspp - theirs_fuse + ours_fuse
    with torch.no_grad():
        assert ours.eval()(torch.randn(1, 3, 64, 64))["out"].shape == theirs.eval()(torch.randn(1, 3, 64, 64)).shape


def test_deeplabv3plus_learns_the_synthetic_set_as_deeplabv3_does(synthetic_voc):
    """16 steps from scratch (crop 65, batch 2, lr 0.02): both clear the all-background score (0.064 here;
    measured: V3 0.123, V3+ 0.459)."""
    floor = all_background_miou(synthetic_voc)
    cfg = TrainConfig(data_root=str(synthetic_voc), train_split="train", val_split="val", pretrained=None,
                      head_lr_multiplier=1.0, lr=0.02, crop_size=65, batch_size=2, epochs=4.0, eval_points=1,
                      workers=0, device="cpu", eval_batch_size=4)
    scores = {model: train(cfg.replace(model=model), save_checkpoints=False) for model in ("deeplabv3",
                                                                                              "deeplabv3plus")}
    assert {model: result.steps for model, result in scores.items()} == {"deeplabv3": 16, "deeplabv3plus": 16}
    assert scores["deeplabv3plus"].parameters > scores["deeplabv3"].parameters  # the decoder was trained
    for model, result in scores.items():
        assert result.final_miou > floor + 0.04, (model, result.final_miou, floor)


@pytest.mark.parametrize("model", ["deeplabv3", "deeplabv3plus"])
def test_head_logits_upsampled_are_the_models_own_output(model):
    """Evaluation upsamples head_logits itself (in float32): for V3 and V3+ alike, it is the forward's "out"."""
    torch.manual_seed(0)
    net = build_model("resnet50", 16, 21, None, False, model).eval()
    images = torch.randn(1, 3, 41, 57)
    with torch.no_grad():
        upsampled = F.interpolate(head_logits(net, images), size=(41, 57), mode="bilinear", align_corners=False)
        assert torch.allclose(upsampled, net(images)["out"], atol=1e-5)

"""DeepLabV3 and DeepLabV3+ from torchvision parts: a dilated ResNet, ASPP, optional aux head.

torchvision's own `deeplabv3_resnet*` builders fix output stride 8; the paper's
standard setting is 16 (ASPP rates 6, 12, 18), so the model is assembled here.
DeepLabV3+ (Chen et al. 2018, arXiv:1802.02611) is the same backbone and ASPP with
the paper's decoder, the one part written here: layer1's stride-4 features projected
to 48 channels (its Table 1), concatenated with the ASPP output upsampled to them,
two 3x3 convolutions of 256 channels (Table 2's choice), the classifier, then bilinear
upsampling to the input. Its convolutions are plain ones: the paper makes them
depthwise-separable for speed with its Xception backbone. VainF/DeepLabV3Plus-Pytorch's
ResNet V3+ is plain too (with one 3x3 convolution after the concatenation);
segmentation-models-pytorch's is separable (tests/test_model.py compares the two).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from segtrain.errors import WeightsError

RESNETS = {"resnet50": (resnet50, ResNet50_Weights.IMAGENET1K_V1),
           "resnet101": (resnet101, ResNet101_Weights.IMAGENET1K_V1)}

# output stride -> (which of layer2..4 trade stride for dilation, ASPP atrous rates)
DILATION = {16: ([False, False, True], (6, 12, 18)),
            8: ([False, True, True], (12, 24, 36))}


def build_model(backbone: str, output_stride: int, num_classes: int = 21,
                pretrained: str | Path | None = None, aux_loss: bool = False,
                model: str = "deeplabv3") -> nn.Module:
    """DeepLabV3 or DeepLabV3+ (`model`) whose forward returns {"out": logits at input size[, "aux": ...]}.

    `pretrained`: "imagenet" (torchvision's ResNet weights, downloaded once and
    cached), a path to a ResNet state_dict file, or None to train from scratch.
    Only the backbone is initialised; the heads always start fresh.
    """
    if backbone not in RESNETS:
        raise ValueError(f"unknown backbone {backbone!r}")
    if output_stride not in DILATION:
        raise ValueError(f"output stride must be 8 or 16, not {output_stride}")
    if model not in ("deeplabv3", "deeplabv3plus"):
        raise ValueError(f"unknown model {model!r}")
    make_resnet, imagenet = RESNETS[backbone]
    dilate, rates = DILATION[output_stride]
    # zero_init_residual: each block starts as the identity, so a network trained from
    # scratch learns from the first steps (synthetic set, 60 steps: mIoU 0.24 -> 0.66).
    # Pretrained weights overwrite it.
    resnet = make_resnet(weights=None, replace_stride_with_dilation=dilate, zero_init_residual=True)
    if pretrained is not None:
        state = imagenet_state_dict(imagenet) if pretrained == "imagenet" else load_state_dict(pretrained)
        load_backbone_weights(resnet, state, source=str(pretrained))
    layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    aux = FCNHead(1024, num_classes) if aux_loss else None
    if model == "deeplabv3plus":
        getter = IntermediateLayerGetter(resnet, return_layers={"layer1": "low_level", **layers})
        return DeepLabV3Plus(getter, DecoderHead(2048, 256, num_classes, rates), aux)
    return DeepLabV3(IntermediateLayerGetter(resnet, return_layers=layers),
                     DeepLabHead(2048, num_classes, atrous_rates=rates), aux)


class DecoderHead(nn.Module):
    """DeepLabV3+'s head: torchvision's ASPP on the backbone's output, and the decoder that fuses
    it with the low-level features (stride 4) into class logits at their resolution."""

    LOW_LEVEL_CHANNELS = 48  # the paper's Table 1: fewer low-level channels keep the ASPP's features dominant
    CHANNELS = 256

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int, atrous_rates: tuple[int, ...]):
        super().__init__()
        self.aspp = ASPP(in_channels, list(atrous_rates), self.CHANNELS)
        self.project = _conv_bn_relu(low_level_channels, self.LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(self.CHANNELS + self.LOW_LEVEL_CHANNELS, self.CHANNELS, 3),
                                  _conv_bn_relu(self.CHANNELS, self.CHANNELS, 3))
        self.classifier = nn.Conv2d(self.CHANNELS, num_classes, 1)

    def forward(self, features: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.project(low_level)
        context = F.interpolate(self.aspp(features), size=low_level.shape[-2:], mode="bilinear",
                                align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, low_level], dim=1)))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DeepLabV3Plus(nn.Module):
    """Backbone -> DecoderHead, upsampled to the input like torchvision's DeepLabV3 (bilinear,
    align_corners=False), with the same optional aux head on layer3; the same attribute names
    (backbone, classifier, aux_classifier), so the optimiser's parameter groups and checkpoints
    treat both models alike."""

    def __init__(self, backbone: IntermediateLayerGetter, classifier: DecoderHead,
                 aux_classifier: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        out = {"out": self.classifier(features["out"], features["low_level"])}
        if self.aux_classifier is not None:
            out["aux"] = self.aux_classifier(features["aux"])
        return {key: F.interpolate(value, size=size, mode="bilinear", align_corners=False)
                for key, value in out.items()}


def imagenet_state_dict(weights) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise WeightsError(
            f"cannot download ImageNet weights {weights.url} ({reason}); offline? "
            f"download that file elsewhere and give its local path instead of 'imagenet' "
            f"(segtrain.train --pretrained PATH, hpo.finalize --pretrained-weights PATH), "
            f"or train from scratch ('none')") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ResNet state_dict from disk; never unpickles code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; pass a torchvision ResNet "
                           f"state_dict (e.g. resnet101-*.pth), 'imagenet' or 'none'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: say which and why, no traceback
        raise WeightsError(f"{path}: not a loadable state_dict ({error.__class__.__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict of tensors (torchvision ResNet format)")
    return state


def load_backbone_weights(resnet: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a ResNet state_dict into `resnet`, ignoring the classifier (fc.*).

    Accepts what torchvision's own `ResNet.load_state_dict(strict=True)` accepts, e.g. files
    saved before BatchNorm had `num_batches_tracked` (torch fills it in from the file's
    per-module version metadata, kept here). Any other missing, unexpected or mis-shaped key
    is an error listing them, so ResNet-50 weights can never silently half-load into a ResNet-101.
    """
    own = resnet.state_dict()
    given = OrderedDict((k, v) for k, v in state.items() if not k.startswith("fc."))
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
                  for k, v in given.items() if k in own and v.shape != own[k].shape]
    if mismatched:  # before loading: torch raises on them with a multi-line message
        raise WeightsError(f"{source}: does not fit this backbone: {len(mismatched)} shape mismatches "
                           f"({_preview(mismatched)})")
    given.update((k, v) for k, v in own.items() if k.startswith("fc."))  # the model's own classifier
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        given._metadata = metadata  # type: ignore[attr-defined]  # the module versions torch reads
    incompatible = resnet.load_state_dict(given, strict=False)
    problems = [f"{what} {len(keys)} keys ({_preview(sorted(keys))})"
                for what, keys in (("missing", incompatible.missing_keys),
                                   ("unexpected", incompatible.unexpected_keys)) if keys]
    if problems:
        raise WeightsError(f"{source}: does not fit this backbone: " + "; ".join(problems))


def state_dict_problems(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `given` from loading where `expected` is: missing, unexpected and mis-shaped keys,
    a few of each named (empty when it fits)."""
    problems = []
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    if missing:
        problems.append(f"missing {len(missing)} keys ({_preview(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({_preview(unexpected)})")
    mismatched = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
                  for k, v in expected.items() if k in given and given[k].shape != v.shape]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_preview(mismatched)})")
    return problems


def _preview(items: list[str], limit: int = 3) -> str:
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def head_logits(model: DeepLabV3 | DeepLabV3Plus, images: torch.Tensor) -> torch.Tensor:
    """The main head's logits at the backbone's resolution: the model's forward without its final
    upsampling (which the caller may then run in float32) and without the auxiliary head."""
    features = model.backbone(images)
    if isinstance(model, DeepLabV3Plus):  # its decoder also reads the stride-4 features
        return model.classifier(features["out"], features["low_level"])
    return model.classifier(features["out"])

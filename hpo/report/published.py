"""Published DeepLabV3 (and V3+) figures on VOC 2012 val, each with its protocol as data, and which final
columns match.

Each figure is checked against its source in docs/results.md (which lists the caveats).
A figure is set beside a final configuration's "mIoU <protocol>" column only where the
model (DeepLabV3 or V3+), the backbone (ImageNet-pretrained), the splits (trained on train_aug, scored on val), the
training output stride and the evaluation protocol (output stride, scales, flip) are the
same; what still differs (e.g. a center-cropped evaluation) is listed.

Reads hpo.report.results; hpo.report.document and tables use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpo.report.results import EvalProtocol, Summary
from segtrain.evaluation import MULTI_SCALES


@dataclass(frozen=True)
class PublishedFigure:
    source: str
    backbone: str  # TrainConfig.backbone it corresponds to
    train_output_stride: int
    protocol: EvalProtocol
    miou_percent: float
    training: str  # crops, batch, schedule: not matched, shown
    differs: tuple[str, ...]  # what differs from segtrain's run even when the protocol matches
    url: str
    model: str = "deeplabv3"  # TrainConfig.model it corresponds to

    @property
    def label(self) -> str:
        scales = "single scale" if self.protocol.scales == (1.0,) else \
            f"scales {', '.join(f'{s:g}' for s in self.protocol.scales)}"
        return (f"train OS {self.train_output_stride}, eval OS {self.protocol.output_stride}, {scales}"
                f"{', flip' if self.protocol.flip else ', no flip'}")


PAPER = "DeepLabV3 paper (Chen et al. 2017, arXiv:1706.05587)"
PAPER_DIFFERS = ("multi-grid (1, 2, 4) in block 4", "images padded to 513 x 513 at evaluation")
MMSEG = "open-mmlab/mmsegmentation"
# its VOC test pipeline resizes every image to fit (2048, 512), keeping the aspect ratio (short side 512: a
# 500 x 375 photo is scored at 683 x 512), before any scale: its "single scale" is not the image's own size
MMSEG_DIFFERS = ("ResNet-V1c stem", "auxiliary FCN head", "SyncBN",
                 "images resized to a 512 short side before scoring (its test pipeline), not at their own size")
MMSEG_URL = "https://github.com/open-mmlab/mmsegmentation/tree/main/configs/deeplabv3"
PAPER_URL = "https://arxiv.org/abs/1706.05587"


def _mmseg(backbone: str, iterations: int, single_scale: float, ms_flip: float) -> tuple[PublishedFigure, ...]:
    """One row of mmsegmentation's VOC table (configs/deeplabv3/README.md): its ss and MS+flip figures."""
    training = f"512 crops, batch 16, {iterations // 1000}k it"
    return (PublishedFigure(MMSEG, backbone, 8, EvalProtocol(8), single_scale, training, MMSEG_DIFFERS, MMSEG_URL),
            PublishedFigure(MMSEG, backbone, 8, EvalProtocol(8, MULTI_SCALES, True), ms_flip, training,
                            MMSEG_DIFFERS, MMSEG_URL))


PAPER_TRAINING = "513 crops, batch 16, 30k it, lr 0.007 (its Sec. 4.1)"
PUBLISHED = (
    PublishedFigure(PAPER, "resnet101", 16, EvalProtocol(16), 77.21, PAPER_TRAINING, PAPER_DIFFERS, PAPER_URL),
    PublishedFigure(PAPER, "resnet101", 16, EvalProtocol(8), 78.51, PAPER_TRAINING, PAPER_DIFFERS, PAPER_URL),
    PublishedFigure(PAPER, "resnet101", 16, EvalProtocol(8, MULTI_SCALES), 79.45, PAPER_TRAINING, PAPER_DIFFERS,
                    PAPER_URL),
    PublishedFigure(PAPER, "resnet101", 16, EvalProtocol(8, MULTI_SCALES, True), 79.77, PAPER_TRAINING,
                    PAPER_DIFFERS, PAPER_URL),
    PublishedFigure("VainF/DeepLabV3Plus-Pytorch", "resnet50", 16, EvalProtocol(16), 76.9,
                    "513 crops, batch 16, 30k it", ("513 x 513 center-crop evaluation", "best-on-val checkpoint"),
                    "https://github.com/VainF/DeepLabV3Plus-Pytorch"),
    PublishedFigure("VainF/DeepLabV3Plus-Pytorch", "resnet101", 16, EvalProtocol(16), 77.3,
                    "513 crops, batch 16, 30k it", ("513 x 513 center-crop evaluation", "best-on-val checkpoint"),
                    "https://github.com/VainF/DeepLabV3Plus-Pytorch"),
    PublishedFigure("VainF/DeepLabV3Plus-Pytorch", "resnet50", 16, EvalProtocol(16), 77.2,
                    "513 crops, batch 16, 30k it", ("513 x 513 center-crop evaluation", "best-on-val checkpoint",
                                                    "one 3x3 convolution in the decoder"),
                    "https://github.com/VainF/DeepLabV3Plus-Pytorch", "deeplabv3plus"),
    PublishedFigure("VainF/DeepLabV3Plus-Pytorch", "resnet101", 16, EvalProtocol(16), 78.3,
                    "513 crops, batch 16, 30k it", ("513 x 513 center-crop evaluation", "best-on-val checkpoint",
                                                    "one 3x3 convolution in the decoder"),
                    "https://github.com/VainF/DeepLabV3Plus-Pytorch", "deeplabv3plus"),
    # 20k and 40k iterations side by side: finalize's default 46 epochs is about 30k at batch 16
    *_mmseg("resnet50", 20_000, 76.17, 77.42), *_mmseg("resnet50", 40_000, 77.68, 78.78),
    *_mmseg("resnet101", 20_000, 78.70, 79.95), *_mmseg("resnet101", 40_000, 77.92, 79.18),
)


@dataclass(frozen=True)
class Match:
    figure: PublishedFigure
    configuration: str
    protocol: str  # the column: "mIoU <protocol>"
    miou: float  # the configuration's mean, a fraction


def matches(summaries: Sequence[Summary], figures: Sequence[PublishedFigure] = PUBLISHED) -> list[Match]:
    """Each (figure, configuration column) pair whose model, backbone, training stride and eval protocol agree."""
    found = []
    for figure in figures:
        for s in summaries:
            config = s.configuration.config
            if (config.model, config.backbone, config.output_stride, config.pretrained is not None, config.train_split,
                    config.val_split) != (figure.model, figure.backbone, figure.train_output_stride, True, "train_aug",
                                          "val"):
                continue
            for protocol, stat in s.miou.items():
                protocols = {run.protocol(protocol) for run in s.ok}
                if stat.mean is not None and protocols == {figure.protocol}:
                    found.append(Match(figure, s.name, protocol, stat.mean))
    return found

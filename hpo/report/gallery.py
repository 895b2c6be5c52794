"""The gallery's pictures: per val image, the image, its ground truth and each configuration's prediction.

hpo.finalize.gallery predicts (which images, which runs, under which protocol) and hands
this module a Gallery of plain data; this module draws one PNG per image, panels in a grid,
masks in the VOC palette with void as VOC shows it (its colour 255, cream), each prediction
titled with its configuration and that image's mIoU. Imports PIL and segtrain's data reading.
"""

from __future__ import annotations

import base64
import html
from dataclasses import asdict, dataclass
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from segtrain.data.labels import VOC_PALETTE
from segtrain.data.voc import image_path, mask_path, read_mask
from segtrain.fileio import write_atomic

COLUMNS = 3
FONT_PIXELS = 14
LINE_PIXELS = 16  # a title's line, its spacing included
MARGIN_PIXELS = 3
MIN_CELL_PIXELS = 160  # a panel's cell is at least this wide, so a small image's titles fit (the image keeps its size)
MIN_SHOWN_PIXELS = 720  # figures.html's width for a sheet of small images (the demo's 96-pixel ones)
CUT_AFTER = "_-/."  # where a word too wide for its panel is cut first: "synthetic_|val_|000003"


@dataclass(frozen=True)
class Panel:
    configuration: str  # its name in the final table, e.g. "top-1"
    label: str  # what it is, e.g. "best"
    seed: int
    run_dir: str
    protocol: str  # the [finalize] eval protocol it was predicted under: the gallery's, or a crf one

    @property
    def key(self) -> str:
        """Names its masks and its images' mIoU: a configuration may be shown under two protocols."""
        return f"{self.configuration} {self.protocol}"


@dataclass(frozen=True)
class Gallery:
    protocol: str  # the [finalize] eval protocol the predictions were made under (a crf panel says its own)
    split: str  # the val split the images come from
    voc_dir: str
    ids: list[str]  # the images shown, in order
    reasons: dict[str, str]  # id -> why it was chosen
    panels: list[Panel]  # the configurations shown, in order
    image_miou: dict[str, dict[str, float]]  # panel key -> id -> that image's mIoU
    confusion: list[list[int]] | None  # the best configuration's, over all of val (rows: ground truth)
    directory: str  # where the masks are: <directory>/<panel key>/<id>.png

    def mask_path(self, panel: Panel, image_id: str) -> Path:
        return Path(self.directory) / panel.key / f"{image_id}.png"

    def record(self) -> dict[str, object]:
        """What results.json says of it."""
        return {"protocol": self.protocol, "split": self.split, "ids": self.ids, "reasons": self.reasons,
                "panels": [asdict(panel) for panel in self.panels]}




def draw(gallery: Gallery, directory: Path) -> list[Path]:
    """One PNG per image of the gallery in `directory` (<id>.png), in the gallery's order."""
    return [write_atomic(directory / f"{image_id}.png", lambda file, i=image_id: picture(gallery, i).save(file, "PNG"))
            for image_id in gallery.ids]


def picture(gallery: Gallery, image_id: str) -> PIL.Image.Image:
    voc_dir = Path(gallery.voc_dir)
    with PIL.Image.open(image_path(voc_dir, image_id)) as image:
        panels = [(f"image {image_id}", image.convert("RGB"))]
    truth = read_mask(mask_path(voc_dir, gallery.split, image_id)).numpy()
    panels.append(("ground truth", _coloured(PIL.Image.fromarray(truth, mode="P"))))
    for panel in gallery.panels:
        with PIL.Image.open(gallery.mask_path(panel, image_id)) as mask:
            miou = gallery.image_miou[panel.key][image_id]
            panels.append((f"{panel.label} ({panel.configuration}): mIoU {miou:.3f}", _coloured(mask)))
    return _grid(panels)


def html_section(paths: list[Path], gallery: Gallery) -> str:
    """The pictures for figures.html, inlined (the page works offline and alone)."""
    parts = []
    for path, image_id in zip(paths, gallery.ids):
        data = base64.b64encode(path.read_bytes()).decode()
        with PIL.Image.open(path) as sheet:
            width = max(sheet.width, MIN_SHOWN_PIXELS)  # a small image's sheet is shown larger, never smaller
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(image_id)}" '
                     f'style="width:{width}px;max-width:100%"><figcaption>{html.escape(image_id)}: '
                     f"{html.escape(gallery.reasons[image_id])}</figcaption></figure>")
    return "\n".join(parts)


def _coloured(mask: PIL.Image.Image) -> PIL.Image.Image:
    mask = mask.convert("P") if mask.mode != "P" else mask.copy()
    mask.putpalette(VOC_PALETTE)
    return mask.convert("RGB")


def _grid(panels: list[tuple[str, PIL.Image.Image]]) -> PIL.Image.Image:
    width, height = panels[0][1].size
    cell = max(width, MIN_CELL_PIXELS)
    font = PIL.ImageFont.load_default(size=FONT_PIXELS)
    titles = [wrapped(title, cell - 2 * MARGIN_PIXELS, font) for title, _ in panels]
    strip = title_strip(titles)
    rows = -(-len(panels) // COLUMNS)
    sheet = PIL.Image.new("RGB", (COLUMNS * cell, rows * (height + strip)), "white")
    pen = PIL.ImageDraw.Draw(sheet)
    for index, (lines, (_, image)) in enumerate(zip(titles, panels)):
        left, top = (index % COLUMNS) * cell, (index // COLUMNS) * (height + strip)
        pen.multiline_text((left + MARGIN_PIXELS, top + MARGIN_PIXELS), "\n".join(lines), fill="black", font=font,
                           spacing=LINE_PIXELS - FONT_PIXELS)
        sheet.paste(image, (left, top + strip))
    return sheet


def title_strip(titles: list[list[str]]) -> int:
    """The height of the band above each row of panels: room for the longest title's lines."""
    return 2 * MARGIN_PIXELS + LINE_PIXELS * max(len(lines) for lines in titles)


def wrapped(title: str, width: float, font: PIL.ImageFont.ImageFont) -> list[str]:
    """The title in lines no wider than `width` pixels: at spaces, and inside a word only where one word is
    wider than the panel, after its last fitting '_', '-', '/' or '.' if it has one."""
    lines: list[str] = []
    for word in title.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while font.getlength(word) > width and len(word) > 1:
            fits = [n for n in range(1, len(word)) if font.getlength(word[:n]) <= width]
            cut = max([n for n in fits if word[n - 1] in CUT_AFTER] or fits, default=1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines

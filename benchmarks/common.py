"""Helpers shared by the benchmark scripts: side-by-side timing, tables, the RESULT line.

These machines are shared and noisy, so every benchmark times its alternatives in
the same run, interleaved (the order rotates each round), repeats, and reports
medians and ratios rather than absolute times. Each script ends with one line

    RESULT <name> <value> (goal <op> <value>)

that tests and docs read. Imported as `common` (the scripts' own folder is on
sys.path when run as `python benchmarks/<name>.py`).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image

Row = Sequence[object]


def parse_args(doc: str | None, configure: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """`--quick`: the smallest setting (what the smoke test runs); scripts may add options."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smallest setting: seconds, not minutes")
    if configure is not None:
        configure(parser)
    return parser.parse_args()


def machine() -> str:
    """One line naming what the figures were measured on, and how busy it was."""
    import torch  # here, so that scripts whose parent process needs no torch stay light

    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load}")


def interleaved(alternatives: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each alternative once per round, rotating the order each round; values per name.

    Rotating spreads slow spells of a shared machine over all alternatives instead
    of landing them on whichever always runs second.
    """
    names = list(alternatives)
    values: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            values[name].append(alternatives[name]())
    return values


class ForkedWorker:
    """Calls `measure(k)` (k = 0, 1, ...) in one dedicated forked process, like a DataLoader worker.

    Interleaving alternatives in one process lets each disturb the others' allocator
    and cache state (a JPEG pipeline's 3 MB buffers come and go differently after
    PIL ran): giving each its own process, as a real worker has, removes that.
    Fork before any torch computation with more than one thread in the parent.
    """

    def __init__(self, measure: Callable[[int], float]):
        context = multiprocessing.get_context("fork")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=self._serve, args=(child, measure), daemon=True)
        self._process.start()
        child.close()
        self._calls = itertools.count()

    @staticmethod
    def _serve(connection, measure: Callable[[int], float]) -> None:
        while (call := connection.recv()) is not None:
            try:
                connection.send(measure(call))
            except BaseException as error:  # noqa: BLE001 - re-raised in the parent
                connection.send(error)

    def __call__(self) -> float:
        self._connection.send(next(self._calls))
        outcome = self._connection.recv()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        self._connection.send(None)
        self._process.join()


def in_fork(function: Callable[[], object]) -> object:
    """`function()` computed in a forked child: e.g. so that its peak memory is its own."""
    worker = ForkedWorker(lambda _: function())
    try:
        return worker()
    finally:
        worker.close()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """min-max of repeats, to show how noisy a median is."""
    return f"{min(values):.3g}-{max(values):.3g}" if len(values) > 1 else "-"


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def print_table(headers: Row, rows: Sequence[Row], title: str | None = None) -> None:
    """An aligned plain-text table (first column left, the others right)."""
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(value.ljust(width) if i == 0 else value.rjust(width)
                         for i, (value, width) in enumerate(zip(row, widths))).rstrip()

    if title:
        print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * width for width in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def result(name: str, value: float, op: str, goal: float | str) -> None:
    """The last line of every benchmark, e.g. `RESULT train_loop 0.97 (goal >= 0.95)`."""
    print("\nload average at the end: " + " ".join(f"{value:.2f}" for value in os.getloadavg()))
    print(f"RESULT {name} {value:.3g} (goal {op} {goal})", flush=True)


def write_voc_pairs(out_dir: Path, count: int, width: int, height: int, seed: int = 0,
                    classes: int = 20, split: str = "train",
                    sizes: Sequence[tuple[int, int]] | None = None) -> Path:
    """A VOC2012-layout tree (split `split`, beside any other split written there) of `count` JPEG +
    paletted-PNG pairs of segtrain's synthetic scenes, every one width x height, or with `sizes`
    (width, height) pair i at sizes[i % len(sizes)]: VOC's photos are mostly 500x375 or 375x500."""
    from segtrain.data.labels import VOC_PALETTE
    from segtrain.data.synthetic import render_scene

    voc_dir = Path(out_dir) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_dir / sub).mkdir(parents=True, exist_ok=True)
    sizes = sizes or [(width, height)]
    ids = [f"bench_{split}_{index:06d}" for index in range(count)]
    for index, image_id in enumerate(ids):
        pair_width, pair_height = sizes[index % len(sizes)]
        image, mask = render_scene(np.random.default_rng([seed, index]), (pair_height, pair_width),
                                   list(range(1, classes + 1)))
        PIL.Image.fromarray(image).save(voc_dir / "JPEGImages" / f"{image_id}.jpg", quality=90)
        png = PIL.Image.fromarray(mask)
        png.putpalette(VOC_PALETTE)
        png.save(voc_dir / "SegmentationClass" / f"{image_id}.png")
    (voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc_dir

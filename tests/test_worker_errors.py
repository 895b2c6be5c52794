"""A corrupt file found by a DataLoader worker process is still one clean line from the CLI."""

from __future__ import annotations

import subprocess
import sys

from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.voc import image_path, read_split_ids


def test_corrupt_jpeg_decoded_in_a_worker_is_one_line_naming_it(tmp_path):
    voc_dir = write_synthetic_voc(tmp_path / "data", train=4, val=1, size=64, seed=0)
    corrupt = image_path(voc_dir, read_split_ids(voc_dir, "train")[2])
    corrupt.write_bytes(b"not a JPEG at all")  # still listed and present: only decoding finds it
    command = [sys.executable, "-m", "segtrain.train", "--data-root", str(voc_dir), "--train-split", "train",
               "--pretrained", "none", "--crop-size", "65", "--batch-size", "4", "--epochs", "1",
               "--eval-points", "1", "--workers", "1", "--device", "cpu", "--out", str(tmp_path / "run")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.count("\n") == 1, finished.stderr
    assert finished.stderr.startswith(f"segtrain.train: error: image {corrupt} is not a readable JPEG")
    assert "Traceback" not in finished.stderr and "worker" not in finished.stderr

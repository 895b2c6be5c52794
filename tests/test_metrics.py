import numpy as np
import pytest
import torch

from segtrain.errors import DataError
from segtrain.metrics import ConfusionMatrix, PerImageCounts, read_per_image_counts


def reference_scores(pred: np.ndarray, target: np.ndarray, n: int):
    """Straightforward per-class IoU with numpy, as a check on the bincount version."""
    keep = target != 255
    pred, target = pred[keep], target[keep]
    ious, recalls = [], []
    for c in range(n):
        tp = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        ious.append(tp / union if union else None)
        if np.sum(target == c):
            recalls.append(tp / np.sum(target == c))
    present = [v for v in ious if v is not None]
    return ious, float(np.mean(present)), float(np.mean(pred == target)), float(np.mean(recalls))


def labelled_batch(seed: int, shape: tuple[int, ...], correct: float) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, target) of classes 0-5, a tenth of the target void (255), `correct` of it predicted right."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 6, size=shape)
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < correct, target, rng.integers(0, 6, size=target.shape))
    pred[pred == 255] = 0
    return pred, target


def test_matches_numpy_reference_with_void_ignored():
    pred, target = labelled_batch(0, (3, 17, 23), 0.6)
    matrix = ConfusionMatrix(21)
    matrix.update(torch.from_numpy(pred), torch.from_numpy(target))
    scores = matrix.compute()
    ious, miou, accuracy, class_accuracy = reference_scores(pred, target, 21)
    assert scores.per_class_iou == pytest.approx(ious)
    assert scores.miou == pytest.approx(miou)
    assert scores.pixel_accuracy == pytest.approx(accuracy)
    assert scores.mean_class_accuracy == pytest.approx(class_accuracy)
    assert scores.per_class_iou[6:] == [None] * 15


def test_absent_classes_do_not_drag_miou_and_it_is_never_nan():
    matrix = ConfusionMatrix(21)
    assert matrix.compute().miou == 0.0  # nothing seen yet: 0, not NaN
    target = torch.tensor([[0, 0, 1, 1]])
    matrix.update(target.clone(), target)
    assert matrix.compute().miou == 1.0
    matrix.update(torch.tensor([[2, 2, 1, 1]]), target)  # a false class 2 counts in the union
    scores = matrix.compute()
    assert scores.per_class_iou[:3] == pytest.approx([0.5, 1.0, 0.0])
    assert scores.miou == pytest.approx(0.5)


def test_merge_equals_one_matrix_over_everything():
    rng = np.random.default_rng(1)
    preds = [torch.from_numpy(rng.integers(0, 21, size=(2, 9, 9))) for _ in range(4)]
    targets = [torch.from_numpy(rng.integers(0, 21, size=(2, 9, 9))) for _ in range(4)]
    whole, left, right = ConfusionMatrix(21), ConfusionMatrix(21), ConfusionMatrix(21)
    for i, (p, t) in enumerate(zip(preds, targets)):
        whole.update(p, t)
        (left if i % 2 else right).update(p, t)
    left.merge(right)
    assert torch.equal(left.matrix, whole.matrix)


def test_rejects_labels_outside_the_classes_and_mismatched_shapes():
    """An id past the classes is counted on the device (no host sync to check it there) and refused when
    the scores are read; whatever prediction it pairs with, it never lands in the matrix."""
    for prediction in (0, 20):
        matrix = ConfusionMatrix(21)
        matrix.update(torch.full((1, 4), prediction), torch.tensor([[0, 21, 0, 254]], dtype=torch.uint8))
        assert int(matrix.matrix.sum()) == 2
        with pytest.raises(ValueError, match="2 pixels have a target class id outside 0-20 that is not the ignored 255"):
            matrix.compute()
    with pytest.raises(ValueError, match="differ in shape"):
        matrix.update(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))


def test_per_image_counts_are_each_images_tp_fp_fn_and_sum_to_the_confusion_matrix():
    prediction, target = labelled_batch(2, (3, 7, 9), 0.5)
    counts, matrix = PerImageCounts(5, 21), ConfusionMatrix(21)
    counts.update([4, 0, 2], torch.from_numpy(prediction), torch.from_numpy(target))  # rows by dataset index
    matrix.update(torch.from_numpy(prediction), torch.from_numpy(target))
    assert counts.counts.dtype == torch.int32 and counts.counts.shape == (5, 21, 3)
    assert not counts.counts[[1, 3]].any()  # images not scored: no counts
    for row, image in zip([4, 0, 2], range(3)):
        keep = target[image] != 255
        p, t = prediction[image][keep], target[image][keep]
        expected = [[np.sum((p == c) & (t == c)), np.sum((p == c) & (t != c)), np.sum((p != c) & (t == c))]
                    for c in range(21)]
        assert counts.counts[row].tolist() == expected
    whole = counts.counts.sum(dim=0).long()
    m = matrix.matrix
    assert torch.equal(whole[:, 0], m.diag()) and torch.equal(whole[:, 1], m.sum(0) - m.diag())
    assert torch.equal(whole[:, 2], m.sum(1) - m.diag())
    with pytest.raises(ValueError, match="one batch"):
        counts.update([0], torch.from_numpy(prediction), torch.from_numpy(target))


def test_per_image_counts_round_trip_and_a_corrupt_file_is_one_clear_error(tmp_path):
    counts = PerImageCounts(2, 21)
    counts.update([1, 0], torch.tensor([[[0, 1]], [[1, 1]]]), torch.tensor([[[0, 0]], [[1, 255]]]))
    path = counts.save(tmp_path / "per_image_counts.npz", ["b", "a"])
    ids, loaded = read_per_image_counts(path)
    assert ids == ["b", "a"] and loaded.dtype == np.int32 and np.array_equal(loaded, counts.counts.numpy())
    assert loaded[1, 0].tolist() == [1, 0, 1] and loaded[0, 1].tolist() == [1, 0, 0]
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable per-image counts .* evaluate the run again"):
        read_per_image_counts(path)


def test_uint8_masks_count_as_their_int64_copies_and_bincount_is_not_used(monkeypatch):
    """Loader masks arrive as uint8. The update must not call torch.bincount, which reads the largest id
    back to the host (a sync per evaluation batch on CUDA)."""
    rng = np.random.default_rng(2)
    target = rng.integers(0, 21, size=(2, 33, 47))
    target[rng.random(target.shape) < 0.2] = 255
    prediction = torch.from_numpy(rng.integers(0, 21, size=target.shape))
    wide, narrow = ConfusionMatrix(21), ConfusionMatrix(21)
    wide.update(prediction, torch.from_numpy(target))
    monkeypatch.setattr(torch, "bincount", lambda *args, **kwargs: pytest.fail("bincount syncs on CUDA"))
    narrow.update(prediction, torch.from_numpy(target.astype(np.uint8)))
    assert torch.equal(wide.matrix, narrow.matrix) and int(narrow.matrix.sum()) == int((target != 255).sum())
    assert wide.compute() == narrow.compute()
    per_image = PerImageCounts(2, 21)  # the final evaluation's per-image counts: no bincount either
    per_image.update([0, 1], prediction, torch.from_numpy(target.astype(np.uint8)))
    assert torch.equal(per_image.counts.sum(dim=0)[:, 0].long(), wide.matrix.diag())

import itertools

from segtrain.sampling import TrainStream


def take(stream, n):
    return list(itertools.islice(iter(stream), n))


def test_epochs_are_permutations_with_fresh_seeds():
    draws = take(TrainStream(10, seed=3), 20)
    assert sorted(i for i, _ in draws[:10]) == list(range(10))
    assert sorted(i for i, _ in draws[10:]) == list(range(10))
    assert [i for i, _ in draws[:10]] != [i for i, _ in draws[10:]]
    assert len({s for _, s in draws}) == 20  # each draw augments differently


def test_same_seed_same_stream_other_seed_other_stream():
    assert take(TrainStream(10, seed=3), 15) == take(TrainStream(10, seed=3), 15)
    assert take(TrainStream(10, seed=3), 15) != take(TrainStream(10, seed=4), 15)


def test_resuming_at_any_draw_continues_the_same_stream():
    whole = take(TrainStream(10, seed=7), 35)
    for start in (0, 4, 10, 23):
        assert take(TrainStream(10, seed=7, start=start), 35 - start) == whole[start:]


def test_processes_split_the_single_process_stream():
    # two processes with batch 2 see exactly the batches of one process with batch 4
    single = take(TrainStream(12, seed=1), 24)
    ranks = [take(TrainStream(12, seed=1, rank=r, world_size=2), 12) for r in (0, 1)]
    for step in range(6):
        together = ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2]
        assert sorted(together) == sorted(single[4 * step:4 * step + 4])

import numpy as np
import pytest
import torch

from bigsoftmax.lm.data import batchify, iter_batches, num_batches


def test_batchify_lanes_and_targets_are_next_tokens():
    stream = np.arange(103, dtype=np.int32)
    lanes = batchify(stream, 4)
    assert lanes.shape == (4, 25) and lanes.dtype == torch.int64
    assert lanes[1, 0] == 25  # lane b starts at b * L
    xs, ys = [], []
    for k, x, y in iter_batches(lanes, 7):
        assert torch.equal(y, x + 1)  # targets are the next tokens of each lane
        xs.append(x)
        ys.append(y)
    assert k + 1 == num_batches(lanes, 7) == 4
    assert torch.equal(torch.cat(xs, 1), lanes[:, :-1])  # the batches tile each lane exactly once
    assert [x.shape[1] for x in xs] == [7, 7, 7, 3]


def test_iter_batches_resumes_from_start():
    lanes = batchify(np.arange(200), 2)
    full = list(iter_batches(lanes, 9))
    resumed = list(iter_batches(lanes, 9, start=5))
    assert [k for k, _, _ in resumed] == list(range(5, len(full)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full[5:], resumed))


def test_batching_errors():
    with pytest.raises(ValueError, match="batch_size"):
        batchify(np.arange(10), 0)
    with pytest.raises(ValueError, match="too short"):
        batchify(np.arange(5), 4)
    with pytest.raises(ValueError, match="1-D"):
        batchify(np.zeros((3, 3)), 1)
    with pytest.raises(ValueError, match="seq_len"):
        num_batches(batchify(np.arange(10), 1), 0)
    with pytest.raises(ValueError, match="start"):
        list(iter_batches(batchify(np.arange(10), 1), 3, start=99))

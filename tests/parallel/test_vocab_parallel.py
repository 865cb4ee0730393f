"""Issue 12 §2: the vocab-parallel heads equal the single-process heads with the concatenated weights
(float64, V=1001 split unevenly, d=16, 1-3 ranks on gloo), with the collectives counted per step."""

import pytest

from bigsoftmax.parallel import run_local
from tests.parallel import vp_workers as W


@pytest.mark.parametrize("world", [1, 2, 3])
def test_vocab_parallel_full_softmax_equals_one_process(world):
    run_local(W.full_worker, world, timeout=120)


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3 ranks: the full softmax test covers the 3-rank combine
def test_vocab_parallel_sampling_heads_equal_one_process_with_the_same_candidates(world):
    run_local(W.sampling_worker, world, timeout=120)


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3 ranks: the full softmax test covers the 3-rank combine
def test_partial_fc_margin_heads_with_sample_rate_1_equal_one_process(world):
    run_local(W.margin_worker, world, timeout=120)


def test_sharded_checkpoints_gather_shard_and_refuse_another_world_size(tmp_path):
    run_local(W.checkpoint_worker, 2, str(tmp_path), timeout=120)


def test_bad_input_gives_clear_errors_naming_rank_and_sizes():
    run_local(W.bad_input_worker, 3, timeout=120)


def test_no_process_group_is_a_clear_error():
    import torch.distributed as dist

    from bigsoftmax import parallel as P

    assert not dist.is_initialized()
    for make in (lambda: P.VocabParallelFullSoftmax(16, 100), lambda: P.VocabParallelSampledSoftmax(16, 100, 8, seed=0),
                 lambda: P.VocabParallelArcFace(16, 100)):
        with pytest.raises(RuntimeError, match="needs an initialised torch.distributed process group"):
            make()


def test_partition_is_tf_div():
    from bigsoftmax.parallel import owner_of, partition, shard_range

    assert partition(10, 3) == [4, 3, 3] and partition(1001, 2) == [501, 500]
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [owner_of(c, 10, 3) for c in range(10)] == [0] * 4 + [1] * 3 + [2] * 3
    with pytest.raises(ValueError, match="world size 4 exceeds num_classes=3"):
        partition(3, 4)

"""Issue 12 §2: the vocab-parallel heads equal the single-process heads with the concatenated weights
(float64, V=1001 split unevenly, d=16, 1-3 ranks on gloo), with the collectives counted per step."""

import pytest

from bigsoftmax.parallel import run_local
from tests.parallel import vp_workers as W


@pytest.mark.parametrize("world", [1, 2, 3])
def test_vocab_parallel_full_softmax_equals_one_process(world):
    run_local(W.full_worker, world, timeout=120)


@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_sampling_heads_equal_one_process_with_the_same_candidates(world):
    run_local(W.sampling_worker, world, timeout=120)


@pytest.mark.parametrize("world", [2, 3])
def test_partial_fc_margin_heads_with_sample_rate_1_equal_one_process(world):
    run_local(W.margin_worker, world, timeout=120)

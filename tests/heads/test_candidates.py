"""The one candidate component (heads/_candidates.py) shared by SamplingHead and MarginHead."""

import pytest
import torch

from bigsoftmax import samplers as S
from bigsoftmax.heads import ArcFace, SampledSoftmax
from bigsoftmax.heads._candidates import build_sampler, draw_candidates, seeded_generator


def test_both_heads_draw_what_the_component_draws():
    V, y = 50, torch.tensor([[3], [7], [3]])
    ref = draw_candidates(S.Uniform(V, unique=True), y, 6, seeded_generator(11))
    for head in (SampledSoftmax(4, V, 6, sampler=S.Uniform(V, unique=True), seed=11),
                 ArcFace(4, V, num_sampled=6, sampler=S.Uniform(V, unique=True), seed=11)):
        got = head.draw(y)
        for a, b in zip(got, ref):
            assert torch.equal(a, b)


def test_seeded_generator_repeats_and_follows_global_seed():
    a = torch.randint(0, 10**6, (5,), generator=seeded_generator(3))
    assert torch.equal(a, torch.randint(0, 10**6, (5,), generator=seeded_generator(3)))
    torch.manual_seed(0)
    g1 = seeded_generator(None).initial_seed()
    torch.manual_seed(0)
    assert seeded_generator(None).initial_seed() == g1


def test_learned_sampler_updates_after_not_before_the_draw():
    lu = S.LearnedUnigram(10, unique=False)
    before = lu.counts.clone()
    y = torch.tensor([[2], [2]])
    first = draw_candidates(lu, y, 4, seeded_generator(0), update=False)
    assert torch.equal(lu.counts, before)
    second = draw_candidates(lu, y, 4, seeded_generator(0), update=True)
    assert torch.equal(first[0], second[0])  # this batch's labels shape the next draw, not this one
    assert int(lu.counts[2]) == int(before[2]) + 2 and int(lu.counts.sum()) == int(before.sum()) + 2


@pytest.mark.parametrize("sampler, err, match", [
    (object(), TypeError, "sampler must be a bigsoftmax.samplers sampler"),
    (S.Uniform(7, unique=True), ValueError, r"sampler.range_max=7 must equal num_classes=10"),
    (S.Uniform(10, unique=True), ValueError, r"num_sampled=11 exceeds the 10 classes .* unique=False"),
])
def test_build_sampler_errors(sampler, err, match):
    with pytest.raises(err, match=match):
        build_sampler(sampler, 10, 11, lambda v: S.Uniform(v))


def test_build_sampler_default():
    s = build_sampler(None, 10, 3, lambda v: S.LogUniform(v, unique=True))
    assert isinstance(s, S.LogUniform) and s.range_max == 10

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


# ----------------------------------------------------------------------------- the generator follows the head's device
def test_a_move_on_the_same_device_keeps_the_generator_and_its_stream():
    a, b = SampledSoftmax(8, 50, 5, seed=3), SampledSoftmax(8, 50, 5, seed=3)
    g = b.generator
    b.to("cpu").double().float()
    assert b.generator is g
    y = torch.tensor([1, 2])
    assert torch.equal(a.draw(y[:, None])[0], b.draw(y[:, None])[0])


class _FakeDeviceGenerator:
    """Stands in for torch.Generator(device=...) of an accelerator (the CPU test machine has none)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.seed = None

    def manual_seed(self, s):
        self.seed = s
        return self


def test_generator_on_another_device_is_seeded_from_the_stream(monkeypatch):
    from bigsoftmax.heads import _candidates as C

    src1, src2 = seeded_generator(7), seeded_generator(7)
    monkeypatch.setattr(C.torch, "Generator", _FakeDeviceGenerator)
    g1, g2 = C.generator_on(src1, torch.device("cuda", 0)), C.generator_on(src2, torch.device("cuda", 0))
    monkeypatch.undo()
    assert g1.device == torch.device("cuda", 0) and g1.seed == g2.seed  # deterministic in the source state
    ref = seeded_generator(7)
    assert g1.seed == int(torch.randint(0, 2**62, (1,), generator=ref))  # one draw of the source stream
    assert torch.equal(src1.get_state(), ref.get_state())
    # same device (or meta): the generator itself, untouched
    assert C.generator_on(src1, torch.device("cpu")) is src1 and C.generator_on(src1, torch.device("meta")) is src1


def test_a_head_moved_to_another_device_takes_a_generator_there(monkeypatch):
    from bigsoftmax.heads import _candidates as C

    head = SampledSoftmax(8, 50, 5, seed=3)
    seen = []
    monkeypatch.setattr(C, "generator_on", lambda g, d: seen.append(d) or g)
    head.to(torch.float64)
    assert seen == [head.weight.device]  # every _apply asks for a generator on the weight's device


def test_table_free_samplers_compute_where_the_draws_are():
    s = S.LogUniform(50)
    assert s._device(torch.device("meta")) == torch.device("meta") and s._device() == torch.device("cpu")
    u = S.Unigram(torch.ones(50, dtype=torch.float64))
    assert u._device(torch.device("meta")) == torch.device("cpu")  # tables decide

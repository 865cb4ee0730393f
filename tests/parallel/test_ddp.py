"""Issue 12 §1: every head of bigsoftmax.heads trains under DistributedDataParallel (gloo, 2 ranks),
dense and sparse, without find_unused_parameters: two ranks on half batches end with the same
parameters as one process on the full batch after 3 SGD steps (float64)."""

import torch

import bigsoftmax.heads as H
from bigsoftmax.parallel import run_local
from tests.parallel import ddp_workers as W


def test_every_head_class_is_covered():
    exported = {n for n in H.__all__ if isinstance(getattr(H, n), type) and issubclass(getattr(H, n), H.Head)}
    aliases = {n for n in exported if getattr(H, n).__name__ != n}
    assert exported - {"Head", "SamplingHead"} - aliases == {n.split("/")[0] for n in W.CASES}


def test_two_ranks_on_half_batches_equal_one_process(tmp_path):
    names = sorted(W.CASES)
    out = tmp_path / "ddp.pt"
    run_local(W.ddp_worker, 2, names, str(out), timeout=180)
    got = torch.load(out)
    bad = [m for m in got["warnings"] if "stride" in m or "unused" in m.lower()]
    assert not bad, bad
    for name in names:
        ref = W.train(W.make(name))
        assert ref.keys() == got["params"][name].keys(), name
        for k in ref:
            torch.testing.assert_close(got["params"][name][k], ref[k], rtol=0, atol=1e-10, msg=f"{name}: {k}")

"""Module-level (spawn-importable) workers of tests/lm/test_vocab_parallel_job.py."""

import json

import torch
import torch.distributed as dist

from bigsoftmax.lm.config import TrainConfig
from bigsoftmax.lm.scaleout import VocabParallelTrainer
from bigsoftmax.parallel import comm, gather_checkpoint


def tiny(**kw):
    base = dict(corpus="gutenberg", max_lines=1500, head="full", num_sampled=64, d_model=16, batch_size=4, seq_len=8,
                lr=1e-2, dropout=0.0, max_tokens=8 * 32, eval_tokens=200, progress=False, seed=3, vocab_parallel=True,
                tie=False)
    base.update(kw)
    return TrainConfig(**base)


def initial_weights_then_train(rank, world, out, init_file, cfg_kw):
    """Rank 0 saves the run's initial weights in the single-process layout, then every rank trains."""
    tr = VocabParallelTrainer(tiny(**cfg_kw), out)
    shards = comm.all_gather_object(tr.model.head.state_dict())
    if rank == 0:
        state = {k: v for k, v in tr.model.state_dict().items() if not k.startswith("head.")}
        state.update({"head." + k: v for k, v in gather_checkpoint(shards).items()})
        torch.save(state, init_file)
    dist.barrier()
    res = tr.run()
    assert res["status"] == "finished", res


def interrupt_then_resume(rank, world, out, ref_out):
    """A run stopped at step 3 by a signal seen on rank 0 only, resumed, equals an uninterrupted run."""
    VocabParallelTrainer(tiny(), ref_out).run()

    def stop_at_3(tr):
        if tr.state.step == 3 and tr.rank == 0:
            tr._stop_reason = "interrupted"  # what the SIGINT handler sets on the rank that got the signal

    part = VocabParallelTrainer(tiny(), out, on_step=stop_at_3).run()
    assert part == {"status": "interrupted", "step": 3, "tokens": 96}, part
    res = VocabParallelTrainer(tiny(), out, resume=True).run()
    assert res["status"] == "finished" and res["resumed_from_step"] == 3, res
    ref = json.load(open(f"{ref_out}/metrics.json"))
    assert abs(res["valid_nll"] - ref["valid_nll"]) < 1e-6, (res["valid_nll"], ref["valid_nll"])


def resume_on_another_world_size(rank, world, out, errors):
    try:
        VocabParallelTrainer(tiny(), out, resume=True)
    except ValueError as e:
        with open(f"{errors}.{rank}", "w") as f:
            f.write(str(e))

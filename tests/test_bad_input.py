"""Bad-input table per public entry point of the library (issue 14, "keep it from coming back").

Each row: an id, a zero-argument callable that must fail, the exception type and a regular
expression the message must match (it names the argument and, where there is one, the allowed
range). A wrong input must never surface as an error from deep inside torch (IndexError,
RuntimeError, a shape error) nor pass silently. The CLIs have their own tables (tests/lm, tests/recsys).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bigsoftmax.functional as BF
import bigsoftmax.heads as H
from bigsoftmax import optim, retrieval, trees
from bigsoftmax import samplers as S
from bigsoftmax.heads import margin as M

D, V, N = 4, 10, 3
COUNTS = [float(20 - i) for i in range(V)]


def h(n=N, d=D, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=dtype)


def y(n=N, v=None):
    t = torch.arange(n) % V
    if v is not None:
        t[0] = v
    return t


def tc(n=N, t=1):
    return torch.zeros(n, t, dtype=torch.long)


W = torch.randn(V, D)
X = torch.randn(N, D)


def full():
    return H.FullSoftmax(D, V)


def sampled():
    return H.SampledSoftmax(D, V, 4, seed=0)


def nce():
    return H.NCE(D, V, 4, seed=0)


def adaptive():
    return H.AdaptiveSoftmax(D, V, [3, 6], div_value=2.0)


def hsm():
    return H.HierarchicalSoftmax(D, COUNTS)


def cbs():
    return H.ClassBasedSoftmax(D, COUNTS)


def arc():
    return H.ArcFace(D, V)


def _evald(head):
    return head.eval()


# one constructor per head, for the rows every head shares (forward / log_prob / topk inputs)
EVERY = {
    "FullSoftmax": full,
    "SelfNormalizedSoftmax": lambda: H.SelfNormalizedSoftmax(D, V),
    "AdaptiveSoftmax": adaptive,
    "SampledSoftmax": sampled,
    "NCE": nce,
    "NegativeSampling": lambda: H.NegativeSampling(D, V, 4, counts=COUNTS, seed=0),
    "TreeSoftmax": lambda: H.TreeSoftmax(D, trees.balanced(V, 3)),
    "HierarchicalSoftmax": hsm,
    "ClassBasedSoftmax": cbs,
    "LargeMarginSoftmax": lambda: H.LargeMarginSoftmax(D, V),
    "AngularSoftmax": lambda: H.AngularSoftmax(D, V),
    "CosFace": lambda: H.CosFace(D, V),
    "ArcFace": arc,
    "L2ConstrainedSoftmax": lambda: H.L2ConstrainedSoftmax(D, V),
    "WeightedSoftmax": lambda: H.WeightedSoftmax(D, V, class_weights=torch.ones(V)),
    "SoftSoftmax": lambda: H.SoftSoftmax(D, V),
}

SHARED_ROWS = [
    # (id, call(head), exception, phrase)
    ("hidden not a tensor", lambda m: m(h().tolist(), y()), TypeError, "hidden must be a torch.Tensor"),
    ("hidden int", lambda m: m(h().long(), y()), TypeError, "hidden must be a floating-point tensor"),
    ("hidden width", lambda m: m(h(d=D + 1), y()), ValueError, r"hidden must have shape \[\.\.\., 4\]"),
    ("hidden 0-d", lambda m: m(torch.tensor(1.0), y()), ValueError, "hidden must have shape"),
    ("target float", lambda m: m(h(), y().float()), TypeError, "target must hold integer class ids"),
    ("target bool", lambda m: m(h(), y().bool()), TypeError, "target must hold integer class ids"),
    ("target list", lambda m: m(h(), [0, 1, 2]), TypeError, "target must be a torch.Tensor"),
    ("target too high", lambda m: m(h(), y(v=V)), ValueError, r"target contains class id 10.*\[0, 10\)"),
    ("target negative", lambda m: m(h(), y(v=-3)), ValueError, r"target contains class id -3.*\[0, 10\)"),
    ("target shape", lambda m: m(h(), y(n=N + 1)), ValueError, "target"),
    ("eval target too high", lambda m: _evald(m)(h(), y(v=V)), ValueError, r"target contains class id 10"),
    ("log_prob width", lambda m: m.log_prob(h(d=D - 1)), ValueError, "hidden must have shape"),
    ("topk k=0", lambda m: m.topk(h(), 0), ValueError, r"k must be an int in \[1, 10\]"),
    ("topk k>V", lambda m: m.topk(h(), V + 1), ValueError, r"k must be an int in \[1, 10\]"),
    ("topk k float", lambda m: m.topk(h(), 2.0), ValueError, "k must be an int"),
    ("target_log_prob too high", lambda m: m.target_log_prob(h(), y(v=V + 5)), ValueError, "target contains class id 15"),
    ("hidden meta", lambda m: m(h().to("meta"), y()), ValueError, "hidden is on the meta device"),
]

ROWS = [
    # ------------------------------------------------------------------ Head base / constructors
    ("in_features 0", lambda: H.FullSoftmax(0, V), ValueError, "in_features must be a positive int"),
    ("in_features float", lambda: H.FullSoftmax(2.0, V), ValueError, "in_features must be a positive int"),
    ("num_classes 1", lambda: H.FullSoftmax(D, 1), ValueError, "num_classes must be an int >= 2"),
    ("num_classes bool", lambda: H.FullSoftmax(D, True), ValueError, "num_classes must be an int >= 2"),
    ("reduction", lambda: H.FullSoftmax(D, V, reduction="avg"), ValueError, "reduction must be one of"),
    ("ignore_index float", lambda: H.FullSoftmax(D, V, ignore_index=1.5), TypeError, "ignore_index must be an int"),
    ("ignore_index bool", lambda: H.NCE(D, V, 4, ignore_index=True), TypeError, "ignore_index must be an int"),
    # FullSoftmax
    ("full label_smoothing > 1", lambda: H.FullSoftmax(D, V, label_smoothing=1.5), ValueError, r"label_smoothing must be a float in \[0.0, 1.0\]"),
    ("full label_smoothing str", lambda: H.FullSoftmax(D, V, label_smoothing="0.1"), ValueError, "label_smoothing"),
    ("full class_weight shape", lambda: H.FullSoftmax(D, V, class_weight=torch.ones(V + 1)), ValueError, r"class_weight must have shape \[num_classes=10\]"),
    ("full class_weight int", lambda: H.FullSoftmax(D, V, class_weight=torch.ones(V, dtype=torch.long)), TypeError, "class_weight must be a floating-point tensor"),
    ("full class_weight nan", lambda: H.FullSoftmax(D, V, class_weight=torch.full((V,), math.nan)), ValueError, "class_weight must be finite and >= 0"),
    ("full class_weight negative", lambda: H.FullSoftmax(D, V, class_weight=-torch.ones(V)), ValueError, "class_weight must be finite and >= 0"),
    ("full class_weight list", lambda: H.FullSoftmax(D, V, class_weight=[1.0] * V), TypeError, "class_weight"),
    ("full chunk_size 0", lambda: H.FullSoftmax(D, V, chunk_size=0), ValueError, "chunk_size must be a positive int or None"),
    ("full tied weight not a Parameter", lambda: H.FullSoftmax(D, V, weight=torch.zeros(V, D)), TypeError, "weight must be an nn.Parameter"),
    ("full tied weight shape", lambda: H.FullSoftmax(D, V, weight=nn.Parameter(torch.zeros(V, D + 1))), ValueError, r"weight must have shape"),
    # SelfNormalizedSoftmax
    ("selfnorm alpha negative", lambda: H.SelfNormalizedSoftmax(D, V, alpha=-0.1), ValueError, "alpha"),
    ("selfnorm alpha nan", lambda: H.SelfNormalizedSoftmax(D, V, alpha=math.nan), ValueError, "alpha"),
    ("selfnorm alpha str", lambda: H.SelfNormalizedSoftmax(D, V, alpha="big"), (TypeError, ValueError), "alpha"),
    ("selfnorm chunk_size", lambda: H.SelfNormalizedSoftmax(D, V, chunk_size=-2), ValueError, "chunk_size"),
    ("selfnorm tied weight shape", lambda: H.SelfNormalizedSoftmax(D, V, weight=nn.Parameter(torch.zeros(V + 1, D))), ValueError, "weight must have shape"),
    # AdaptiveSoftmax
    ("adaptive no cutoffs", lambda: H.AdaptiveSoftmax(D, V), ValueError, "give cutoffs"),
    ("adaptive cutoffs not increasing", lambda: H.AdaptiveSoftmax(D, V, [6, 3]), ValueError, "cutoffs"),
    ("adaptive cutoff >= V", lambda: H.AdaptiveSoftmax(D, V, [3, V]), ValueError, r"every cutoff must lie in \(0, num_classes=10\)"),
    ("adaptive cutoff 0", lambda: H.AdaptiveSoftmax(D, V, [0, 4]), ValueError, r"every cutoff must lie in \(0, num_classes=10\)"),
    ("adaptive cutoffs float", lambda: H.AdaptiveSoftmax(D, V, [2.5]), (TypeError, ValueError), "cutoffs"),
    ("adaptive div_value 0", lambda: H.AdaptiveSoftmax(D, V, [3], div_value=0.0), ValueError, "div_value"),
    ("adaptive div_value nan", lambda: H.AdaptiveSoftmax(D, V, [3], div_value=math.nan), ValueError, "div_value"),
    ("adaptive counts length", lambda: H.AdaptiveSoftmax(D, V, [3], counts=[1.0] * (V - 1)), ValueError, "counts"),
    ("adaptive counts negative", lambda: H.AdaptiveSoftmax(D, V, [3], counts=[-1.0] * V), ValueError, "counts"),
    ("choose_cutoffs empty counts", lambda: H.choose_cutoffs([], D), ValueError, "counts"),
    # sampling heads
    ("sampled num_sampled 0", lambda: H.SampledSoftmax(D, V, 0), ValueError, "num_sampled must be an int >= 1"),
    ("sampled num_sampled float", lambda: H.SampledSoftmax(D, V, 2.0), ValueError, "num_sampled must be an int >= 1"),
    ("sampled num_sampled > V unique", lambda: H.SampledSoftmax(D, V, V + 1), ValueError, r"num_sampled=11 exceeds the 10 classes"),
    ("sampled num_true 0", lambda: H.SampledSoftmax(D, V, 4, num_true=0), ValueError, "num_true must be an int >= 1"),
    ("sampled gather", lambda: H.SampledSoftmax(D, V, 4, gather="dense"), ValueError, "gather must be one of"),
    ("sampled sampler wrong type", lambda: H.SampledSoftmax(D, V, 4, sampler=object()), TypeError, "sampler must be a bigsoftmax.samplers sampler"),
    ("sampled sampler range", lambda: H.SampledSoftmax(D, V, 4, sampler=S.LogUniform(V + 1)), ValueError, r"sampler.range_max=11 must equal num_classes=10"),
    ("sampled tied weight shape", lambda: H.SampledSoftmax(D, V, 4, weight=nn.Parameter(torch.zeros(V, D + 1))), ValueError, "weight must have shape"),
    ("sampled num_true>1 eval forward", lambda: H.SampledSoftmax(D, V, 4, num_true=2).eval()(h(), tc(t=2)), ValueError, "num_true=1"),
    ("sampled bad sampled_values", lambda: sampled()(h(), y(), sampled_values=(torch.zeros(4, dtype=torch.long),)), TypeError, "sampled_values must be a tuple of three tensors"),
    ("sampled weight meta", lambda: sampled().to("meta")(h(), y()), ValueError, "meta device"),
    ("nce distortion without counts", lambda: H.NCE(D, V, 4, distortion=0.75), ValueError, "distortion applies to counts"),
    ("nce counts length", lambda: H.NCE(D, V, 4, counts=[1.0] * (V + 2)), ValueError, "counts"),
    ("negsampling no counts", lambda: H.NegativeSampling(D, V, 4), (TypeError, ValueError), "counts|sampler"),
    # tree heads
    ("tree not a Tree", lambda: H.TreeSoftmax(D, [[0, 1], [2]]), TypeError, "tree must be a bigsoftmax.trees.Tree"),
    ("tree parameterization", lambda: H.TreeSoftmax(D, trees.balanced(V, 2), parameterization="cube"), ValueError, "parameterization must be one of"),
    ("tree sigmoid non-binary", lambda: H.TreeSoftmax(D, trees.balanced(V, 3), parameterization="sigmoid"), ValueError, "needs a binary tree"),
    ("hsm counts negative", lambda: H.HierarchicalSoftmax(D, [-1.0, 2.0, 3.0]), ValueError, "counts"),
    ("hsm counts nan", lambda: H.HierarchicalSoftmax(D, [math.nan, 2.0, 3.0]), ValueError, "counts"),
    ("hsm counts one class", lambda: H.HierarchicalSoftmax(D, [3.0]), ValueError, "counts|num_classes"),
    ("hsm arity 1", lambda: H.HierarchicalSoftmax(D, COUNTS, arity=1), ValueError, "arity"),
    ("cbs neither counts nor clusters", lambda: H.ClassBasedSoftmax(D), ValueError, "give exactly one of counts"),
    ("cbs both", lambda: H.ClassBasedSoftmax(D, COUNTS, cluster_of_class=[0] * V), ValueError, "give exactly one of counts"),
    ("cbs num_clusters disagrees", lambda: H.ClassBasedSoftmax(D, cluster_of_class=[0, 0, 1, 1], num_clusters=3), ValueError, "num_clusters=3 disagrees"),
    ("cbs binning", lambda: H.ClassBasedSoftmax(D, COUNTS, binning="log"), ValueError, "binning"),
    ("cbs cluster ids float", lambda: H.ClassBasedSoftmax(D, cluster_of_class=[0.5, 1.0]), (TypeError, ValueError), "cluster_of_class"),
    # margin heads
    ("lmsoftmax m 0", lambda: H.LargeMarginSoftmax(D, V, m=0), ValueError, r"\bm\b"),
    ("lmsoftmax m float", lambda: H.LargeMarginSoftmax(D, V, m=2.5), (TypeError, ValueError), r"\bm\b"),
    ("sphereface lambda negative", lambda: H.AngularSoftmax(D, V, lambda_schedule=-1.0), ValueError, "lambda"),
    ("cosface s 0", lambda: H.CosFace(D, V, s=0.0), ValueError, r"\bs\b"),
    ("cosface m negative", lambda: H.CosFace(D, V, m=-0.1), ValueError, r"\bm\b"),
    ("arcface m > pi/2", lambda: H.ArcFace(D, V, m=2.0), ValueError, r"\bm\b"),
    ("arcface s nan", lambda: H.ArcFace(D, V, s=math.nan), ValueError, r"\bs\b"),
    ("margin num_sampled 0", lambda: H.ArcFace(D, V, num_sampled=0), ValueError, "num_sampled"),
    ("margin weight shape", lambda: H.ArcFace(D, V, weight=torch.zeros(V + 1, D)), ValueError, "weight"),
    ("margin eps 0", lambda: H.CosFace(D, V, eps=0.0), ValueError, "eps"),
    ("l2 alpha 0", lambda: H.L2ConstrainedSoftmax(D, V, alpha=0.0), ValueError, "alpha"),
    ("weighted class_weights shape", lambda: H.WeightedSoftmax(D, V, class_weights=torch.ones(V - 1)), ValueError, r"class_weights must have shape \[num_classes=10\]"),
    ("weighted class_weights all zero", lambda: H.WeightedSoftmax(D, V, class_weights=torch.zeros(V)), ValueError, "class_weights must be finite, >= 0 and not all zero"),
    ("softsoftmax temperature 0", lambda: H.SoftSoftmax(D, V, temperature=0.0), ValueError, "temperature"),
    ("softsoftmax smoothing", lambda: H.SoftSoftmax(D, V, label_smoothing=-0.1), ValueError, "label_smoothing"),
    ("inverse_frequency_weights negative", lambda: M.inverse_frequency_weights([-1.0, 2.0]), ValueError, "counts"),
    ("effective_number_weights beta 1", lambda: M.effective_number_weights([1.0, 2.0], beta=1.0), ValueError, "beta"),
    ("l2_alpha_lower_bound p", lambda: M.l2_alpha_lower_bound(V, p=1.5), ValueError, r"\bp\b"),
    # ------------------------------------------------------------------ functional
    ("ssl labels too high", lambda: BF.sampled_softmax_loss(W, None, y(v=V), X, 3, V, seed=0), ValueError, r"labels contains class id 10|labels.*\[0, 10\)"),
    ("ssl labels float", lambda: BF.sampled_softmax_loss(W, None, y().float(), X, 3, V, seed=0), TypeError, "labels must hold integer class ids"),
    ("ssl labels list", lambda: BF.sampled_softmax_loss(W, None, [0, 1, 2], X, 3, V, seed=0), TypeError, "labels must be an int64 tensor"),
    ("ssl num_true mismatch", lambda: BF.sampled_softmax_loss(W, None, tc(t=2), X, 3, V, num_true=3, seed=0), ValueError, "num_true|labels"),
    ("ssl num_sampled 0", lambda: BF.sampled_softmax_loss(W, None, y(), X, 0, V, seed=0), ValueError, "num_sampled"),
    ("ssl num_classes mismatch", lambda: BF.sampled_softmax_loss(W, None, y(), X, 3, V + 1, seed=0), ValueError, r"weights have 10 rows but num_classes=11"),
    ("ssl weights width", lambda: BF.sampled_softmax_loss(torch.randn(V, D + 1), None, y(), X, 3, V, seed=0), ValueError, "width of inputs"),
    ("ssl weights not a tensor", lambda: BF.sampled_softmax_loss("W", None, y(), X, 3, V, seed=0), TypeError, "weights must be"),
    ("ssl biases length", lambda: BF.sampled_softmax_loss(W, torch.zeros(V + 1), y(), X, 3, V, seed=0), ValueError, "biases must be 1-D with 10 entries"),
    ("ssl inputs int", lambda: BF.sampled_softmax_loss(W, None, y(), X.long(), 3, V, seed=0), TypeError, "inputs"),
    ("ssl inputs 1-D", lambda: BF.sampled_softmax_loss(W, None, y(), X[0], 3, V, seed=0), ValueError, "inputs"),
    ("ssl labels batch", lambda: BF.sampled_softmax_loss(W, None, y(n=N + 1), X, 3, V, seed=0), ValueError, "labels"),
    ("ssl sampled_values arity", lambda: BF.sampled_softmax_loss(W, None, y(), X, 3, V, sampled_values=(torch.zeros(3, dtype=torch.long),)), TypeError, "sampled_values must be a tuple"),
    ("ssl sampled ids out of range", lambda: BF.sampled_softmax_loss(W, None, y(), X, 3, V, sampled_values=(torch.tensor([0, 1, V]), torch.ones(N, 1), torch.ones(3))), ValueError, "sampled_candidates"),
    ("ssl sampled count shape", lambda: BF.sampled_softmax_loss(W, None, y(), X, 3, V, sampled_values=(torch.tensor([0, 1, 2]), torch.ones(N, 1), torch.ones(4))), ValueError, "sampled_expected_count"),
    ("ssl true count shape", lambda: BF.sampled_softmax_loss(W, None, y(), X, 3, V, sampled_values=(torch.tensor([0, 1, 2]), torch.ones(N + 1, 1), torch.ones(3))), ValueError, "true_expected_count"),
    ("ssl num_sampled disagrees with sampled_values", lambda: BF.sampled_softmax_loss(W, None, y(), X, 5, V, sampled_values=(torch.tensor([0, 1, 2]), torch.ones(N, 1), torch.ones(3))), ValueError, "num_sampled|sampled_candidates"),
    ("ssl seed float", lambda: BF.sampled_softmax_loss(W, None, y(), X, 3, V, seed=1.5), TypeError, "seed"),
    ("nce labels negative", lambda: BF.nce_loss(W, None, y(v=-1), X, 3, V, seed=0), ValueError, "labels"),
    ("nce inputs meta", lambda: BF.nce_loss(W, None, y(), X.to("meta"), 3, V, seed=0), ValueError, "inputs is on the meta device"),
    ("nce weights shard width", lambda: BF.nce_loss([W[:5], torch.randn(5, D + 1)], None, y(), X, 3, V, seed=0), ValueError, "weights must be"),
    ("compute_sampled_logits num_classes", lambda: BF.compute_sampled_logits(W, None, y(), X, 3, 0, seed=0), ValueError, "num_classes"),
    ("accidental_hits candidates 2-D", lambda: BF.compute_accidental_hits(tc(), torch.zeros(2, 2, dtype=torch.long), 1), ValueError, "sampled_candidates must be a 1-D int64 tensor"),
    ("accidental_hits true_classes list", lambda: BF.compute_accidental_hits([[1]], torch.tensor([1]), 1), TypeError, "true_classes must be an int64 tensor"),
    ("accidental_hits num_true mismatch", lambda: BF.compute_accidental_hits(tc(t=2), torch.tensor([1]), 1), ValueError, r"true_classes must have shape \[batch=3, num_true=1\]"),
    ("accidental_hits true_classes meta", lambda: BF.compute_accidental_hits(tc().to("meta"), torch.tensor([1]), 1), ValueError, "true_classes is on the meta device"),
    ("gather_rows id too high", lambda: BF.gather_rows(W, torch.tensor([V])), ValueError, r"ids contain row id 10.*\[0, 10\)"),
    ("gather_rows id negative", lambda: BF.gather_rows(W, torch.tensor([-1])), ValueError, r"row id -1"),
    ("gather_rows float ids", lambda: BF.gather_rows(W, torch.tensor([1.0])), TypeError, "ids"),
    ("lce target too high", lambda: BF.linear_cross_entropy(X, W, None, y(v=V)), ValueError, r"target contains class id 10"),
    ("lce weight width", lambda: BF.linear_cross_entropy(X, torch.randn(V, D + 1), None, y()), ValueError, "weight"),
    ("lce bias length", lambda: BF.linear_cross_entropy(X, W, torch.zeros(V + 1), y()), ValueError, "bias"),
    ("lce reduction", lambda: BF.linear_cross_entropy(X, W, None, y(), reduction="avg"), ValueError, "reduction must be one of"),
    ("lce label_smoothing", lambda: BF.linear_cross_entropy(X, W, None, y(), label_smoothing=2.0), ValueError, "label_smoothing"),
    ("lce weight_class nan", lambda: BF.linear_cross_entropy(X, W, None, y(), weight_class=torch.full((V,), math.nan)), ValueError, "weight_class must be finite and >= 0"),
    ("lce chunk_size", lambda: BF.linear_cross_entropy(X, W, None, y(), chunk_size=0), ValueError, "chunk_size"),
    ("lce ignore_index float", lambda: BF.linear_cross_entropy(X, W, None, y(), ignore_index=0.5), TypeError, "ignore_index must be an int"),
    ("lce input int", lambda: BF.linear_cross_entropy(X.long(), W, None, y()), TypeError, "input"),
    ("lce target shape", lambda: BF.linear_cross_entropy(X, W, None, y(n=N + 2)), ValueError, "target"),
    ("lce target meta", lambda: BF.linear_cross_entropy(X, W, None, y().to("meta")), ValueError, "target is on the meta device"),
    ("lce input meta", lambda: BF.linear_cross_entropy(X.to("meta"), W, None, y()), ValueError, "meta device"),
    ("in_batch query width", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D + 1)), ValueError, "candidates|query"),
    ("in_batch fewer candidates", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(2, D)), ValueError, "candidates"),
    ("in_batch temperature 0", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D), temperature=0.0), ValueError, "temperature"),
    ("in_batch log_q nan", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D), candidate_log_q=torch.tensor([0.0, math.nan, 0.0])), ValueError, "candidate_log_q"),
    ("in_batch hard negatives", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D), num_hard_negatives=3), ValueError, "num_hard_negatives"),
    ("in_batch reduction", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D), reduction="max"), ValueError, "reduction"),
    ("in_batch query meta", lambda: BF.in_batch_softmax_loss(torch.randn(3, D, device="meta"), torch.randn(3, D)), ValueError, "query is on the meta device"),
    ("in_batch candidate_ids float", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D), candidate_ids=torch.zeros(3)), TypeError, "candidate_ids must hold integer ids"),
    ("in_batch candidate_ids length", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D), candidate_ids=torch.zeros(4, dtype=torch.long)), ValueError, r"candidate_ids must have shape \[3\]"),
    ("in_batch temperature tensor", lambda: BF.in_batch_softmax_loss(torch.randn(3, D), torch.randn(3, D), temperature=torch.ones(2)), ValueError, "temperature must be a positive float or a one-element"),
    ("in_batch query int", lambda: BF.in_batch_softmax_loss(torch.randn(3, D).long(), torch.randn(3, D)), TypeError, "query must be a floating-point tensor"),
    ("mixed query meta", lambda: retrieval.mixed_negatives_loss(torch.randn(3, D, device="meta"), torch.randn(3, D), y(), W, 2), ValueError, "query is on the meta device"),
    ("mixed sampler range", lambda: retrieval.mixed_negatives_loss(torch.randn(3, D), torch.randn(3, D), y(), W, 2, sampler=S.Uniform(V + 3)), ValueError, r"item_table has 10 rows but sampler.range_max=13"),
    ("mixed item_table width", lambda: retrieval.mixed_negatives_loss(torch.randn(3, D), torch.randn(3, D), y(), torch.randn(V, D + 1), 2), ValueError, r"item_table must be \[num_items, d=4\]"),
    ("InBatchSoftmax temperature", lambda: retrieval.InBatchSoftmax(temperature=-1.0), ValueError, "temperature must be a finite number > 0"),
    ("mixed num_sampled 0", lambda: retrieval.mixed_negatives_loss(torch.randn(3, D), torch.randn(3, D), y(), W, 0), ValueError, "num_sampled"),
    ("mixed pos_ids too high", lambda: retrieval.mixed_negatives_loss(torch.randn(3, D), torch.randn(3, D), y(v=V), W, 2), ValueError, "pos_ids"),
    # ------------------------------------------------------------------ samplers
    ("uniform range_max 0", lambda: S.Uniform(0), ValueError, "range_max must be an int >= 1"),
    ("loguniform range_max float", lambda: S.LogUniform(10.0), (TypeError, ValueError), "range_max"),
    ("unigram empty", lambda: S.Unigram([]), ValueError, "weights_or_counts"),
    ("unigram 2-D", lambda: S.Unigram(torch.ones(2, 2)), ValueError, "weights_or_counts"),
    ("unigram num_shards 0", lambda: S.Unigram([1.0, 2.0], num_shards=0), ValueError, "num_shards"),
    ("unigram num_reserved_ids negative", lambda: S.Unigram([1.0, 2.0], num_reserved_ids=-1), ValueError, "num_reserved_ids"),
    ("sample num_sampled 0", lambda: S.LogUniform(V).sample(tc(), 0), ValueError, "num_sampled"),
    ("sample unique num_sampled > range", lambda: S.LogUniform(V, unique=True).sample(tc(), V + 1), ValueError, "num_sampled"),
    ("sample true_classes float", lambda: S.LogUniform(V).sample(tc().float(), 3), TypeError, "true_classes"),
    ("sample true_classes too high", lambda: S.LogUniform(V).sample(tc() + V, 3), ValueError, r"true_classes contains class id 10"),
    ("sample true_classes 1-D", lambda: S.LogUniform(V).sample(torch.zeros(3, dtype=torch.long), 3), ValueError, "true_classes"),
    ("sample generator type", lambda: S.Uniform(V).sample(tc(), 3, generator=1), TypeError, "generator"),
    ("all num_sampled != range_max", lambda: S.All(V).sample(tc(), V - 1), ValueError, r"num_sampled \(9\) must equal range_max \(10\)"),
    ("learned update float", lambda: S.LearnedUnigram(V).update(tc().float()), TypeError, "true_classes"),
    ("learned range_max 2**31-1", lambda: S.LearnedUnigram(2**31 - 1), ValueError, "range_max must be less than 2147483647"),
    ("learned load negative counts", lambda: S.LearnedUnigram(4).load_state_dict({"counts": torch.tensor([1, -1, 1, 1])}), ValueError, "counts must be >= 0"),
    ("fn uniform num_true", lambda: S.uniform_candidate_sampler(tc(t=2), 1, 3, True, V), ValueError, "num_true"),
    ("fn uniform unique str", lambda: S.uniform_candidate_sampler(tc(), 1, 3, "no", V), TypeError, "unique"),
    ("fn loguniform seed str", lambda: S.log_uniform_candidate_sampler(tc(), 1, 3, True, V, seed="x"), TypeError, "seed"),
    ("fn learned range_max 2**31-1", lambda: S.learned_unigram_candidate_sampler(tc(), 1, 3, True, 2**31 - 1), ValueError, "range_max must be less than 2147483647"),
    ("fn fixed neither vocab nor unigrams", lambda: S.fixed_unigram_candidate_sampler(tc(), 1, 3, True, V), ValueError, "needs exactly one of vocab_file and unigrams"),
    ("fn fixed range_max mismatch", lambda: S.fixed_unigram_candidate_sampler(tc(), 1, 3, True, V, unigrams=[1.0] * (V - 1)), ValueError, r"range_max \(10\) must equal the number of ids"),
    ("fn fixed missing vocab_file", lambda: S.fixed_unigram_candidate_sampler(tc(), 1, 3, True, V, vocab_file="/nonexistent/vocab.txt"), (ValueError, FileNotFoundError), "vocab"),
    ("fn fixed distortion negative", lambda: S.fixed_unigram_candidate_sampler(tc(), 1, 3, True, V, unigrams=[1.0] * V, distortion=-1.0), ValueError, "distortion"),
    ("fn all unique str", lambda: S.all_candidate_sampler(tc(), 1, V, "yes"), TypeError, "unique"),
    ("bigram lam > 1", lambda: S.Bigram(V, torch.arange(V), lam=1.5), ValueError, "lam"),
    ("bigram alpha negative", lambda: S.Bigram(V, torch.arange(V), alpha=-1.0), ValueError, "alpha"),
    ("bigram tokens out of range", lambda: S.Bigram(V, torch.tensor([0, V])), ValueError, "tokens"),
    ("bigram no tokens nor pairs", lambda: S.Bigram(V), ValueError, "tokens|pairs"),
    ("bigram context missing", lambda: S.Bigram(V, torch.arange(V)).sample(tc(), 3), (TypeError, ValueError), "context"),
    ("streaming num_buckets 0", lambda: S.StreamingFrequencyEstimator(0), ValueError, "num_buckets must be an int >= 1"),
    ("streaming alpha 0", lambda: S.StreamingFrequencyEstimator(16, alpha=0.0), ValueError, r"alpha must be a float in \(0, 1\]"),
    ("streaming num_hashes 0", lambda: S.StreamingFrequencyEstimator(16, num_hashes=0), ValueError, "num_hashes"),
    ("sample num_sampled bool", lambda: S.Uniform(V).sample(tc(), True), TypeError, "num_sampled must be an int"),
    ("unigram unique beyond support", lambda: S.Unigram([1.0, 0.0, 0.0]).sample(tc(), 2), ValueError, r"num_sampled \(2\) must be <= 1, the number of classes with nonzero probability"),
    ("bigram context shape", lambda: S.Bigram(V, torch.arange(V)).sample(tc(), 3, context=torch.zeros(4, dtype=torch.long)), ValueError, r"context must have shape \[batch=3\]"),
    ("bigram context range", lambda: S.Bigram(V, torch.arange(V)).sample(tc(), 3, context=torch.full((3,), V)), ValueError, "context contains class id 10"),
    ("streaming update float ids", lambda: S.StreamingFrequencyEstimator(16).update(torch.zeros(3)), TypeError, "ids must hold integer item ids"),
    # ------------------------------------------------------------------ trees, optim
    ("trees.from_nested float", lambda: trees.from_nested([[0.5, 1], [2]]), TypeError, "structure may hold only ints"),
    ("trees.from_nested empty node", lambda: trees.from_nested([]), ValueError, "structure has an empty list"),
    ("trees.from_nested id gap", lambda: trees.from_nested([[0, 1], [3]]), ValueError, r"ids must be in \[0, 3\)"),
    ("trees.two_level num_clusters", lambda: trees.two_level([1.0, 2.0, 3.0], num_clusters=5), ValueError, r"num_clusters must be an int in \[1, 3\]"),
    ("LambdaSchedule base negative", lambda: M.LambdaSchedule(base=-1), ValueError, "LambdaSchedule.base must be a finite number"),
    ("LambdaSchedule gamma str", lambda: M.LambdaSchedule(gamma="x"), TypeError, "LambdaSchedule.gamma must be a real number"),
    ("sampled head num_true shape", lambda: H.SampledSoftmax(D, V, 4, num_true=2, seed=0)(h(), tc(t=3)), ValueError, r"target must have shape \[\.\.\., num_true=2\]"),
    ("trees.balanced arity 1", lambda: trees.balanced(V, 1), ValueError, "arity"),
    ("trees.balanced num_classes 1", lambda: trees.balanced(1, 2), ValueError, "num_classes"),
    ("trees.huffman negative", lambda: trees.huffman([1.0, -2.0]), ValueError, "counts"),
    ("trees.from_assignment gap", lambda: trees.from_assignment([0, 2, 2]), ValueError, "cluster"),
    ("trees.from_nested repeated class", lambda: trees.from_nested([[0, 1], [1, 2]]), ValueError, "class"),
    ("optim dense", lambda: optim.make_optimizer(nn.Linear(2, 2), dense="lion"), ValueError, "dense must be one of"),
    ("optim lr negative", lambda: optim.make_optimizer(nn.Linear(2, 2), lr=-1.0), ValueError, r"lr must be a finite number in \(0, inf\)"),
    ("optim lr nan", lambda: optim.make_optimizer(nn.Linear(2, 2), lr=math.nan), ValueError, "lr must be a finite number"),
    ("optim lr str", lambda: optim.make_optimizer(nn.Linear(2, 2), lr="1e-3"), TypeError, "lr must be a real number"),
    ("optim sparse_lr 0", lambda: optim.make_optimizer(nn.Linear(2, 2), sparse_lr=0.0), ValueError, "sparse_lr must be a finite number"),
    ("optim model not a module", lambda: optim.make_optimizer([nn.Parameter(torch.zeros(2))]), TypeError, "model must be a torch.nn.Module"),
    ("split_params not a module", lambda: optim.split_params(3), TypeError, "model must be a torch.nn.Module"),
    ("optim sparse", lambda: optim.make_optimizer(nn.Linear(2, 2), sparse="adam"), ValueError, "sparse must be one of"),
]


@pytest.mark.parametrize("call,exc,phrase", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_a_clear_error(call, exc, phrase):
    with pytest.raises(exc, match=phrase):
        call()


@pytest.mark.parametrize("name", sorted(EVERY))
@pytest.mark.parametrize("call,exc,phrase", [r[1:] for r in SHARED_ROWS], ids=[r[0] for r in SHARED_ROWS])
def test_every_head_refuses_bad_calls(name, call, exc, phrase):
    head = EVERY[name]()
    with pytest.raises(exc, match=phrase):
        call(head)


def test_the_table_is_broad():
    assert len(ROWS) + len(SHARED_ROWS) * len(EVERY) >= 100 and len(ROWS) >= 100

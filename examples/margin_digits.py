"""Margin softmax losses on real data: scikit-learn's handwritten digits, closed- and open-set.

A small MLP maps an 8x8 digit image to a 32-d embedding; an output head (ArcFace, CosFace, ...) trains
it on digits 0-6. We then measure

* closed-set accuracy: the head's exact prediction on held-out images of digits 0-6, and
* open-set verification: on digits 7-9, never seen in training, the TAR (true accept rate) at
  FAR = 1e-2 of the cosine similarity of embedding pairs (same digit = genuine pair).

Margin losses should give embeddings that separate unseen classes better than the plain softmax.

    python examples/margin_digits.py              # ArcFace vs plain softmax, one seed, a few seconds
    python examples/margin_digits.py --head cosface --epochs 60

Needs scikit-learn (the digits ship inside its wheel; nothing is downloaded): ``pip install scikit-learn``.
``benchmarks/margin_digits.py`` runs every head over several seeds and writes a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bigsoftmax.heads import margin as M  # noqa: E402

KNOWN = 7  # digits 0..6 train the model; 7..9 are the unseen open set
EMBED_DIM = 32


def load_digits_split(seed: int = 0, test_fraction: float = 0.25):
    """Digits as float tensors: closed-set train/test (0-6, stratified split) and the open set (7-9)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "examples/margin_digits.py needs scikit-learn for its bundled digits data set: pip install scikit-learn"
        ) from e
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(KNOWN):
        idx = (y == c).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train, test = torch.cat(train), torch.cat(test)
    mean, std = x[train].mean(0), x[train].std(0).clamp(min=1e-3)
    x = (x - mean) / std
    opn = (y >= KNOWN).nonzero()[:, 0]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test],
            "x_open": x[opn], "y_open": y[opn]}


class Embedder(nn.Module):
    """64 pixels -> 128 -> 32-d embedding (ReLU MLP with batch norm)."""

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, dim),
                                 nn.BatchNorm1d(dim))

    def forward(self, x):
        return self.net(x)


class PlainSoftmax(nn.Module):
    """Baseline: ``nn.Linear`` + ``F.cross_entropy``, what one writes without bigsoftmax."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h, y):
        return F.cross_entropy(self.fc(h), y)

    def predict(self, h):
        return self.fc(h).argmax(-1)


def make_head(name: str, dim: int = EMBED_DIM, num_classes: int = KNOWN, counts=None):
    """The heads compared here, with the papers' default hyper-parameters unless noted."""
    if name == "softmax":
        return PlainSoftmax(dim, num_classes)
    if name == "lsoftmax":
        return M.LargeMarginSoftmax(dim, num_classes, m=2, lambda_schedule=M.LambdaSchedule(base=100, gamma=0.05, lambda_min=1))
    if name == "sphereface":
        return M.AngularSoftmax(dim, num_classes, m=4)  # SphereFace λ schedule (base 1000, γ 0.12, λ_min 5)
    if name == "amsoftmax":
        return M.AdditiveMarginSoftmax(dim, num_classes)  # s=30, m=0.35
    if name == "cosface":
        return M.CosFace(dim, num_classes)  # s=64, m=0.35
    if name == "arcface":
        return M.ArcFace(dim, num_classes)  # s=64, m=0.5
    if name == "l2softmax":
        return M.L2ConstrainedSoftmax(dim, num_classes, alpha=16.0)
    if name == "weighted":
        return M.WeightedSoftmax(dim, num_classes, M.inverse_frequency_weights(counts))
    if name == "weighted_en":
        return M.WeightedSoftmax(dim, num_classes, M.effective_number_weights(counts, beta=0.99))
    if name == "soft":
        return M.SoftSoftmax(dim, num_classes, temperature=1.0, label_smoothing=0.1)
    raise ValueError(f"unknown head {name!r}")


def train(name: str, data: dict, seed: int = 0, epochs: int = 40, batch: int = 64, lr: float = 3e-3):
    """Train an Embedder + head with Adam; returns (embedder, head) in eval mode."""
    torch.manual_seed(seed)
    counts = torch.bincount(data["y_train"], minlength=KNOWN)
    emb, head = Embedder(), make_head(name, counts=counts)
    opt = torch.optim.Adam(list(emb.parameters()) + list(head.parameters()), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(data["y_train"])
    emb.train()
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch // 2, batch):  # drop a tiny last batch (batch norm)
            idx = perm[i : i + batch]
            loss = head(emb(data["x_train"][idx]), data["y_train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    emb.eval()
    head.eval()
    return emb, head


def tar_at_far(features: torch.Tensor, labels: torch.Tensor, far: float = 1e-2) -> float:
    """Verification TAR at the threshold whose false accept rate on impostor pairs is ``far``.

    Scores: cosine similarity of every unordered pair; genuine pairs share a label.
    """
    z = F.normalize(features, dim=1)
    sim = z @ z.t()
    iu = torch.triu_indices(len(labels), len(labels), offset=1)
    s = sim[iu[0], iu[1]]
    same = labels[iu[0]] == labels[iu[1]]
    imp = s[~same].double()
    thr = torch.quantile(imp, 1.0 - far)  # far of the impostor pairs score above thr
    return float((s[same].double() > thr).double().mean())


@torch.no_grad()
def evaluate(emb, head, data: dict, far: float = 1e-2) -> dict:
    h_test = emb(data["x_test"])
    acc = float((head.predict(h_test) == data["y_test"]).float().mean())
    per_class = [float((head.predict(h_test[data["y_test"] == c]) == c).float().mean()) for c in range(KNOWN)]
    return {"acc": acc, "balanced_acc": sum(per_class) / KNOWN,
            "tar": tar_at_far(emb(data["x_open"]), data["y_open"], far)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", default="arcface",
                    choices=["softmax", "lsoftmax", "sphereface", "amsoftmax", "cosface", "arcface", "l2softmax",
                             "weighted", "weighted_en", "soft"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: thread synchronisation would cost more than it saves
    data = load_digits_split(args.seed)
    print(f"train {len(data['y_train'])} / test {len(data['y_test'])} images of digits 0-6; "
          f"open set {len(data['y_open'])} images of digits 7-9")
    for name in dict.fromkeys(["softmax", args.head]):
        t0 = time.perf_counter()
        emb, head = train(name, data, seed=args.seed, epochs=args.epochs)
        r = evaluate(emb, head, data)
        print(f"{name:10s} closed-set accuracy {100 * r['acc']:5.1f}%   open-set TAR@FAR=1e-2 {100 * r['tar']:5.1f}%"
              f"   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()

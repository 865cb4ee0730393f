"""Docstrings of the library core: every public definition has one, and the public heads, the
Head protocol methods, the functionals, the retrieval losses and the samplers read like torch's
(formula, ``Args:``, ``Shape:``, ``Examples::``) with examples that run."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest
import torch

import bigsoftmax
from bigsoftmax import _docs, functional, heads, retrieval, samplers

#: outside the library core (the jobs document their CLIs), or private by name
NOT_CORE = ("bigsoftmax.lm", "bigsoftmax.recsys", "bigsoftmax._jobs", "bigsoftmax.cli", "bigsoftmax._compat",
            "bigsoftmax.__main__", "bigsoftmax.integrations")


def _core_modules():
    out = ["bigsoftmax"]
    for m in pkgutil.walk_packages(bigsoftmax.__path__, "bigsoftmax."):
        if any(m.name == e or m.name.startswith(e + ".") for e in NOT_CORE):
            continue
        if any(p.startswith("_") for p in m.name.split(".")[1:]):
            continue
        out.append(m.name)
    return out


def _public_defs():
    """(qualified name, object) of every public function, class and method defined in the core."""
    seen = set()
    for name in _core_modules():
        mod = importlib.import_module(name)
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for n in names:
            obj = getattr(mod, n)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not getattr(obj, "__module__", "").startswith("bigsoftmax") or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{obj.__module__}.{obj.__qualname__}", obj
            if inspect.isclass(obj):
                for k, v in vars(obj).items():
                    if k.startswith("_"):
                        continue
                    if isinstance(v, (staticmethod, classmethod)):
                        v = v.__func__
                    if inspect.isfunction(v):
                        yield f"{obj.__module__}.{obj.__qualname__}.{k}", getattr(obj, k)  # inherits docs
                    elif isinstance(v, property):
                        doc = v.__doc__ or next((getattr(b, k).__doc__ for b in obj.__mro__[1:]
                                                 if isinstance(getattr(b, k, None), property)), None)
                        yield f"{obj.__module__}.{obj.__qualname__}.{k}", doc


def test_every_public_core_definition_has_a_docstring():
    missing = [q for q, obj in _public_defs() if not (obj if isinstance(obj, str) or obj is None
                                                         else inspect.getdoc(obj))]
    assert not missing, f"public definitions without a docstring: {missing}"


def _torch_style_objects():
    out = [(f"heads.{n}", getattr(heads, n)) for n in heads.__all__
           if inspect.isclass(getattr(heads, n)) and n != "LinearEvalMixin"]
    out += [(f"Head.{m}", getattr(heads.Head, m)) for m in ("forward", "log_prob", "target_log_prob", "topk")]
    out += [(f"functional.{n}", getattr(functional, n)) for n in functional.__all__
            if inspect.isfunction(getattr(functional, n))]
    out += [(f"retrieval.{n}", getattr(retrieval, n)) for n in retrieval.__all__]
    out += [(f"samplers.{n}", getattr(samplers, n)) for n in samplers.__all__
            if (inspect.isclass(getattr(samplers, n)) and issubclass(getattr(samplers, n), torch.nn.Module))
            or n.endswith("_candidate_sampler")]
    return out


TORCH_STYLE = _torch_style_objects()


def test_the_list_covers_the_api():
    names = {n for n, _ in TORCH_STYLE}
    for must in ("heads.FullSoftmax", "heads.SampledSoftmax", "heads.ArcFace", "heads.AdaptiveSoftmax",
                 "Head.topk", "functional.sampled_softmax_loss", "functional.linear_cross_entropy",
                 "samplers.Bigram", "samplers.LogUniform", "samplers.uniform_candidate_sampler",
                 "retrieval.InBatchSoftmax"):
        assert must in names


@pytest.mark.parametrize("name, obj", TORCH_STYLE, ids=[n for n, _ in TORCH_STYLE])
def test_torch_style_sections(name, obj):
    doc = inspect.getdoc(obj) or ""
    missing = [s for s in ("Args:", "Shape:", "Examples::") if s not in doc]
    assert not missing, f"{name} lacks {missing}"
    assert not re.search(r"^\s*\{\w+\}\s*$", doc, re.M), f"{name} has an unfilled shared-paragraph placeholder"


def _example_code(doc: str) -> str:
    block = doc.split("Examples::", 1)[1]
    lines = []
    for line in block.splitlines():
        s = line.strip()
        if s.startswith(">>> ") or s == ">>>":
            lines.append(s[4:])
        elif s.startswith("... ") or s == "...":
            lines.append(s[4:])
    return "\n".join(lines)


@pytest.mark.parametrize("name, obj", TORCH_STYLE, ids=[n for n, _ in TORCH_STYLE])
def test_examples_run(name, obj):
    code = _example_code(inspect.getdoc(obj))
    assert code.strip(), f"{name}: empty Examples:: block"
    mod = importlib.import_module(obj.__module__)
    ns = dict(vars(mod))
    ns.update({n: getattr(functional, n) for n in functional.__all__})
    ns.update(torch=torch, bigsoftmax=bigsoftmax, math=__import__("math"))
    torch.manual_seed(0)
    exec(compile(code, f"<{name} Examples>", "exec"), ns)


def test_fill_doc_shares_paragraphs_and_refuses_typos():
    def f():
        """Doc.

        Args:
            {ignore_index}
            {reduction}
        """

    _docs.fill_doc(f)
    assert "ignore_index: a target id" in f.__doc__ and "reduction: ``'mean'``" in f.__doc__
    # continuation lines keep the placeholder's indentation + 4
    assert "\n                ``nn.CrossEntropyLoss``" in f.__doc__

    def g():
        """{no_such_paragraph}"""

    with pytest.raises(KeyError):
        _docs.fill_doc(g)
    # the shared paragraph is the same text in every head that uses it
    assert heads.Head.__doc__.count("ignore_index: a target id") == 1

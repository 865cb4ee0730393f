"""The kernels stay kernels: no module of bigsoftmax.ops imports a head, and the docstring
examples of the kernel family and the heads on it run."""

import ast
import doctest
import importlib
from pathlib import Path

import pytest
import torch

import bigsoftmax.ops

OPS = Path(bigsoftmax.ops.__file__).parent


@pytest.mark.parametrize("path", sorted(OPS.glob("*.py")), ids=lambda p: p.name)
def test_a_kernel_never_imports_a_head(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        assert not any("heads" in n.split(".") for n in names), f"{path.name} imports {names}"


@pytest.mark.parametrize("module", ["bigsoftmax.ops.lse", "bigsoftmax.ops.reduce", "bigsoftmax.heads.full",
                                    "bigsoftmax.heads.selfnorm", "bigsoftmax.heads.margin"])
def test_docstring_examples_run(module):
    m = importlib.import_module(module)
    globs = dict(vars(m), torch=torch)
    res = doctest.testmod(m, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0

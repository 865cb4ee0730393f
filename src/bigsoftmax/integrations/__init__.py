"""Integrations of bigsoftmax heads with other libraries (optional extras).

* :mod:`bigsoftmax.integrations.transformers` — any bigsoftmax head as the ``lm_head`` of a Hugging Face
  causal LM (training loss, weight tying, exact perplexity, ``generate()``). Needs the ``transformers``
  extra; importing :mod:`bigsoftmax` or this package never imports ``transformers``.

Lightning needs no adapter: a head is an ``nn.Module`` (see ``docs/training.md#lightning``).
"""

__all__ = ["transformers"]


def __getattr__(name):
    if name == "transformers":  # lazy: `import bigsoftmax.integrations` must not import transformers
        import importlib

        return importlib.import_module(".transformers", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

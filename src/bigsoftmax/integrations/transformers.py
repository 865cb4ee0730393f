"""Any bigsoftmax head as the output layer of a Hugging Face ``transformers`` causal LM.

:func:`replace_lm_head` swaps ``model.lm_head`` (GPT-2, Llama and every ``*ForCausalLM`` whose
forward is ``logits = self.lm_head(hidden)`` then ``loss = self.loss_function(logits, labels, ...)``)
for a :class:`BigSoftmaxLMHead` adapter around the head. What is hooked, and how:

* ``model.lm_head`` becomes the adapter. Called on the hidden states it returns the head's exact
  ``log_prob(h)`` ``[..., V]`` as the "logits" (normalised log-probabilities: ``softmax`` of them is
  the head's distribution, so ``generate()``'s greedy / sampling / top-k processors work unchanged),
  with the hidden states attached to that tensor for the loss.
* ``model.loss_function`` (transformers' per-model loss hook, the one that receives
  ``num_items_in_batch`` from the ``Trainer``) becomes :meth:`BigSoftmaxLMHead.loss`: HF's causal shift
  (position t predicts token t+1; ``-100`` and the last position ignored, or ``shift_labels`` when
  given) and then ``head(hidden, shifted_labels)`` — the head's training objective in train mode, the
  exact NLL in eval mode. The logits are not used, so a sampled head never forms ``[N, V]``.
* a forward pre-hook on the model marks a call *with labels in train mode*: then the adapter skips
  the ``[N, V]`` log-probabilities and returns a zero-width ``[..., 0]`` placeholder as
  ``outputs.logits`` (``logits_in_training=True`` returns the exact log-probabilities there too).
  Calls without labels (``generate()``, inference) always get the exact log-probabilities.
* ``model.loss_type`` is set to ``"ForCausalLM"`` (the loss shifts labels), so the ``Trainer`` counts
  ``num_items_in_batch`` over ``labels[..., 1:]`` for every model class (transformers derives it
  from the class name, which gives ``None`` for ``GPT2LMHeadModel``).
* weight tying: ``model._tied_weights_keys`` / ``all_tied_weights_keys`` point at the head's class
  matrix (``lm_head.head.weight``, its state-dict key) and ``config.tie_word_embeddings``
  says whether it is tied, so ``tie_weights()``, ``save_pretrained`` and ``from_pretrained`` keep
  the sharing (or leave an untied head alone).

Importing this module imports ``transformers`` (>= 5.0: the dict-valued ``_tied_weights_keys`` and
``all_tied_weights_keys`` of transformers 5); importing :mod:`bigsoftmax` never does.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Iterable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import check_causal_lm, check_lm_head_fit

try:
    import transformers as _hf
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("bigsoftmax.integrations.transformers needs the optional extra: "
                      "pip install 'bigsoftmax[transformers]'") from e

if int(_hf.__version__.split(".")[0]) < 5:  # pragma: no cover - the pinned version is 5.x
    raise ImportError(f"bigsoftmax.integrations.transformers needs transformers>=5.0, found {_hf.__version__}")

__all__ = ["BigSoftmaxLMHead", "replace_lm_head", "causal_lm_perplexity", "Perplexity", "can_tie"]

_HIDDEN_ATTR = "_bigsoftmax_hidden"


def _class_rows_name(head: nn.Module) -> Optional[str]:
    """Name (inside ``head``) of the ``[V, d]`` class-matrix Parameter ``head.weight``, or None."""
    w = getattr(head, "weight", None)
    if not isinstance(w, nn.Parameter) or tuple(w.shape) != (head.num_classes, head.in_features):
        return None
    # the state-dict key (a ClassRows head stores the Parameter at rows.weight but saves it as weight):
    # transformers matches tied keys against the state dict, and ties by setattr on the parent module
    for name, p in head.state_dict(keep_vars=True).items():
        if p is w:
            return name
    return None


def can_tie(head: nn.Module) -> bool:
    r"""Whether ``head`` has a ``[V, d]`` class matrix that can be the input embedding of an LM.

    .. math::
        \text{tieable} \iff \texttt{head.weight} \in \mathbb{R}^{V \times d}
        \text{ (one row per class, the layout of } \texttt{nn.Embedding(V, d)}\text{)}

    True for the full, sampled, NCE-family, self-normalised and margin heads; False for the tree and
    adaptive heads, whose parameters are per tree node / per cluster.

    Args:
        head: a bigsoftmax head.

    Shape:
        - ``head.weight``: :math:`(V, d)` when True.

    Examples::

        >>> can_tie(bigsoftmax.heads.FullSoftmax(8, 50))
        True
        >>> can_tie(bigsoftmax.heads.AdaptiveSoftmax(8, 50, cutoffs=[10]))
        False
    """
    return _class_rows_name(head) is not None


class BigSoftmaxLMHead(nn.Module):
    r"""A bigsoftmax head in the place of a causal LM's ``lm_head`` (see the module docstring).

    .. math::
        \text{logits}(h) = \log p_\text{head}(\cdot \mid h), \qquad
        \text{loss} = \text{head}(h_{:, :-1}, x_{:, 1:})

    ``forward(hidden)`` returns the exact log-probabilities (a zero-width placeholder in a training
    call with labels, unless ``logits_in_training``); :meth:`loss` is installed as the model's
    ``loss_function``.

    Args:
        head: a bigsoftmax head (``in_features`` = the model's hidden size, ``num_classes`` = its
            vocabulary size, ``ignore_index=-100``, ``reduction='mean'``).
        logits_in_training: also compute the ``[..., V]`` exact log-probabilities in a training
            call with labels (default False: a ``[..., 0]`` placeholder, the point of a sampled head).

    Shape:
        - hidden: :math:`(*, d)`; output: :math:`(*, V)` (or :math:`(*, 0)`, see above).

    Examples::

        >>> adapter = BigSoftmaxLMHead(bigsoftmax.heads.FullSoftmax(8, 50)).eval()
        >>> adapter(torch.randn(2, 3, 8)).exp().sum(-1).allclose(torch.ones(2, 3))
        True
    """

    def __init__(self, head: nn.Module, logits_in_training: bool = False):
        super().__init__()
        if not isinstance(head, nn.Module) or not all(hasattr(head, a) for a in ("log_prob", "in_features",
                                                                                  "num_classes")):
            raise TypeError(f"head must be a bigsoftmax head (bigsoftmax.heads.*), got {type(head).__name__}")
        if not isinstance(logits_in_training, bool):
            raise TypeError(f"logits_in_training must be a bool, got {type(logits_in_training).__name__}")
        self.head = head
        self.in_features = head.in_features
        self.out_features = head.num_classes
        self.logits_in_training = logits_in_training
        self._loss_only = False  # set by the model's forward pre-hook for a training call with labels
        self._skip_logits = False  # set by causal_lm_perplexity: the loss alone is needed

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"logits_in_training={self.logits_in_training}"

    def forward(self, hidden: Tensor) -> Tensor:
        placeholder = self._skip_logits or (self.training and self._loss_only and not self.logits_in_training)
        if placeholder:
            out = hidden.new_zeros((*hidden.shape[:-1], 0))
        else:
            out = self.head.log_prob(hidden)
        setattr(out, _HIDDEN_ATTR, hidden)
        return out

    def loss(self, logits: Tensor, labels: Optional[Tensor] = None, vocab_size: Optional[int] = None,
             num_items_in_batch: Union[Tensor, int, None] = None, ignore_index: int = -100,
             shift_labels: Optional[Tensor] = None, **kwargs) -> Tensor:
        r"""transformers' causal-LM loss, through the head: a drop-in for ``ForCausalLMLoss``.

        .. math::
            \text{loss} = \frac{1}{M} \sum_{t:\, y_{t+1} \ne -100} \ell_\text{head}(h_t, y_{t+1})

        with M the number of such positions, or ``num_items_in_batch`` when given (then the sum is
        divided by it, as transformers does for gradient accumulation). ``ell`` is the head's
        training objective in train mode and the exact NLL in eval mode.

        Args:
            logits: what this adapter returned (it carries the hidden states).
            labels: ``[B, T]`` token ids, ``-100`` ignored (shifted here), or None with ``shift_labels``.
            vocab_size: the model's vocabulary size (checked against the head's).
            num_items_in_batch: the divisor transformers' ``Trainer`` passes for accumulated batches.
            ignore_index: the ignored label value of ``labels`` (default -100).
            shift_labels: already shifted ``[B, T]`` labels (transformers passes them under context
                parallelism); used instead of shifting ``labels``.

        Shape:
            - logits: :math:`(B, T, V)` or :math:`(B, T, 0)`; labels: :math:`(B, T)`; output: scalar.

        Examples::

            >>> adapter = BigSoftmaxLMHead(bigsoftmax.heads.FullSoftmax(8, 50)).eval()
            >>> loss = adapter.loss(adapter(torch.randn(2, 5, 8)), torch.randint(0, 50, (2, 5)))
        """
        hidden = getattr(logits, _HIDDEN_ATTR, None)
        if hidden is None:
            raise RuntimeError("BigSoftmaxLMHead.loss got logits that did not come straight from the adapter "
                               "(the model transformed lm_head's output before its loss); this architecture is "
                               "not supported by replace_lm_head")
        if vocab_size is not None and vocab_size != self.head.num_classes:
            raise ValueError(f"vocab_size={vocab_size} (the model's) differs from head.num_classes="
                             f"{self.head.num_classes}")
        if shift_labels is None:
            if labels is None:
                raise ValueError("loss needs labels or shift_labels")
            shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        shift_labels = shift_labels.to(hidden.device).long()
        if ignore_index != self.head.ignore_index:
            shift_labels = shift_labels.masked_fill(shift_labels == ignore_index, self.head.ignore_index)
        if num_items_in_batch is None:
            return self.head(hidden, shift_labels)
        prev = self.head.reduction
        self.head.reduction = "sum"
        try:
            total = self.head(hidden, shift_labels)
        finally:
            self.head.reduction = prev
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch


# ----------------------------------------------------------------- model hooks (stateless: they read module.lm_head)
def _labels_given(module: nn.Module, args, kwargs) -> bool:
    if kwargs.get("labels") is not None or kwargs.get("shift_labels") is not None:
        return True
    if args:
        params = list(inspect.signature(module.forward).parameters)
        if "labels" in params:
            i = params.index("labels")
            return len(args) > i and args[i] is not None
    return False


def _pre_forward(module, args, kwargs):
    adapter = getattr(module, "lm_head", None)
    if isinstance(adapter, BigSoftmaxLMHead):
        adapter._loss_only = _labels_given(module, args, kwargs)
    return None


def _post_forward(module, args, kwargs, output):
    adapter = getattr(module, "lm_head", None)
    if isinstance(adapter, BigSoftmaxLMHead):
        adapter._loss_only = False
    return None


def _model_sizes(model: nn.Module):
    """(hidden size, vocabulary size) of the model's current output layer."""
    old = model.lm_head
    if isinstance(old, BigSoftmaxLMHead):
        return old.in_features, old.out_features
    if isinstance(getattr(old, "in_features", None), int) and isinstance(getattr(old, "out_features", None), int):
        return old.in_features, old.out_features
    cfg = model.config.get_text_config()
    return int(cfg.hidden_size), int(cfg.vocab_size)


def replace_lm_head(model: nn.Module, head: nn.Module, *, tie: Optional[bool] = None,
                    logits_in_training: bool = False) -> nn.Module:
    r"""Make a bigsoftmax ``head`` the output layer of a transformers causal LM, in place.

    .. math::
        p_\text{model}(x_{t+1} \mid x_{\le t}) = p_\text{head}(x_{t+1} \mid h_t(x_{\le t}))

    Afterwards ``model(input_ids, labels=labels).loss`` is the head's training objective over HF's
    shifted labels (``-100`` ignored; ``num_items_in_batch`` honoured) in train mode and the exact
    NLL in eval mode; ``outputs.logits`` and ``generate()`` use the head's exact log-probabilities.

    Tying (``tie``): ``None`` follows ``model.config.tie_word_embeddings`` when the head can tie
    (:func:`can_tie`) and warns when the config asks for tying but the head cannot (tree/adaptive
    heads); ``True`` ties ``head.weight`` to the input embedding (the same Parameter object, which
    then gets gradients from both uses) or raises ``ValueError`` for a head that cannot; ``False``
    keeps the head's own parameters. ``config.tie_word_embeddings`` and the model's tied-weight
    keys are updated to match.

    Args:
        model: a transformers causal LM with an ``lm_head`` (e.g. ``GPT2LMHeadModel``,
            ``LlamaForCausalLM``).
        head: a bigsoftmax head with ``in_features`` = the hidden size, ``num_classes`` = the
            vocabulary size, ``ignore_index=-100`` and ``reduction='mean'``.
        tie: tie the head's class matrix to the input embeddings (None: as the config says).
        logits_in_training: see :class:`BigSoftmaxLMHead`.

    Returns:
        ``model`` (modified in place; ``model.lm_head`` is the :class:`BigSoftmaxLMHead`).

    Shape:
        - ``head.weight`` (when tied): :math:`(V, d)`, the input embedding matrix.

    Examples::

        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100, n_positions=32))
        >>> model = replace_lm_head(model, bigsoftmax.heads.SampledSoftmax(16, 100, num_sampled=20, seed=0))
        >>> model.lm_head.head.weight is model.get_input_embeddings().weight  # GPT-2 ties by default
        True
        >>> x = torch.randint(0, 100, (2, 10))
        >>> model(x, labels=x).loss.backward()
    """
    check_causal_lm(model)
    if not isinstance(head, nn.Module) or not all(hasattr(head, a) for a in ("log_prob", "in_features",
                                                                              "num_classes")):
        raise TypeError(f"head must be a bigsoftmax head (bigsoftmax.heads.*), got {type(head).__name__}")
    if tie is not None and not isinstance(tie, bool):
        raise TypeError(f"tie must be None, True or False, got {tie!r}")
    hidden_size, vocab_size = _model_sizes(model)
    check_lm_head_fit(head, hidden_size, vocab_size)
    config = model.config
    emb = model.get_input_embeddings()
    emb_w = getattr(emb, "weight", None)
    rows = _class_rows_name(head)
    tieable = rows is not None and isinstance(emb_w, nn.Parameter) and tuple(emb_w.shape) == (vocab_size, hidden_size)
    want = bool(getattr(config, "tie_word_embeddings", False)) if tie is None else tie
    if want and not tieable:
        why = (f"{type(head).__name__} has no [V={vocab_size}, d={hidden_size}] class matrix `weight`"
               if rows is None else f"the input embedding is not a [{vocab_size}, {hidden_size}] Parameter")
        if tie:
            raise ValueError(f"tie=True but the head cannot be tied to the input embeddings: {why}")
        warnings.warn(f"config.tie_word_embeddings=True but {why}: the head keeps its own parameters and "
                      f"config.tie_word_embeddings is set to False", UserWarning, stacklevel=2)
        want = False
    if want:
        if emb_w.dtype != head.weight.dtype or emb_w.device != head.weight.device:
            raise ValueError(f"cannot tie: the input embedding is {emb_w.dtype} on {emb_w.device}, the head's weight "
                             f"{head.weight.dtype} on {head.weight.device}; move the head first (head.to(...))")
        setattr(head, "weight", emb_w)  # the same Parameter object (a ClassRows head stores it in head.rows)
    adapter = BigSoftmaxLMHead(head, logits_in_training=logits_in_training)
    model.lm_head = adapter
    if hasattr(config, "tie_word_embeddings"):
        config.tie_word_embeddings = want
    emb_name = next((n for n, p in model.named_parameters(remove_duplicate=False)
                     if p is emb_w and not n.startswith("lm_head.")), None) if want else None
    model._tied_weights_keys = {f"lm_head.head.{rows}": emb_name} if want and emb_name else {}
    if hasattr(model, "get_expanded_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    model.loss_function = adapter.loss
    # the loss shifts labels: declare it, so the Trainer counts num_items_in_batch over labels[..., 1:]
    # (transformers derives loss_type from the class name: None for GPT2LMHeadModel, which over-counts by a row)
    model.loss_type = "ForCausalLM"
    if not getattr(model, "_bigsoftmax_hooked", False):
        model.register_forward_pre_hook(_pre_forward, with_kwargs=True)
        model.register_forward_hook(_post_forward, with_kwargs=True, always_call=True)
        model._bigsoftmax_hooked = True
    return model


# ----------------------------------------------------------------- exact perplexity
class Perplexity(NamedTuple):
    """Result of :func:`causal_lm_perplexity`: ``exp(nll)``, the mean NLL in nats, the tokens scored."""

    perplexity: float
    nll: float
    tokens: int


def _batches(data, attention_mask):
    if isinstance(data, Tensor):
        if data.dtype != torch.long or data.dim() not in (1, 2):
            raise ValueError(f"input_ids must be an int64 tensor [T] or [B, T], got {data.dtype} {tuple(data.shape)}")
        yield data.view(1, -1) if data.dim() == 1 else data, None, attention_mask
        return
    if attention_mask is not None:
        raise ValueError("attention_mask is only accepted with an input_ids tensor; put it in each batch dict")
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be an input_ids tensor or an iterable of tensors / dicts with 'input_ids', "
                        f"got {type(data).__name__}")
    for b in data:
        if isinstance(b, Tensor):
            yield from _batches(b, None)
        elif isinstance(b, dict) and isinstance(b.get("input_ids"), Tensor):
            x = b["input_ids"]
            yield (x.view(1, -1) if x.dim() == 1 else x), b.get("labels"), b.get("attention_mask")
        else:
            raise TypeError(f"each batch must be an input_ids tensor or a dict with an 'input_ids' tensor, "
                            f"got {type(b).__name__}")


@torch.no_grad()
def causal_lm_perplexity(model: nn.Module, data, *, attention_mask: Optional[Tensor] = None) -> Perplexity:
    r"""Exact perplexity of a causal LM over token sequences (HF's next-token shift).

    .. math::
        \text{ppl} = \exp\Big(-\frac{1}{M} \sum_{b, t:\, y_{b,t+1} \ne -100} \log p(y_{b,t+1} \mid x_{b, \le t})\Big)

    summed over all batches (M tokens in all). Runs ``model`` in eval mode (restoring its mode) so a
    bigsoftmax head gives its exact NLL (no ``[N, V]`` logits are formed for it); works for an
    unmodified transformers model as well (its own cross-entropy).

    Args:
        model: a transformers causal LM (after :func:`replace_lm_head` or not).
        data: an int64 ``input_ids`` tensor ``[B, T]`` (or ``[T]``), or an iterable (e.g. a
            ``DataLoader``) of such tensors or of dicts with ``input_ids`` and optional ``labels``
            (``-100`` ignored) and ``attention_mask`` (0 = padding, not scored).
        attention_mask: ``[B, T]`` mask for a tensor ``data`` (0 = padding, not scored).

    Returns:
        :class:`Perplexity` ``(perplexity, nll, tokens)``.

    Shape:
        - input_ids: :math:`(B, T)`; labels, attention_mask: :math:`(B, T)`.

    Examples::

        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100, n_positions=32))
        >>> model = replace_lm_head(model, bigsoftmax.heads.FullSoftmax(16, 100))
        >>> ppl, nll, n = causal_lm_perplexity(model, torch.randint(0, 100, (4, 12)))
        >>> n
        44
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a transformers causal LM (an nn.Module), got {type(model).__name__}")
    adapter = getattr(model, "lm_head", None)
    adapter = adapter if isinstance(adapter, BigSoftmaxLMHead) else None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        if adapter is not None:
            adapter._skip_logits = True
        for x, labels, mask in _batches(data, attention_mask):
            if labels is None:
                labels = x if mask is None else x.masked_fill(mask == 0, -100)
            n = int((labels[..., 1:] != -100).sum())
            if n == 0:
                continue
            out = model(input_ids=x, attention_mask=mask, labels=labels)
            total += float(out.loss.double()) * n
            count += n
    finally:
        if adapter is not None:
            adapter._skip_logits = False
        model.train(was_training)
    if count == 0:
        raise ValueError("data holds no token to score (every shifted label is -100 / padding, or data is empty)")
    nll = total / count
    return Perplexity(math.exp(nll), nll, count)

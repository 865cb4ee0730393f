"""bigsoftmax heads as the lm_head of tiny random transformers causal LMs (GPT-2, Llama), built from
local configs: loss/gradient parity with HF's own loss, tying, exact evaluation, generate(), save/load."""

from __future__ import annotations

import copy
import inspect
import os
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="optional extra 'transformers' not installed")

from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, LlamaConfig, LlamaForCausalLM  # noqa: E402

import bigsoftmax  # noqa: E402
from bigsoftmax import heads  # noqa: E402
from bigsoftmax.integrations import transformers as bst  # noqa: E402

V, D = 500, 32


def gpt2(dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=D, n_head=2, vocab_size=V, n_positions=64, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    return GPT2LMHeadModel(cfg).to(dtype)


def llama(dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, **kw)
    return LlamaForCausalLM(cfg).to(dtype)


def batch(seed=1, b=3, t=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (b, t), generator=g)
    labels = x.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[1, -3:] = -100  # padding at the end
    return x, labels


def full_from_lm_head(model, tie):
    lm = model.lm_head
    head = heads.FullSoftmax(D, V, bias=False).to(lm.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(lm.weight)
    return bst.replace_lm_head(copy.deepcopy(model), head, tie=tie)


def untied_if_structured(name):
    head = all_heads()[name]
    return head, (None if bst.can_tie(head) else False)  # GPT-2 asks for tying; tree/adaptive heads cannot


def all_heads():
    counts = torch.arange(V, 0, -1).double()
    return {
        "full": heads.FullSoftmax(D, V),
        "sampled": heads.SampledSoftmax(D, V, num_sampled=40, seed=0),
        "nce": heads.NCE(D, V, num_sampled=40, seed=0),
        "selfnorm": heads.SelfNormalizedSoftmax(D, V),
        "adaptive": heads.AdaptiveSoftmax(D, V, cutoffs=[50, 200]),
        "hierarchical": heads.HierarchicalSoftmax(D, counts),
    }


def test_importing_bigsoftmax_does_not_import_transformers():
    code = ("import sys, bigsoftmax, bigsoftmax.integrations, bigsoftmax.heads; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_full_softmax_head_matches_hf_loss_and_gradients(build, dtype, tol):
    ref = build(dtype)
    tied = bool(ref.config.tie_word_embeddings)
    model = full_from_lm_head(ref, tie=tied)
    x, labels = batch()
    ref.train(), model.train()
    if dtype == torch.float32:
        l_ref = ref(x, labels=labels).loss
    else:  # HF's ForCausalLMLoss casts logits to fp32 (logits.float()); the fp64 reference is its formula in fp64
        logits = ref(x).logits
        l_ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
        assert l_ref.dtype == torch.float64
    l_new = model(x, labels=labels).loss
    torch.testing.assert_close(l_new, l_ref, atol=tol, rtol=tol)
    l_ref.backward()
    l_new.backward()
    new = dict(model.named_parameters())
    n = 0
    for name, p in ref.named_parameters():
        q = new[name.replace("lm_head.weight", "lm_head.head.weight")]
        torch.testing.assert_close(q.grad, p.grad, atol=tol, rtol=tol, msg=name)
        n += 1
    assert n == len(new) and n > 10
    # and with the Trainer's num_items_in_batch (sum / count instead of the mean)
    k = torch.tensor(7)
    kept = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(model(x, labels=labels, num_items_in_batch=k).loss, l_ref.detach() * kept / 7,
                               atol=tol, rtol=tol)
    if dtype == torch.float32:
        torch.testing.assert_close(model(x, labels=labels, num_items_in_batch=k).loss,
                                   ref(x, labels=labels, num_items_in_batch=k).loss, atol=tol, rtol=tol)


def test_training_call_forms_no_full_logits_and_the_sampled_head_learns():
    model = bst.replace_lm_head(gpt2(), heads.SampledSoftmax(D, V, num_sampled=40, seed=0))
    x, labels = batch()
    model.train()
    out = model(x, labels=labels)
    assert out.logits.shape == (3, 12, 0)  # the [N, V] log-probs are skipped in a training call with labels
    assert model(x).logits.shape == (3, 12, V)  # without labels: exact log-probs (train mode too)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    before = model(x, labels=labels).loss.item()
    model.train()
    for _ in range(20):
        opt.zero_grad()
        model(x, labels=labels).loss.backward()
        opt.step()
    model.eval()
    assert model(x, labels=labels).loss.item() < before - 0.5
    # logits_in_training=True keeps the exact log-probs in training calls too
    m2 = bst.replace_lm_head(gpt2(), heads.SampledSoftmax(D, V, num_sampled=40, seed=0), logits_in_training=True)
    assert m2.train()(x, labels=labels).logits.shape == (3, 12, V)


def test_tied_parameter_is_the_embedding_and_gets_both_gradients():
    ref = gpt2()
    tied = bst.replace_lm_head(copy.deepcopy(ref), heads.SampledSoftmax(D, V, num_sampled=40, seed=0))
    emb = tied.get_input_embeddings().weight
    assert tied.lm_head.head.weight is emb and tied.config.tie_word_embeddings
    assert tied.all_tied_weights_keys == {"lm_head.head.weight": "transformer.wte.weight"}
    assert sum(p is emb for p in tied.parameters()) == 1
    # the same model untied, the head's rows starting from the embedding's values
    untied_head = heads.SampledSoftmax(D, V, num_sampled=40, seed=0)
    with torch.no_grad():
        untied_head.weight.copy_(emb)
    untied = bst.replace_lm_head(copy.deepcopy(ref), untied_head, tie=False)
    assert untied.lm_head.head.weight is not untied.get_input_embeddings().weight
    assert not untied.config.tie_word_embeddings and untied.all_tied_weights_keys == {}
    x, labels = batch()
    tied.train()(x, labels=labels).loss.backward()
    untied.train()(x, labels=labels).loss.backward()
    g_in, g_out = untied.get_input_embeddings().weight.grad, untied.lm_head.head.weight.grad
    assert g_in.abs().sum() > 0 and g_out.abs().sum() > 0
    torch.testing.assert_close(emb.grad, g_in + g_out, atol=1e-6, rtol=1e-5)
    # tie_weights() keeps both arrangements
    tied.tie_weights()
    untied.tie_weights()
    assert tied.lm_head.head.weight is tied.get_input_embeddings().weight
    assert untied.lm_head.head.weight is not untied.get_input_embeddings().weight


def test_llama_ties_when_asked():
    model = bst.replace_lm_head(llama(), heads.FullSoftmax(D, V, bias=False), tie=True)
    assert model.lm_head.head.weight is model.model.embed_tokens.weight
    assert model.config.tie_word_embeddings
    model.tie_weights()
    assert model.lm_head.head.weight is model.model.embed_tokens.weight


def test_structured_heads_cannot_tie():
    assert not bst.can_tie(heads.AdaptiveSoftmax(D, V, cutoffs=[50]))
    assert bst.can_tie(heads.NCE(D, V, num_sampled=5))
    with pytest.raises(ValueError, match="cannot be tied.*AdaptiveSoftmax"):
        bst.replace_lm_head(gpt2(), heads.AdaptiveSoftmax(D, V, cutoffs=[50]), tie=True)
    model = gpt2()
    with pytest.warns(UserWarning, match="tie_word_embeddings=True but HierarchicalSoftmax"):
        bst.replace_lm_head(model, heads.HierarchicalSoftmax(D, torch.ones(V)))
    assert not model.config.tie_word_embeddings and model.all_tied_weights_keys == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when the config does not ask for tying (Llama default)
        bst.replace_lm_head(llama(), heads.AdaptiveSoftmax(D, V, cutoffs=[50]))


def test_save_pretrained_and_reload(tmp_path):
    from safetensors.torch import load_file

    model = bst.replace_lm_head(gpt2(), heads.SampledSoftmax(D, V, num_sampled=40, seed=0)).eval()
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    assert "lm_head.head.weight" not in sd and "transformer.wte.weight" in sd  # tied: stored once
    cfg = GPT2Config.from_pretrained(tmp_path)
    assert cfg.tie_word_embeddings
    again = bst.replace_lm_head(GPT2LMHeadModel(cfg), heads.SampledSoftmax(D, V, num_sampled=40, seed=0)).eval()
    result = again.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["lm_head.head.rows.weight"]  # tied to wte
    x, _ = batch()
    torch.testing.assert_close(again(x).logits, model(x).logits)
    # an untied structured head saves its own parameters
    tree = bst.replace_lm_head(gpt2(), heads.AdaptiveSoftmax(D, V, cutoffs=[50]), tie=False)
    tree.save_pretrained(tmp_path / "tree")
    assert any(k.startswith("lm_head.head.") for k in load_file(tmp_path / "tree" / "model.safetensors"))


@pytest.mark.parametrize("name", list(all_heads()))
def test_eval_loss_logits_and_perplexity_are_exact(name):
    head, tie = untied_if_structured(name)
    model = bst.replace_lm_head(gpt2(), head, tie=tie).eval()
    x, labels = batch()
    with torch.no_grad():
        h = model.transformer(x).last_hidden_state
        lp = model.lm_head.head.log_prob(h)
        out = model(x, labels=labels)
    torch.testing.assert_close(torch.logsumexp(lp, -1), torch.zeros(3, 12), atol=1e-5, rtol=0)  # normalised
    torch.testing.assert_close(out.logits, lp)
    y = labels[:, 1:]
    keep = y != -100
    nll = -lp[:, :-1].gather(-1, y.clamp_min(0)[..., None])[..., 0][keep]
    torch.testing.assert_close(out.loss, nll.mean(), atol=1e-5, rtol=1e-5)
    if name == "full":  # the exact full log-softmax of the head's logits
        W, b = model.lm_head.head.weight, model.lm_head.head.bias
        torch.testing.assert_close(lp, torch.log_softmax(h @ W.T + b, -1), atol=1e-5, rtol=1e-5)
    model.train()
    ppl = bst.causal_lm_perplexity(model, [{"input_ids": x, "labels": labels}, x[:2]])
    assert model.training  # mode restored
    x2_nll = -lp[:2, :-1].gather(-1, x[:2, 1:, None])[..., 0]
    expect = torch.cat([nll, x2_nll.reshape(-1)])
    assert ppl.tokens == expect.numel() == int(keep.sum()) + 22
    assert ppl.nll == pytest.approx(expect.double().mean().item(), rel=1e-5)
    assert ppl.perplexity == pytest.approx(float(expect.double().mean().exp()), rel=1e-5)


def test_perplexity_matches_the_unmodified_model_and_masks_padding():
    ref = gpt2()
    model = full_from_lm_head(ref, tie=True)
    x, _ = batch()
    mask = torch.ones_like(x)
    mask[2, 8:] = 0
    a = bst.causal_lm_perplexity(ref, x, attention_mask=mask)
    b = bst.causal_lm_perplexity(model, x, attention_mask=mask)
    assert a.tokens == b.tokens == 3 * 11 - 4
    assert b.perplexity == pytest.approx(a.perplexity, rel=1e-5)
    loader = torch.utils.data.DataLoader([x[i] for i in range(3)], batch_size=2)  # batches of [2, T] and [1, T]
    c, d = bst.causal_lm_perplexity(model, loader), bst.causal_lm_perplexity(ref, x)
    assert c.tokens == d.tokens == 33 and c.perplexity == pytest.approx(d.perplexity, rel=1e-5)


@pytest.mark.parametrize("name", ["adaptive", "hierarchical", "sampled"])
def test_greedy_generate_is_argmax_of_the_exact_log_probs(name):
    head, tie = untied_if_structured(name)
    model = bst.replace_lm_head(gpt2(), head, tie=tie).eval()
    prompt = batch()[0][:2, :4]
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                         pad_token_id=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            h = model.transformer(seq).last_hidden_state[:, -1]
            nxt = model.lm_head.head.log_prob(h).argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_full_head_generates_like_the_unmodified_model(build):
    ref = build().eval()
    model = full_from_lm_head(ref, tie=bool(ref.config.tie_word_embeddings)).eval()
    prompt = batch()[0][:2, :5]
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, pad_token_id=0)
    assert torch.equal(model.generate(prompt, do_sample=False, **kw), ref.generate(prompt, do_sample=False, **kw))
    torch.manual_seed(3)
    a = ref.generate(prompt, do_sample=True, **kw)
    torch.manual_seed(3)
    b = model.generate(prompt, do_sample=True, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["adaptive", "hierarchical", "nce"])
def test_sampling_generate_runs_with_valid_ids_and_is_seeded(name):
    model = bst.replace_lm_head(llama(), all_heads()[name]).eval()
    prompt = batch()[0][:2, :3]
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=True, top_k=0, pad_token_id=0)
    torch.manual_seed(5)
    a = model.generate(prompt, **kw)
    torch.manual_seed(5)
    b = model.generate(prompt, **kw)
    assert a.shape == (2, 13) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    assert int(a.min()) >= 0 and int(a.max()) < V


def test_deepcopy_keeps_the_hooks_working_on_the_copy():
    model = bst.replace_lm_head(gpt2(), heads.SampledSoftmax(D, V, num_sampled=40, seed=0))
    twin = copy.deepcopy(model)
    assert twin.loss_function.__self__ is twin.lm_head
    x, labels = batch()
    assert twin.train()(x, labels=labels).logits.shape[-1] == 0
    assert twin(x).logits.shape[-1] == V
    # replacing again swaps the head (still tied), without a second pair of hooks
    bst.replace_lm_head(twin, heads.FullSoftmax(D, V))
    assert isinstance(twin.lm_head.head, heads.FullSoftmax) and twin.lm_head.head.weight is twin.transformer.wte.weight
    assert len(twin._forward_pre_hooks) == 1 and len(twin._forward_hooks) == 1
    assert twin.loss_function.__self__ is twin.lm_head
    assert twin.train()(x, labels=labels).logits.shape[-1] == 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="lm_head"):
        bst.replace_lm_head(GPT2Model(gpt2().config), heads.FullSoftmax(D, V))
    with pytest.raises(TypeError, match="model must be"):
        bst.replace_lm_head("gpt2", heads.FullSoftmax(D, V))
    with pytest.raises(ValueError, match=r"head.in_features=16 must equal the model's hidden size 32"):
        bst.replace_lm_head(gpt2(), heads.FullSoftmax(16, V))
    with pytest.raises(ValueError, match=r"head.num_classes=400 must equal the model's vocabulary size 500"):
        bst.replace_lm_head(llama(), heads.FullSoftmax(D, 400))
    with pytest.raises(ValueError, match="ignore_index=-1 must be -100"):
        bst.replace_lm_head(gpt2(), heads.FullSoftmax(D, V, ignore_index=-1))
    with pytest.raises(ValueError, match="reduction='sum' must be 'mean'"):
        bst.replace_lm_head(gpt2(), heads.FullSoftmax(D, V, reduction="sum"))
    with pytest.raises(TypeError, match="head must be a bigsoftmax head"):
        bst.replace_lm_head(gpt2(), torch.nn.Linear(D, V))
    with pytest.raises(TypeError, match="tie must be"):
        bst.replace_lm_head(gpt2(), heads.FullSoftmax(D, V), tie="yes")
    model = bst.replace_lm_head(gpt2(), heads.FullSoftmax(D, V))
    with pytest.raises(ValueError, match="int64 tensor"):
        bst.causal_lm_perplexity(model, torch.randn(2, 5))
    with pytest.raises(TypeError, match="iterable"):
        bst.causal_lm_perplexity(model, 5)
    with pytest.raises(ValueError, match="no token to score"):
        bst.causal_lm_perplexity(model, [])
    with pytest.raises(ValueError, match="vocab_size=7"):
        model.lm_head.loss(model.eval()(batch()[0]).logits, batch()[0], vocab_size=7)
    with pytest.raises(RuntimeError, match="did not come straight from the adapter"):
        model.lm_head.loss(torch.zeros(3, 12, V), batch()[0])


@pytest.mark.parametrize("obj", [bst.can_tie, bst.BigSoftmaxLMHead, bst.BigSoftmaxLMHead.loss, bst.replace_lm_head,
                                 bst.causal_lm_perplexity], ids=lambda o: o.__qualname__)
def test_docstring_examples_run(obj):
    doc = inspect.getdoc(obj)
    assert all(s in doc for s in ("Args:", "Shape:", "Examples::"))
    code = "\n".join(line.strip()[4:] for line in doc.split("Examples::", 1)[1].splitlines()
                     if line.strip().startswith((">>> ", "... ")))
    ns = dict(vars(bst), torch=torch, bigsoftmax=bigsoftmax)
    torch.manual_seed(0)
    exec(compile(code, f"<{obj.__qualname__} Examples>", "exec"), ns)


def test_trainer_passes_num_items_counted_over_shifted_labels(tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = bst.replace_lm_head(gpt2(), heads.SampledSoftmax(D, V, num_sampled=40, seed=0))
    seen = []
    loss = model.loss_function

    def recording(*args, **kwargs):
        seen.append(kwargs.get("num_items_in_batch"))
        return loss(*args, **kwargs)

    model.loss_function = recording
    x, labels = batch(b=4, t=10)
    data = [{"input_ids": x[i], "labels": labels[i]} for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    before = model.transformer.wte.weight.detach().clone()
    trainer.train()
    expect = int((labels[:, 1:] != -100).sum())  # the tokens the shifted loss predicts, over both micro-batches
    assert [int(n) for n in seen] == [expect, expect]
    assert not torch.equal(before, model.transformer.wte.weight)

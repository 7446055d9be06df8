"""The input embedding trained with sparse gradients and RowwiseAdamW (ftune.embedding_rows) gives the weights and
optimizer state of dense AdamW, also across a save and load of the optimizer's state; the classify Trainer uses it
where it applies and only there."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import invoke, read_json

CPU_ARGS = SimpleNamespace(device=SimpleNamespace(type="cpu"), world_size=1, torch_compile=False)


def _batches(steps: int, vocab: int):
    """Batches of 4 rows x 8 tokens, no token twice in a batch (so summing repeated gradients cannot differ in
    order between dense and sparse), with padding; the rows of the first batch are absent from the next two and
    come back in the fourth: those rows must go on moving on their moments alone."""
    import torch

    generator = torch.Generator().manual_seed(0)
    first = torch.randperm(vocab - 5, generator=generator)[:32] + 5
    others = torch.tensor([i for i in range(5, vocab) if i not in set(first.tolist())])
    batches = []
    for step in range(steps):
        pool = first if step in (0, 3) else others[torch.randperm(len(others), generator=generator)[:32]]
        ids = pool.view(4, 8).clone()
        mask = torch.ones_like(ids)
        ids[1, 6:], mask[1, 6:] = 0, 0  # [PAD] (the embedding's padding row) where masked
        ids[3, 3:], mask[3, 3:] = 0, 0
        batches.append((ids, mask, torch.tensor([0, 2, 1, 2])))
    return batches


def _model(tiny_bert):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3).eval()  # no dropout


def _optimizer(model, rowwise: bool, lr: float = 1e-2):
    import torch

    from ftune.embedding_rows import RowwiseAdamW, rowwise_adamw

    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": 0.0}], lr=lr, fused=True)
    if rowwise:
        optimizer = rowwise_adamw(model, optimizer, CPU_ARGS)
        assert isinstance(optimizer, RowwiseAdamW) and model.get_input_embeddings().sparse
    return optimizer


def _train(model, optimizer, batches, max_norm: float):
    import torch

    from ftune.embedding_rows import clip_grad_norm

    norms = []
    for ids, mask, labels in batches:
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        if model.get_input_embeddings().sparse:
            assert model.get_input_embeddings().weight.grad.is_sparse
            norms.append(clip_grad_norm(model.parameters(), max_norm))
        else:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return norms


def _assert_same_state(rowwise_state: dict, dense_state: dict, exact: bool):
    import torch

    assert rowwise_state["param_groups"] == dense_state["param_groups"]
    assert rowwise_state["state"].keys() == dense_state["state"].keys()
    for key, entry in dense_state["state"].items():
        assert rowwise_state["state"][key].keys() == entry.keys()
        for name, value in entry.items():
            if exact:
                assert torch.equal(rowwise_state["state"][key][name], value), (key, name)
            else:
                torch.testing.assert_close(rowwise_state["state"][key][name], value, rtol=1e-4, atol=1e-8)


def test_rowwise_adamw_gives_dense_adamws_weights_and_state_bit_for_bit(tiny_bert):
    import torch

    batches = _batches(5, vocab=read_json(tiny_bert / "config.json")["vocab_size"])
    dense, rowwise = _model(tiny_bert), _model(tiny_bert)
    initial = dense.get_input_embeddings().weight.detach().clone()
    dense_optimizer, rowwise_optimizer = _optimizer(dense, False), _optimizer(rowwise, True)
    dense_norms = _train(dense, dense_optimizer, batches, max_norm=1e6)  # no clipping: a multiply by exactly 1
    rowwise_norms = _train(rowwise, rowwise_optimizer, batches, max_norm=1e6)
    for (name, a), b in zip(dense.named_parameters(), rowwise.parameters()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(torch.stack(rowwise_norms), torch.stack(dense_norms), rtol=1e-6, atol=0)
    _assert_same_state(rowwise_optimizer.state_dict(), dense_optimizer.state_dict(), exact=True)
    used = torch.cat([ids.flatten() for ids, _, _ in batches]).unique()
    unused = torch.ones(len(initial), dtype=torch.bool)
    unused[used] = False
    weights = rowwise.get_input_embeddings().weight.detach()
    assert torch.equal(weights[unused], initial[unused])  # rows no batch used: untouched
    assert not torch.equal(weights[used[used > 0]], initial[used[used > 0]])


def test_rowwise_adamw_resumes_from_a_saved_state_as_if_never_stopped(tiny_bert):
    """After a load the rows that had gradients are read from the moments: the rows of the first batch, absent
    from the second and third, must still move after the state is loaded into a fresh optimizer."""
    import torch

    batches = _batches(5, vocab=read_json(tiny_bert / "config.json")["vocab_size"])
    whole = _model(tiny_bert)
    whole_optimizer = _optimizer(whole, True)
    _train(whole, whole_optimizer, batches, max_norm=1.0)

    first = _model(tiny_bert)
    first_optimizer = _optimizer(first, True)
    _train(first, first_optimizer, batches[:2], max_norm=1.0)
    saved_weights, saved_state = first.state_dict(), first_optimizer.state_dict()
    resumed = _model(tiny_bert)
    resumed.load_state_dict(saved_weights)
    resumed_optimizer = _optimizer(resumed, True)
    resumed_optimizer.load_state_dict(saved_state)
    _train(resumed, resumed_optimizer, batches[2:], max_norm=1.0)
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    _assert_same_state(resumed_optimizer.state_dict(), whole_optimizer.state_dict(), exact=True)


def test_clipped_sparse_gradients_are_clipped_as_dense_ones(tiny_bert):
    import torch

    batches = _batches(3, vocab=read_json(tiny_bert / "config.json")["vocab_size"])
    dense, rowwise = _model(tiny_bert), _model(tiny_bert)
    dense_optimizer, rowwise_optimizer = _optimizer(dense, False, lr=1e-4), _optimizer(rowwise, True, lr=1e-4)
    dense_norms = _train(dense, dense_optimizer, batches, max_norm=0.05)
    rowwise_norms = _train(rowwise, rowwise_optimizer, batches, max_norm=0.05)
    assert min(dense_norms) > 0.05  # every step clipped
    torch.testing.assert_close(torch.stack(rowwise_norms), torch.stack(dense_norms), rtol=1e-5, atol=0)
    for (name, a), b in zip(dense.named_parameters(), rowwise.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=3e-6, msg=name)  # the norms' rounding moves Adam a little


def test_rowwise_adamw_only_where_it_holds(tiny_bert, tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM

    from ftune.embedding_rows import rowwise_adamw

    def adamw(model, weight_decay=0.0, **options):
        return torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": weight_decay}],
                                 **{"fused": True, **options})

    model = _model(tiny_bert)
    assert rowwise_adamw(model, adamw(model, weight_decay=0.01), CPU_ARGS) is None  # decay moves unused rows
    assert rowwise_adamw(model, adamw(model, fused=False), CPU_ARGS) is None
    assert rowwise_adamw(model, adamw(model), SimpleNamespace(**{**vars(CPU_ARGS), "world_size": 2})) is None
    assert rowwise_adamw(model, adamw(model), SimpleNamespace(**{**vars(CPU_ARGS), "torch_compile": True})) is None
    gpu = SimpleNamespace(**{**vars(CPU_ARGS), "device": SimpleNamespace(type="cuda")})
    assert rowwise_adamw(model, adamw(model), gpu) is None
    assert not model.get_input_embeddings().sparse
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    assert rowwise_adamw(lm, adamw(lm), CPU_ARGS) is None  # tied to the output layer: its gradient is dense
    assert not lm.get_input_embeddings().sparse


@pytest.mark.parametrize("extra, used", [((), True), (("--weight-decay", "0.01"), False), (("--lora",), False)])
def test_classify_trains_the_embedding_rowwise_where_it_holds(extra, used, tiny_bert, tmp_path, monkeypatch):
    from ftune.embedding_rows import RowwiseAdamW

    steps = []
    original = RowwiseAdamW._step_rows

    def counted(self, group, p):
        steps.append(p.shape)
        return original(self, group, p)

    monkeypatch.setattr(RowwiseAdamW, "_step_rows", counted)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"text": "{word} movie number {i}", "label": "{label}"}}\n'
                            for i in range(24) for word, label in [(("great", "pos"), ("awful", "neg"))[i % 2]]))
    run = tmp_path / "run"
    result = invoke("classify", "--model", str(tiny_bert), "--data", str(data), "--output-dir", str(run),
                    "--epochs", "1", "--batch-size", "4", *extra)
    assert result.exit_code == 0, result
    state = read_json(run / "trainer_state.json")
    if used:
        assert state["global_step"] > 0 and len(steps) == state["global_step"]
        vocab = read_json(tiny_bert / "config.json")["vocab_size"]
        assert all(shape[0] == vocab for shape in steps)  # the word embedding's rows
        norms = [entry["grad_norm"] for entry in state["log_history"] if "grad_norm" in entry]
        assert norms and all(norm > 0 for norm in norms)  # logged from ftune's clipping
    else:
        assert steps == []

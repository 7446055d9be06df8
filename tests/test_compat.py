"""The private parts of transformers and datasets that ftune still relies on, named in one place.

Each is used where no public API serves. An upgrade that renames or reshapes one of them fails here, loudly, instead
of silently changing what a run computes (for example the grad-accumulation scaling returning as a bug).
"""

from __future__ import annotations

import inspect


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trainer_eval_sampler_hook():
    """FtuneTrainer keeps held-out rows in order by overriding it (group_by_length reorders evaluation batches)."""
    from transformers import Trainer

    assert _parameters(Trainer._get_eval_sampler) == ["self", "eval_dataset"]


def test_trainer_dataloader_hook():
    """The causal-LM trainer packs training batches through it, with these six arguments."""
    from transformers import Trainer

    assert _parameters(Trainer._get_dataloader) == [
        "self", "dataset", "description", "batch_size", "sampler_fn", "is_training", "dataloader_key"]


def test_trainer_prepare_inputs_and_prediction_step():
    """The lm and seq2seq prediction steps move the batch with `_prepare_inputs` and call the base step."""
    from transformers import Trainer

    assert _parameters(Trainer._prepare_inputs) == ["self", "inputs"]
    assert _parameters(Trainer.prediction_step)[:4] == ["self", "model", "inputs", "prediction_loss_only"]
    assert "ignore_keys" in _parameters(Trainer.prediction_step)


def test_trainer_reads_loss_is_scaled_for_ga():
    """FtuneTrainer sets `loss_is_scaled_for_ga = False` so a mean loss is divided by the accumulation steps; a
    release whose Trainer no longer reads the attribute would bring the N-times gradient back without an error."""
    from transformers import Trainer

    source = inspect.getsource(Trainer)
    assert "loss_is_scaled_for_ga" in source


def test_seq2seq_generation_helpers():
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from transformers.integrations.fsdp import is_fsdp_managed_module

    assert callable(is_deepspeed_zero3_enabled) and callable(is_fsdp_managed_module)


def test_datasets_internals():
    """ftune.data copies selected rows to a table of their own and fingerprints derived datasets."""
    import datasets
    from datasets.table import InMemoryTable, MemoryMappedTable

    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    assert isinstance(ds._fingerprint, str) and ds._fingerprint
    assert ds._indices is None
    assert ds.select([2, 0])._indices is not None
    assert isinstance(ds.data, InMemoryTable) and hasattr(ds.data, "table")
    assert callable(MemoryMappedTable.from_file)
    rows = InMemoryTable(ds.data.table.take([2, 0]))
    copy = datasets.Dataset(rows, info=ds.info.copy(), split=ds.split, fingerprint="f" * 32)
    assert copy["text"] == ["c", "a"] and copy._fingerprint == "f" * 32

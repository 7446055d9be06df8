"""The parts of transformers and datasets that ftune relies on beyond their documented API, named in one place.

Each private hook is used where no public API serves (the comment at each use says why); each behaviour checked here
is one a run's results depend on. An upgrade that renames, reshapes or stops calling one of them fails here, loudly,
instead of silently changing what a run computes (rows scored out of order, the grad-accumulation scaling returning
as a bug). The Trainers run on a two-parameter module, so the whole file takes a few seconds.
"""

from __future__ import annotations

import inspect

import pytest
import torch


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


class Scale(torch.nn.Module):
    """y = w * x + b with a mean squared error; its forward takes **kwargs, as transformers' models do."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.b = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, input_ids, labels=None, **kwargs):
        predicted = self.w * input_ids.float().mean(dim=-1) + self.b
        loss = ((predicted - labels.float()) ** 2).mean() if labels is not None else None
        return {"loss": loss, "logits": predicted}


def pad(features):
    """Pads input_ids with 0 (the lengths differ); labels stay one number per row."""
    longest = max(len(f["input_ids"]) for f in features)
    return {"input_ids": torch.tensor([f["input_ids"] + [0] * (longest - len(f["input_ids"])) for f in features]),
            "labels": torch.tensor([f["labels"] for f in features], dtype=torch.float32)}


def arguments(tmp_path, **overrides):
    from transformers import TrainingArguments

    settings = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                    per_device_train_batch_size=2, per_device_eval_batch_size=2, seed=0)
    return TrainingArguments(**{**settings, **overrides})


def rows(lengths: list[int]):
    """Rows whose label is their position, of the given lengths."""
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [[1 + i % 5] * n for i, n in enumerate(lengths)],
                                       "labels": list(range(len(lengths)))})


# --------------------------------------------------------------------------------------------------
# Trainer


def test_the_eval_and_test_loaders_keep_the_rows_in_order_through_the_eval_sampler_hook(tmp_path):
    """FtuneTrainer overrides `_get_eval_sampler` (transformers groups evaluation batches by length too, and ftune
    pairs each prediction with its row by position): both public loaders must still build through it."""
    from transformers import Trainer

    from ftune.trainers import FtuneTrainer

    assert _parameters(Trainer._get_eval_sampler) == ["self", "eval_dataset"]
    held_out = rows([2, 40, 3, 31, 5, 60, 1, 22, 17, 4, 50, 9])
    trainer = FtuneTrainer(model=Scale(), args=arguments(tmp_path, train_sampling_strategy="group_by_length"),
                           data_collator=pad)
    for loader in (trainer.get_eval_dataloader(held_out), trainer.get_test_dataloader(held_out)):
        assert [int(label) for batch in loader for label in batch["labels"]] == list(range(len(held_out)))


def test_the_training_loader_collates_with_the_collator_in_place_when_it_is_built(tmp_path):
    """The causal-LM trainer packs training batches by setting the packing collator as `data_collator` while
    `get_train_dataloader` builds the loader (ftune.tasks.lm.trainer)."""
    from transformers import Trainer

    calls = []

    def packing(features):
        calls.append(len(features))
        return pad(features)

    trainer = Trainer(model=Scale(), args=arguments(tmp_path), train_dataset=rows([3, 4, 5, 6]), data_collator=pad)
    trainer.data_collator = packing
    loader = trainer.get_train_dataloader()
    trainer.data_collator = pad
    next(iter(loader))
    assert calls and set(calls) == {2}  # (accelerate's loader collates one batch ahead)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_mean_loss_is_divided_by_the_accumulation_steps(tmp_path, accumulation):
    """FtuneTrainer sets `loss_is_scaled_for_ga = False` (transformers 5.19+): its tasks' losses are a mean over
    the batch. Without it, or in a release that no longer reads it, transformers takes the loss of a model whose
    forward takes **kwargs for one already normalised by the batch's item count, and --grad-accum N multiplies the
    gradient by N with no error. One SGD step on 4 rows must move the weights alike in 1 batch of 4 or 2 of 2."""
    from ftune.trainers import FtuneTrainer

    assert FtuneTrainer.loss_is_scaled_for_ga is False
    model = Scale()
    args = arguments(tmp_path, per_device_train_batch_size=4 // accumulation, gradient_accumulation_steps=accumulation,
                     max_steps=1, learning_rate=0.01, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
                     max_grad_norm=0.0, train_sampling_strategy="sequential", logging_strategy="no")
    data = rows([1, 1, 1, 1]).map(lambda row: {"labels": 3 * row["labels"] + 2})
    FtuneTrainer(model=model, args=args, train_dataset=data, data_collator=pad).train()
    # By construction: every input is 1 + i, so the mean gradient of the squared error at w=1, b=0 is exact.
    xs, ys = [1.0, 2.0, 3.0, 4.0], [2.0, 5.0, 8.0, 11.0]
    grad_w = sum(2 * (x - y) * x for x, y in zip(xs, ys)) / 4
    grad_b = sum(2 * (x - y) for x, y in zip(xs, ys)) / 4
    assert model.w.item() == pytest.approx(1.0 - 0.01 * grad_w, rel=1e-5)
    assert model.b.item() == pytest.approx(0.0 - 0.01 * grad_b, rel=1e-5)


def test_the_prediction_step_is_called_as_the_lm_and_seq2seq_trainers_override_it():
    """Both replace `prediction_step` (public) and call the base one; generation syncs the ranks by itself under
    DeepSpeed ZeRO-3 or FSDP when `synced_gpus` is left unset (ftune.tasks.seq2seq.trainer leaves it unset)."""
    from transformers import GenerationMixin, Trainer

    assert _parameters(Trainer.prediction_step)[:4] == ["self", "model", "inputs", "prediction_loss_only"]
    assert "ignore_keys" in _parameters(Trainer.prediction_step)
    assert inspect.signature(GenerationMixin.generate).parameters["synced_gpus"].default is None
    assert "is_deepspeed_zero3_enabled() or is_fsdp_managed_module(self)" in inspect.getsource(
        inspect.getmodule(GenerationMixin))


def test_the_checkpoint_hooks():
    """FtuneTrainer overrides `_save_checkpoint`, the only place between a checkpoint's writing and the removal of
    the older ones (it suspends that; CheckpointMarker removes them with `rotate_checkpoints` once the new one is
    marked complete), and `get_resumed_dataloader` (nothing is left to train after a checkpoint of the last step).
    ftune.train saves a checkpoint through `_save_checkpoint` and the callbacks' `on_save` when a stop signal
    arrives after training."""
    from transformers import Trainer
    from transformers.trainer_callback import CallbackHandler
    from transformers.trainer_utils import rotate_checkpoints

    trainer_source = inspect.getsource(Trainer)
    assert _parameters(Trainer._save_checkpoint) == ["self", "model", "trial"]
    assert "self._save_checkpoint(model, trial)" in trainer_source
    assert "save_total_limit=self.args.save_total_limit" in inspect.getsource(Trainer._save_checkpoint)
    assert _parameters(rotate_checkpoints)[:4] == ["output_dir", "save_total_limit", "best_model_checkpoint",
                                                   "use_mtime"]
    assert _parameters(Trainer.get_resumed_dataloader) == ["self", "dataloader", "num_batches"]
    assert "self.get_resumed_dataloader(" in trainer_source
    assert _parameters(CallbackHandler.on_save)[:4] == ["self", "args", "state", "control"]


# --------------------------------------------------------------------------------------------------
# datasets


def test_datasets_internals(tmp_path):
    """ftune.data.tables reads a column through a selection in Arrow's code (`_indices`), copies selected rows to a
    table of their own (`InMemoryTable`, or an Arrow file read as a `MemoryMappedTable`) that a Dataset is made on,
    and fingerprints derived datasets (`_fingerprint`)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable, MemoryMappedTable

    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    assert isinstance(ds._fingerprint, str) and ds._fingerprint
    assert ds._indices is None
    selected = ds.select([2, 0])
    assert ds.data.column("text").take(selected._indices.column(0)).to_pylist() == ["c", "a"]
    assert ds.features.decode_column(["c", "a"], "text") == ["c", "a"]
    assert isinstance(ds.data, InMemoryTable)
    copy = datasets.Dataset(InMemoryTable(ds.data.table.take([2, 0])), info=ds.info.copy(), split=ds.split,
                            fingerprint="f" * 32)
    assert copy["text"] == ["c", "a"] and copy._fingerprint == "f" * 32
    path = tmp_path / "rows.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, ds.data.table.schema) as writer:
        writer.write_table(ds.data.table.take([1, 2]))
    mapped = datasets.Dataset(MemoryMappedTable.from_file(str(path)), info=ds.info.copy(), fingerprint="d" * 32)
    assert mapped["text"] == ["b", "c"]
    assert ds.add_column("n", [1, 2, 3], new_fingerprint="e" * 32)._fingerprint == "e" * 32

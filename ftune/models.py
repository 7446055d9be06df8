"""Where models come from, in one place: a Hub id, a local folder, a finished ftune run (full or LoRA), or a
local GGUF file — with their tokenizers and configurations, and one-line errors when they cannot be loaded.

GGUF files are read through transformers' GGUF support, which dequantises every tensor to float, so the model
trains like any other; the quantizer object and config entry it leaves behind would make transformers treat the
model as quantized (no full fine-tuning, a `quantization_config` in the saved config.json), so they are dropped
right after loading and runs save ordinary safetensors.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ftune.errors import UsageError
from ftune.hub import require_model


@dataclass(frozen=True)
class ModelSource:
    """A model as given to --model: `location` is what from_pretrained reads (a Hub id or a folder); `gguf` the
    absolute path of a GGUF file inside that folder, when the model is one."""

    name: str
    location: str
    gguf: Optional[str] = None
    merges_adapter: bool = False  # a LoRA run or adapter folder is its base model with the adapter merged in memory

    @classmethod
    def parse(cls, model: str, gguf_file: Optional[str] = None, *, merges_adapter: bool = False) -> "ModelSource":
        """A `.gguf` path, a folder plus `gguf_file`, or any other Hub id or folder; `merges_adapter`: a LoRA run
        (or adapter folder) is taken as its base model with the adapter merged in, instead of being refused."""
        path = Path(model).expanduser()
        if path.suffix.lower() == ".gguf":
            if gguf_file and Path(gguf_file).name != path.name:
                raise UsageError(f"--model {model} is already a .gguf file; drop --gguf-file {gguf_file}")
            if not path.is_file():
                raise UsageError(f"GGUF file {model} does not exist; check the path given to --model")
            return cls(model, str(path.resolve().parent), str(path.resolve()))
        if not gguf_file:
            return cls(model, model, merges_adapter=merges_adapter)
        file = Path(gguf_file).expanduser()
        file = file if file.is_absolute() else path / file
        if not file.is_file():
            raise UsageError(f"GGUF file {file} does not exist; --gguf-file names a .gguf file inside the --model "
                             "folder")
        return cls(model, str(file.resolve().parent), str(file.resolve()))

    @property
    def display_name(self) -> str:
        path = Path(self.name)
        name = path.name if path.exists() else self.name.split("/")[-1]
        return name.removesuffix(".gguf")

    def require(self) -> None:
        """Fail fast when the model is neither local nor reachable (see ftune.hub), or is only an adapter."""
        if self.gguf:
            return
        require_model(self.location)
        folder = Path(self.location).expanduser()
        if self.adapter_base() is not None:
            check_weights(folder)
            self.adapter_base().require()
            return
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            raise UsageError(f"{self.name} is a LoRA adapter, not a whole model; make one with `ftune merge "
                             f"{self.name} --output-dir MERGED` and pass MERGED to --model")
        if folder.is_dir():
            check_weights(folder)

    def adapter_base(self) -> Optional["ModelSource"]:
        """The base model of an adapter folder this source merges (`merges_adapter`), as recorded by peft in its
        adapter_config.json; None for any other model."""
        import json

        folder = Path(self.location).expanduser()
        adapter = folder / "adapter_config.json"
        if not self.merges_adapter or not adapter.is_file() or (folder / "config.json").is_file():
            return None
        try:
            base = json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{self.name}: its adapter_config.json does not name a base model ({_short(exc)}); "
                             "restore the file or retrain the run") from None
        if not base:
            raise UsageError(f"{self.name}: its adapter_config.json does not name a base model; merge it with "
                             f"`ftune merge {self.name} --output-dir MERGED` and pass MERGED to --model")
        return ModelSource.parse(str(base))

    def load_config(self):
        """The model's transformers configuration."""
        from transformers import AutoConfig

        self.require()
        if self.adapter_base() is not None:
            return self.adapter_base().load_config()
        try:
            if self.gguf:
                return AutoConfig.from_pretrained(self.location, gguf_file=self.gguf)
            return AutoConfig.from_pretrained(self.location)
        except Exception as exc:  # noqa: BLE001 — config readers (gguf, json) raise many types
            if self.gguf:
                raise UsageError(f"cannot read GGUF file {self.gguf}: {_short(exc)}; pass a GGUF model transformers "
                                 "supports") from None
            raise UsageError(f"cannot load the configuration of {self.name}: {_first_line(exc)}") from None

    def context_length(self, default: int = 1024) -> int:
        """The longest input the model's positions allow (its config's position limit)."""
        return context_of(self.load_config(), default)

    def load_tokenizer(self):
        """The model's tokenizer (fast when one exists), with a pad token so batches can be padded."""
        from transformers import AutoTokenizer

        self.require()
        if self.gguf:
            require_causal_lm(self.load_config(), f"GGUF file {self.gguf}")  # a clear error before the tokenizer's
        base = self.adapter_base()
        if base is not None and not (Path(self.location).expanduser() / "tokenizer_config.json").is_file():
            return base.load_tokenizer()  # an adapter saved without its tokenizer: the base model's
        try:
            kwargs = {"gguf_file": self.gguf} if self.gguf else {}
            tokenizer = AutoTokenizer.from_pretrained(self.location, **kwargs)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load a tokenizer from {self.name}: {_first_line(exc)}") from None
        if tokenizer.pad_token is None:
            # Decoder-only tokenizers (GPT-2, Llama) have none; padding is masked out, so EOS serves.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return tokenizer

    def load_model(self, auto_class: str, **kwargs: Any):
        """`AutoModelFor...from_pretrained` (a GGUF file dequantised), with a one-line error when it cannot be."""
        import transformers

        self.require()
        base = self.adapter_base()
        if base is not None:
            from peft import PeftModel

            # The adapter's weights added into the base's: a model like any other, whose name is the run it came from.
            model = PeftModel.from_pretrained(base.load_model(auto_class, **kwargs), self.location).merge_and_unload()
            model.name_or_path = self.name
            model.requires_grad_(True)  # peft loaded the base frozen
            return model
        if self.gguf:
            return _load_gguf(auto_class, self.location, self.gguf, self.load_config())
        cls = getattr(transformers, auto_class)
        try:
            return cls.from_pretrained(self.location, **kwargs)
        except pickle.UnpicklingError:
            # transformers reads .bin weights with torch.load(weights_only=True), which refuses anything but tensors.
            raise UsageError(f"model {self.name}: its pickled weights ({_pickles(Path(self.location))}) hold more than "
                             "tensors (a pickle that could run code when loaded), so ftune did not load them; use the "
                             "model saved as safetensors") from None
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc) or "Unrecognized model" in str(exc):
                raise UsageError(f"{self.name} cannot be loaded as {auto_class.removeprefix('AutoModelFor')}: "
                                 f"{_first_line(exc)}") from None
            raise
        except OSError as exc:
            raise UsageError(f"cannot load model {self.name}: {_first_line(exc)}") from None


def context_of(config, default: int = 1024) -> int:
    """The longest input a model configuration's positions allow, or `default` when it names none."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def require_causal_lm(config, where: str) -> None:
    """Raise UsageError unless `config` describes a decoder-only model AutoModelForCausalLM can build."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if getattr(config, "is_encoder_decoder", False) or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UsageError(f"{where} holds a {getattr(config, 'model_type', 'unknown')} model, which is not a causal "
                         "language model; ftune lm needs a decoder-only model (GPT-2, Llama, ...)")


def _load_gguf(auto_class: str, folder: str, file: str, config):
    """AutoModelForCausalLM from a GGUF file, dequantised to float32 and free of quantizer state."""
    from transformers import AutoModelForCausalLM

    if auto_class != "AutoModelForCausalLM":
        raise UsageError(f"{file} is a GGUF causal LM; fine-tune it with ftune lm")
    require_causal_lm(config, f"GGUF file {file}")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype="float32")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # quantizer, config entry, is_quantized flag
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._is_quantized = False
    # Recorded by peft as the adapter's base model: the file itself, so people see what to load.
    model.name_or_path = file
    return model


def load_run_model(run, **base_kwargs: Any):
    """The trained model of a finished run: its full weights, or its base model plus its LoRA adapter."""
    task = run.task
    if not run.is_lora:
        return ModelSource(str(run.path), str(run.path)).load_model(task.model_class, **base_kwargs)
    from peft import PeftModel

    check_weights(run.path)  # the adapter, before the base model is loaded
    base = task.model_source(run.config).load_model(task.model_class, **task.base_model_kwargs(run.state),
                                                    **base_kwargs)
    return PeftModel.from_pretrained(base, str(run.path))


MODEL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def check_weights(folder: Path) -> None:
    """Raise UsageError when the weights in a model folder or run cannot be what from_pretrained should read.

    A safetensors file is checked against its own header (it says how long the file is: a truncated, cut or
    overwritten file fails), and a sharded model's index against its shards. A run (a folder with ftune.yaml) must
    hold its weights as ftune wrote them, in safetensors: a pickled .bin where they should be means the folder was
    changed after training, and ftune does not load it. A model folder of someone else's may come with .bin weights
    only; transformers reads those with torch.load(weights_only=True), which loads tensors and nothing else.
    """
    import json

    from ftune.folders import CONFIG_FILE

    run = (folder / CONFIG_FILE).is_file()
    adapter = (folder / "adapter_config.json").is_file()
    whole = f"run {folder}" if run else f"model {folder}"
    expected = ADAPTER_WEIGHTS if adapter else MODEL_WEIGHTS
    has_safetensors = (folder / expected).is_file() or (not adapter and (folder / SHARD_INDEX).is_file())
    if run and not has_safetensors:
        pickles = _pickles(folder, adapter=adapter)
        if pickles:
            raise UsageError(f"{whole} holds {pickles} where ftune writes {expected}: ftune saves runs in "
                             "safetensors only, so the folder was changed after training, and ftune does not load "
                             f"pickled weights from a run; restore {expected} or retrain the run")
        kind = "adapter weights" if adapter else "model weights"
        raise UsageError(f"{whole} has no {kind} ({expected}); restore the file or retrain the run")
    index = folder / SHARD_INDEX
    if index.is_file() and not adapter:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{whole} is damaged: {index.name} is not a shard index ({_short(exc)}); "
                             f"{_restore(run)}") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise UsageError(f"{whole} is damaged: {index.name} names {', '.join(missing[:3])}, which "
                             f"{'is' if len(missing) == 1 else 'are'} not there; {_restore(run)}")
    for file in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem:
            raise UsageError(f"{whole} is damaged: {file.name} is truncated or corrupt ({problem}); {_restore(run)}")


def _safetensors_problem(file: Path) -> Optional[str]:
    """Why a safetensors file cannot be read (its header, and whether the file is as long as the header says), or
    None; reading the header maps the file, it does not load the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt"):
            return None
    except Exception as exc:  # noqa: BLE001 — SafetensorError, OSError ...: each a reason to name
        return _short(exc).removeprefix("Error while deserializing header: ")


def _pickles(folder: Path, adapter: bool = False) -> str:
    """The pickled PyTorch weight files in `folder` (of the adapter, or of the model), named for a message."""
    pattern = "adapter_model*.bin" if adapter else "pytorch_model*.bin"
    return ", ".join(p.name for p in sorted(folder.glob(pattern)))


def _restore(run: bool) -> str:
    return "restore the file or retrain the run" if run else "download or save the model again"


def load_run_tokenizer(run):
    """The tokenizer a run saved (a LoRA run keeps one beside its adapter)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(run.path))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the tokenizer of run {run.path}: {_first_line(exc)}; retrain the run or "
                         "restore its tokenizer files") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__

"""Precision, QLoRA and launch configuration; GPU paths carry the `gpu` marker and skip without a GPU."""

from __future__ import annotations

import pytest
import yaml

from ftune.accelerate_configs import config_path, config_problem, shipped
from ftune.config import resolve_config
from ftune.errors import UsageError
from ftune.tasks.classify import ClassifyOptions
from tests.conftest import read_json, run_cli_subprocess
from tests.test_classify import sentiment_rows, write_jsonl


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def test_precision_on_cpu(monkeypatch):
    import torch

    import ftune.precision
    from ftune.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ftune.precision, "cpu_has_bf16_matrix_units", lambda: False)
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr(ftune.precision, "cpu_has_bf16_matrix_units", lambda: True)
    assert resolve_precision("auto") == "bf16"  # AMX: bf16 matrix products, fp32 weights
    assert resolve_precision("bf16") == "bf16"  # CPU autocast supports bf16
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16")


def test_precision_auto_on_gpus(monkeypatch):
    import torch

    from ftune.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto") == "fp16"  # older GPUs: fp16 with loss scaling
    with pytest.raises(UsageError, match="does not support bf16"):
        resolve_precision("bf16")


def test_qlora_needs_lora():
    with pytest.raises(UsageError, match="add --lora"):
        resolve_config(ClassifyOptions, layers=[("flags", {"data": "x", "load_in_4bit": True})])


@pytest.mark.skipif("cuda_devices() > 0")
def test_qlora_on_cpu_is_a_clear_error(ftune, tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(20))
    result = ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run", "--lora",
                   "--load-in-4bit")
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", shipped())
def test_shipped_accelerate_configs_are_valid(name):
    data = yaml.safe_load(config_path(name).read_text())
    assert data["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    problem = config_problem(name)
    if cuda_devices() == 0 and name != "ddp":
        assert "this machine has none; on CPU use --accelerate-config ddp" in problem  # sharding needs GPUs
    else:
        assert problem is None or "pip install 'ftune[deepspeed]'" in problem


def test_shipped_configs_cover_the_strategies():
    assert {"ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"} <= set(shipped())
    fsdp = yaml.safe_load(config_path("fsdp").read_text())["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and fsdp["fsdp_reshard_after_forward"]
    assert yaml.safe_load(config_path("deepspeed-zero3").read_text())["deepspeed_config"]["zero_stage"] == 3


def test_bad_accelerate_configs(tmp_path):
    with pytest.raises(UsageError, match="shipped: ddp"):
        resolve_config(ClassifyOptions, layers=[("flags", {"data": "x", "accelerate_config": "nope"})])
    not_accelerate = tmp_path / "x.yaml"
    not_accelerate.write_text("learning_rate: 1\n")
    with pytest.raises(UsageError, match="not an accelerate config"):
        resolve_config(ClassifyOptions, layers=[("flags", {"data": "x", "accelerate_config": str(not_accelerate)})])


def test_launch_commands():
    from ftune.launch import launcher_command

    plain = resolve_config(ClassifyOptions, layers=[("flags", {"data": "x", "num_processes": 4})])
    assert launcher_command(plain)[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    fsdp = plain.replace(num_processes=2, accelerate_config="fsdp")  # resolving it checks for GPUs
    command = launcher_command(fsdp)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == str(config_path("fsdp"))
    assert command[command.index("--num_processes") + 1] == "2"


# ---- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.numerics
@pytest.mark.skipif("cuda_devices() < 1")
def test_bf16_training_on_gpu(ftune, tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(120))
    # 6 epochs, as tests/test_classify.py's full run: 3 learn this task on some seeds only.
    result = ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run",
                   "--epochs", "6", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32")
    assert result.exit_code == 0, result
    saved = yaml.safe_load((tmp_path / "run" / "ftune.yaml").read_text())
    assert saved["run"]["precision"] in ("bf16", "fp16")
    assert read_json(tmp_path / "run" / "eval_results.json")["eval_accuracy"] >= 0.8


@pytest.mark.gpu
@pytest.mark.skipif("cuda_devices() < 1")
def test_qlora_on_gpu(ftune, tiny_bert, tmp_path):
    pytest.importorskip("bitsandbytes")
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(60))
    result = ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run", "--lora",
                   "--load-in-4bit", "--max-steps", "6", "--batch-size", "8")
    assert result.exit_code == 0, result
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


@pytest.mark.gpu
@pytest.mark.skipif("cuda_devices() < 2")
def test_two_gpus(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(64))
    result = run_cli_subprocess("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run",
                                "--num-processes", "2", "--max-steps", "6", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(tmp_path / "run" / "train_results.json")["world_size"] == 2

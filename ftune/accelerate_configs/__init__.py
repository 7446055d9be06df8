"""Accelerate launch configurations shipped with ftune, selected with `--accelerate-config NAME|FILE`.

Each YAML here is an ordinary `accelerate config` file for one machine; `accelerate launch` reads it and
the Trainer picks the strategy (DDP, FSDP, DeepSpeed) up from the launch. For several machines, copy one,
set num_machines, machine_rank, main_process_ip and main_process_port, and pass the file (README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

CONFIG_DIR = Path(__file__).resolve().parent
REQUIRED_KEYS = ("compute_environment", "distributed_type")


def shipped() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_file: str) -> Path:
    """A shipped config by name, or the user's file."""
    candidate = CONFIG_DIR / f"{name_or_file}.yaml"
    return candidate if candidate.is_file() else Path(name_or_file).expanduser()


def config_problem(name_or_file: str) -> Optional[str]:
    """Why `name_or_file` cannot be used as an accelerate config, or None."""
    import yaml

    path = config_path(name_or_file)
    if not path.is_file():
        return (f"--accelerate-config {name_or_file}: no such shipped config or file (shipped: "
                f"{', '.join(shipped())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return f"--accelerate-config {path} is not valid YAML ({' '.join(str(exc).split())[:120]})"
    if not isinstance(data, dict) or any(key not in data for key in REQUIRED_KEYS):
        return f"--accelerate-config {path} is not an accelerate config (needs {', '.join(REQUIRED_KEYS)})"
    kind = data.get("distributed_type")
    if kind in ("FSDP", "DEEPSPEED") and not _gpus():
        name = "FSDP" if kind == "FSDP" else "DeepSpeed"
        return (f"--accelerate-config {name_or_file} shards the model over GPUs ({name}) and this machine has none; "
                "on CPU use --accelerate-config ddp or --num-processes N")
    if kind == "DEEPSPEED" and not _has("deepspeed"):
        return "--accelerate-config uses DeepSpeed, which is not installed: pip install 'ftune[deepspeed]'"
    return None


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None

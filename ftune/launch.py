"""`--num-processes N`: start N ranks of this same command through torchrun (torch.distributed.run).

The resolved configuration is written to a temporary YAML file and every rank reads it, so all ranks
run exactly the same configuration. On CPU the ranks use the gloo backend (note that
`accelerate launch --cpu --num_processes N` would silently start one process); on GPUs, one rank per
GPU with NCCL. Users who launch ftune themselves (`torchrun -m ftune ...`, `accelerate launch -m ftune
...`) skip this: inside a launch the ranks already exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ftune.errors import UsageError

# torchrun's own log lines (glog style: W1125 06:55:39.272000 12153 torch/...), not the ranks' output.
_LAUNCHER_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def inside_launch() -> bool:
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def maybe_relaunch(task_name: str, config, *, resume: bool, overwrite: bool, debug: bool,
                   extra_flags: Sequence[str] = ()) -> bool:
    """Run the command on `config.num_processes` ranks and wait; False when this process should train itself.
    `extra_flags` go on the ranks' command line (how they report, where rank 0 pushes the run)."""
    if inside_launch() or (config.num_processes <= 1 and not config.accelerate_config):
        return False
    import yaml

    with tempfile.TemporaryDirectory(prefix="ftune-launch-") as scratch:
        resolved = Path(scratch) / "config.yaml"
        resolved.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        command = launcher_command(config) + ["-m", "ftune", task_name, "--config", str(resolved)]
        command += ["--resume"] * resume + ["--overwrite"] * overwrite + ["--debug"] * debug + list(extra_flags)
        returncode = _run_filtered(command, _rank_environment(config.num_processes), debug)
    if returncode != 0:
        raise SystemExit(returncode)
    return True


def launcher_command(config) -> list[str]:
    """torchrun for plain multi-process runs; `accelerate launch` when an accelerate config is chosen."""
    if not config.accelerate_config:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={config.num_processes}"]
    from ftune.accelerate_configs import config_path

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(config_path(config.accelerate_config))]
    processes = config.num_processes if config.num_processes > 1 else _visible_gpus()
    if processes:
        command += ["--num_processes", str(processes)]
    return command


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _rank_environment(processes: int) -> dict[str, str]:
    env = dict(os.environ)
    # Share the cores between the ranks instead of every rank starting one thread per core.
    cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // processes)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _run_filtered(command: list[str], env: dict[str, str], debug: bool) -> int:
    """Run torchrun, passing the ranks' output through; without --debug, drop torchrun's own failure report
    (the failing rank has already printed its one-line `error:`) and print each error line once."""
    try:
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    except FileNotFoundError as exc:
        raise UsageError(f"cannot start the ranks: {exc}") from None
    seen_errors: set[str] = set()
    in_report = False
    usage_failure = False
    assert process.stderr is not None
    for line in process.stderr:
        if debug:
            sys.stderr.write(line)
            continue
        if "exitcode" in line and ": 2" in line:
            usage_failure = True
        if _LAUNCHER_LOG.match(line) or line.startswith("[W"):
            continue
        if line.startswith("Traceback") or "ChildFailedError" in line or "torch.distributed" in line or \
                line.startswith("===="):
            in_report = True
        if in_report:
            continue
        if line.startswith("error: "):
            if line in seen_errors:
                continue
            seen_errors.add(line)
        sys.stderr.write(line)
    returncode = process.wait()
    if returncode == 0:
        return 0
    return 2 if usage_failure else 1

"""`--num-processes N`: start N ranks of this same command through torchrun (torch.distributed.run).

The resolved configuration is written to a temporary YAML file and every rank reads it, so all ranks
run exactly the same configuration. On CPU the ranks use the gloo backend (note that
`accelerate launch --cpu --num_processes N` would silently start one process); on GPUs, one rank per
GPU with NCCL. Users who launch ftune themselves (`torchrun -m ftune ...`, `accelerate launch -m ftune
...`) skip this: inside a launch the ranks already exist.

A stop signal (SIGINT, SIGTERM, SIGUSR1) to this process is passed on to the ranks, which agree on a step, save a
checkpoint and exit (ftune.signals); this process waits for them and exits with the signal's code. torchrun is told
to pass SIGUSR1 on too (it would die of it) and to give the ranks time to save before it kills them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ftune.errors import SIGNAL_EXIT_CODES, RunInterrupted, UsageError

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
        returncode, forwarded, reported = _run_filtered(command, _rank_environment(config.num_processes), debug)
    if forwarded is not None and returncode != 0 and not reported:
        raise RunInterrupted(forwarded)  # the ranks stopped before they could say so: this process does
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


# torchrun passes these signals on to the ranks (its default lacks SIGUSR1, of which it would die), and waits this long
# for them to exit before it kills them: time to finish a step and write a checkpoint. (Environment variables, which a
# torchrun that predates them ignores.)
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
SHUTDOWN_TIMEOUT_S = 300


def _rank_environment(processes: int) -> dict[str, str]:
    env = dict(os.environ)
    # Share the cores between the ranks instead of every rank starting one thread per core.
    cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // processes)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PET_SIGNALS_TO_HANDLE", TORCHRUN_SIGNALS)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    return env


def _run_filtered(command: list[str], env: dict[str, str], debug: bool) -> tuple[int, Optional[int], bool]:
    """Run torchrun, passing the ranks' output through; without --debug, drop torchrun's own failure report
    (the failing rank has already printed its one-line `error:`) and print each error line once. A stop signal meanwhile
    goes to the ranks. Returns (the exit code, the signal passed on or None, whether a rank printed an error line)."""
    from ftune.signals import forwarding

    try:
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    except FileNotFoundError as exc:
        raise UsageError(f"cannot start the ranks: {exc}") from None
    seen_errors: set[str] = set()
    in_report = False
    rank_codes: list[int] = []
    signalled: list = []
    assert process.stderr is not None
    with forwarding(lambda signum: signalled.extend(_pass_on(process.pid, signum))) as forwarded:
        for line in process.stderr:
            code = _RANK_EXIT_CODE.search(line)
            if code:
                rank_codes.append(int(code.group(1)))
            if debug:
                seen_errors.update([line] if line.startswith("error: ") else [])
                sys.stderr.write(line)
                continue
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
        _wait_for(signalled)  # ranks torchrun stopped waiting for (it died of the signal) may still be saving
    return _exit_code(returncode, rank_codes, forwarded()), forwarded(), bool(seen_errors)


# A rank's exit code in torchrun's failure report ("exitcode  : 143 (pid: 1234)").
_RANK_EXIT_CODE = re.compile(r"exitcode\s*:\s*(-?\d+)")


def _exit_code(returncode: int, rank_codes: list[int], forwarded: Optional[int]) -> int:
    """This command's exit code: 0; the code of the signal that stopped the ranks (passed on by this process, or
    received by them); 2 when a rank found bad input; else 1."""
    if returncode == 0:
        return 0
    if forwarded is not None:
        return RunInterrupted(forwarded).exit_code
    stopped = [code for code in rank_codes if code in SIGNAL_EXIT_CODES.values()]
    if stopped:
        return stopped[0]
    return 2 if UsageError.exit_code in rank_codes else 1


def _pass_on(launcher: int, signum: int) -> list:
    """Send `signum` to the ranks (the launcher's children), or to the launcher while it has none yet; the processes
    signalled. Not through torchrun alone: a terminal's Ctrl-C has reached it already, and a second signal would cut
    its own wait for the ranks short."""
    import psutil

    try:
        targets = psutil.Process(launcher).children() or [psutil.Process(launcher)]
    except psutil.NoSuchProcess:
        return []
    for target in targets:
        try:
            target.send_signal(signum)
        except psutil.NoSuchProcess:
            pass
    return targets


def _wait_for(processes: list) -> None:
    import psutil

    psutil.wait_procs(processes, timeout=SHUTDOWN_TIMEOUT_S)

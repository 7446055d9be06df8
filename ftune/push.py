"""`ftune push RUN --repo ID [--export NAME]`: upload a finished run (or an export of it) to the Hugging Face Hub (and `--push-to-hub` on training commands).

What goes up is the run's top-level files: the model or adapter, the tokenizer, the model card (README.md) and its
pictures, ftune.yaml, split.json and the results (eval_results.json, eval_details.json, train_results.json,
trainer_state.json). What never does: ftune's markers and lock, temporary and staging files (hidden, or *.tmp),
folders (checkpoints, best-model/, evals/, tracker logs), eval_predictions.jsonl (it holds the held-out rows'
references: the user's data) and training_args.bin (a pickle; ftune.yaml holds the configuration).

`--export NAME` uploads an export of the run instead (ftune export: `RUN/exports/NAME`, e.g. onnx or onnx-int8): the
files of that folder, under the same rules (its README is the export's own, uploaded as it is).

Every refusal comes before anything is sent: an unfinished run, a bad repo id, the Hub offline or unreachable, no
token. `--dry-run` lists exactly the files that would be uploaded and sends nothing (offline and without a token
too). The token is huggingface_hub's (HF_TOKEN, or `hf auth login`); ftune never prints it, and scrubs anything
token-like from the Hub's error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ftune import console
from ftune.errors import RunFailed, UsageError
from ftune.rundir import EVAL_PREDICTIONS, MODEL_CARD, open_run

# Top-level files of a run that stay on this machine, and why.
LEFT_OUT = {
    EVAL_PREDICTIONS: "the held-out rows and their references are your data",
    "training_args.bin": "a pickle; ftune.yaml holds the configuration",
}

_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


@dataclass(frozen=True)
class HubTarget:
    """A checked place to push to: a valid repo id, the Hub reachable, a token at hand (never shown)."""

    repo: str
    private: bool
    token: str = field(repr=False)


def check_repo_id(repo: str, flag: str) -> None:
    """UsageError unless `repo` is a Hub model repo id (NAME or USER/NAME)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        reason = str(exc).split(":")[0].rstrip(".")
        raise UsageError(f"{flag} {repo!r} is not a Hub repo id ({reason}); pass USER/NAME, e.g. "
                         "jane/bert-reviews") from None


def hub_target_for(repo: str, *, private: bool, flag: str = "--repo") -> HubTarget:
    """Check everything a push needs except the run, without sending anything: the repo id, that the Hub can be
    reached, that there is a token. Raises UsageError saying what to do."""
    from ftune.hub import ensure_offline_if_unreachable, hub_endpoint, hub_offline

    check_repo_id(repo, flag)
    if hub_offline():
        raise UsageError("the Hugging Face Hub is switched off here (HF_HUB_OFFLINE is set); unset it to push, or "
                         "list what would be uploaded with ftune push RUN --repo ID --dry-run")
    if ensure_offline_if_unreachable():
        raise UsageError(f"the Hugging Face Hub ({hub_endpoint()}) cannot be reached; push when online, or list "
                         "what would be uploaded with ftune push RUN --repo ID --dry-run")
    token = _token()
    if not token:
        raise UsageError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN to a token with write "
                         "access")
    return HubTarget(repo=repo, private=private, token=token)


def _token() -> Optional[str]:
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as exc:  # noqa: BLE001 — e.g. a failed OIDC exchange: say so in one line
        raise UsageError(f"could not get a Hugging Face token ({_scrub(str(exc))}); log in with `hf auth login` "
                         "or set HF_TOKEN") from None


# --------------------------------------------------------------------------------------------------
# What goes up


def files_to_push(run_path: Path) -> list[Path]:
    """The run's files that a push uploads, sorted by name (see the module docstring for what is left out)."""
    return sorted(p for p in Path(run_path).iterdir() if _pushed(p))


def _pushed(path: Path) -> bool:
    return (path.is_file() and not path.is_symlink() and not path.name.startswith(".")
            and not path.name.endswith(".tmp") and path.name not in LEFT_OUT)


def left_out(run_path: Path) -> list[str]:
    """What a person might expect to go up and does not: the files of LEFT_OUT (with why) and folders."""
    found = []
    for path in sorted(Path(run_path).iterdir()):
        if path.name.startswith("."):
            continue  # ftune's markers, lock and staging: never anyone's to upload
        if path.name in LEFT_OUT:
            found.append(f"{path.name} ({LEFT_OUT[path.name]})")
        elif path.is_dir():
            found.append(f"{path.name}/")
    return found


def hub_model_card(text: str, run_path: Path, repo: str, base_model: str, trained_in: Optional[str] = None) -> str:
    """The run's model card (with its pictures) as the Hub should show it: the usage snippet loads the repo, not
    this machine's folder (where the run is now, or `trained_in`, its absolute --output-dir at training time), and a
    base model that is a local path is not claimed as the Hub's `base_model` (the Hub checks that field)."""
    folders = {str(Path(run_path).resolve())}
    if trained_in and Path(trained_in).is_absolute():
        folders.add(trained_in)
    for folder in folders:  # as the Python snippet quotes it
        text = text.replace(f'"{folder}"', f'"{repo}"')
    if _is_local(base_model):
        text = re.sub(r"(?m)^base_model: .*\n", "", text, count=1)
    return text


def _is_local(model: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(model).expanduser().exists():
        return True
    try:
        validate_repo_id(model)
        return False
    except HFValidationError:
        return True


def export_folder(run, name: str) -> Path:
    """The export `name` of the run (RUN/exports/NAME, written by ftune export), or UsageError naming those there
    are."""
    from ftune.export import EXPORTS_FOLDER
    from ftune.rundir import EXPORT_FILE

    exports = run.path / EXPORTS_FOLDER
    found = sorted(p.name for p in exports.iterdir() if (p / EXPORT_FILE).is_file()) if exports.is_dir() else []
    if name not in found:
        have = f"its exports are: {', '.join(found)}" if found else "it has none; make one with ftune export"
        raise UsageError(f"run {run.path} has no export {name!r} ({EXPORTS_FOLDER}/{name}); {have}")
    return exports / name


def _payload(run, path: Path, repo: str) -> bytes | str:
    if path.name == MODEL_CARD and path.parent == run.path:  # the run's model card (an export's README is its own)
        return hub_model_card(path.read_text(), run.path, repo, run.config.model, run.config.output_dir).encode()
    return str(path)


def _size(run, path: Path, repo: str) -> int:
    payload = _payload(run, path, repo)
    return len(payload) if isinstance(payload, bytes) else path.stat().st_size


def format_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


# --------------------------------------------------------------------------------------------------
# The command


def push_command(run_path: Path, repo: str, *, private: bool = False, dry_run: bool = False,
                 export: Optional[str] = None) -> None:
    """`ftune push`: list the files (and stop there with --dry-run), or check the Hub and the token and upload.
    `export`: push the run's export of that name instead of the run."""
    run = open_run(run_path)
    check_repo_id(repo, "--repo")
    folder = export_folder(run, export) if export else run.path
    target = None if dry_run else hub_target_for(repo, private=private)  # every refusal before any output
    files = files_to_push(folder)
    sizes = [_size(run, f, repo) for f in files]
    width = max(len(f.name) for f in files)
    listing = [f"  {f.name:<{width}}  {format_size(s):>9}" for f, s in zip(files, sizes)]
    skipped = left_out(folder)
    verb = "would push" if dry_run else "pushing"
    console.info(f"{verb} {len(files)} files ({format_size(sum(sizes))}) from {folder} to {repo} "
                 f"({'private' if private else 'public'}):")
    console.info("\n".join(listing))
    if skipped:
        console.info(f"left out: {', '.join(skipped)}")
    if dry_run:
        console.info("dry run: nothing was uploaded")
        return
    url = upload(run, files, target)
    console.final(f"pushed {folder} to {url}", repo=repo, url=url, files=[f.name for f in files])


def push_finished_run(run_path: Path, target: HubTarget) -> Optional[str]:
    """--push-to-hub: upload a run that has just finished (rank 0 only). A failure keeps the run and says how to
    push it again."""
    from ftune.distributed import is_main_process

    if not is_main_process():
        return None
    run = open_run(run_path)
    files = files_to_push(run.path)
    console.info(f"pushing {len(files)} files of {run.path} to {target.repo}")
    again = f"the run is saved in {run.path}; push it with ftune push {run.path} --repo {target.repo}"
    try:
        url = upload(run, files, target)
    except (UsageError, RunFailed) as exc:
        raise type(exc)(f"{exc}; {again}") from None
    console.event("pushed", f"pushed {run.path} to {url}", repo=target.repo, url=url, files=[f.name for f in files])
    return url


def upload(run, files: list[Path], target: HubTarget) -> str:
    """Create the repo if needed and upload `files` in one commit; returns the repo's URL.

    This is the one part of ftune that talks to the Hub; nothing reaches it in the tests (they run offline), so it
    is kept to the two calls huggingface_hub documents for it.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from ftune.hub import hub_endpoint

    api = HfApi(endpoint=hub_endpoint(), token=target.token)
    try:
        url = api.create_repo(target.repo, private=target.private, repo_type="model", exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=_payload(run, f, url.repo_id))
                      for f in files]
        api.create_commit(url.repo_id, operations, commit_message=f"ftune push: {run.path.name}",
                          repo_type="model")
    except Exception as exc:  # noqa: BLE001 — every failure of the Hub becomes one line without the token
        raise _upload_error(exc, target) from None
    return str(url)


def _upload_error(exc: Exception, target: HubTarget) -> Exception:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return UsageError("the Hugging Face Hub refused the token (HTTP 401); log in again with `hf auth login` or "
                          "set HF_TOKEN to a valid token with write access")
    if status == 403:
        return UsageError(f"the token may not write to {target.repo} (HTTP 403); use a token with write access to "
                          "that namespace, or push to a repo of your own")
    text = _scrub(" ".join(str(exc).split()), target.token) or type(exc).__name__
    return RunFailed(f"the upload to {target.repo} failed: {text}")


def _scrub(text: str, token: Optional[str] = None) -> str:
    """`text` without the token or anything that looks like one."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)

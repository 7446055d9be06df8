"""The board's JSON endpoints (a FastAPI `APIRouter`, mounted at /api): the runs, a run, its held-out rows, two runs
compared, a sweep, and "try it" through `ftune serve`'s predict endpoint code. The pages read only these.

Every answer is read from the run folders when it is asked for (a run's rows are kept in memory until their files
change, ftune.board.rows), so new and finishing runs appear without a restart. Errors are `ftune serve`'s error
objects (`{"error": {"message", "type", "code"}}`); see docs/board.md for each endpoint.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at runtime.
import json
import re
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ftune.board.compare import comparison, compared_rows
from ftune.board.index import BoardError, BoardIndex, BoardRun, run_json, sweep_folder, sweep_summary
from ftune.board.rows import DEFAULT_LIMIT, RowQuery, held_out_rows, query_rows
from ftune.board.sweeps import sweep_json
from ftune.folders import CONFIG_FILE
from ftune.rundir import EVAL_DETAILS, EVAL_RESULTS, MODEL_CARD, SPLIT_FILE
from ftune.runs import read_json_object, read_yaml_object

router = APIRouter()

FILE_SUFFIXES = {".png": "image/png", ".svg": "image/svg+xml", ".md": "text/markdown; charset=utf-8",
                 ".json": "application/json"}
TRAINER_STATE = "trainer_state.json"      # the Trainer's log history: the learning curves
PICTURE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")   # how the model card shows a picture


def board(request: Request) -> BoardIndex:
    return request.app.state.board


def _evaluation(request: Request) -> Optional[str]:
    return request.query_params.get("eval") or None


@router.get("/runs")
def runs(request: Request):
    return board(request).listing()


@router.get("/runs/{run_id:path}/rows")
def rows(run_id: str, request: Request):
    found = board(request).run(run_id)
    folder = found.folder(_evaluation(request))
    query = RowQuery.parse(dict(request.query_params))
    return query_rows(held_out_rows(found.open(), folder), query)


@router.get("/runs/{run_id:path}/files/{name}")
def run_file(run_id: str, name: str, request: Request):
    found = board(request).run(run_id)
    folder = found.folder(_evaluation(request))
    suffix = Path(name).suffix.lower()
    file = folder / name
    if "/" in name or name.startswith(".") or suffix not in FILE_SUFFIXES or not file.is_file() or file.is_symlink():
        raise BoardError(404, f"run {run_id} has no file {name!r} to show (pictures, the model card and JSON results "
                         f"directly in the run folder: {', '.join(FILE_SUFFIXES)})", "unknown_file")
    return FileResponse(file, media_type=FILE_SUFFIXES[suffix])


@router.get("/runs/{run_id:path}/inputs")
def inputs(run_id: str, request: Request):
    return request.app.state.tries.service(board(request).run(run_id)).describe()


@router.post("/runs/{run_id:path}/try")
async def try_run(run_id: str, request: Request):
    from ftune.serve.app import MAX_BODY_BYTES, TOO_LARGE

    found = board(request).run(run_id)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise BoardError(413, TOO_LARGE, "body_too_large")
    try:
        body = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoardError(400, f"the body is not valid JSON ({exc})", "invalid_json") from None
    return await request.app.state.tries.answer(found, body)


@router.get("/runs/{run_id:path}")
def run(run_id: str, request: Request):
    found = board(request).run(run_id)
    evaluation = _evaluation(request)
    folder = found.folder(evaluation)
    sweep = sweep_folder(found.path, found.root)
    index = board(request)
    summary = run_json(found.path, found.root, found.id, _sibling_id(index, found, sweep) if sweep else None)
    split = read_json_object(found.path / SPLIT_FILE)
    split.pop("indices", None)
    suffix = f"?eval={evaluation}" if evaluation else ""
    return {"run": summary, "evaluation": evaluation, "config": read_yaml_object(found.path / CONFIG_FILE),
            "metrics": read_json_object(folder / EVAL_RESULTS), "details": read_json_object(folder / EVAL_DETAILS),
            "pictures": pictures(folder, f"/api/runs/{found.id}/files", suffix),
            "curves": curves(_trainer_state(found.path)), "model_card": _read_text(found.path / MODEL_CARD),
            "split": split}


@router.get("/compare")
def compare(request: Request):
    (a, a_run), (b, b_run) = _pair(request)
    return comparison(a_run, b_run, _summary(request, a), _summary(request, b))


@router.get("/compare/rows")
def compare_rows(request: Request):
    (_, a_run), (_, b_run) = _pair(request)
    params = request.query_params
    try:
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise BoardError(400, "offset and limit are whole numbers", "bad_parameter") from None
    return compared_rows(a_run, b_run, params.get("which", "fixed"), offset, limit)


@router.get("/sweeps/{sweep_id:path}")
def sweep(sweep_id: str, request: Request):
    index = board(request)
    path, sweep_id = index.sweep(sweep_id)
    listing = index.listing()
    summary = next((s for s in listing["sweeps"] if s["id"] == sweep_id), None)
    if summary is None:   # a sweep with no trial run yet
        summary = sweep_summary(path, sweep_id)
    trial_ids = {Path(r["path"]).name: r["id"] for r in listing["runs"] if r["sweep"] == sweep_id}
    return sweep_json(path, sweep_id, summary, trial_ids)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def unknown(rest: str):
    raise BoardError(404, f"no endpoint /api/{rest}; see docs/board.md for the board's endpoints", "unknown_endpoint")


# ---- helpers --------------------------------------------------------------------------------------


def _pair(request: Request) -> list[tuple[BoardRun, Any]]:
    params = request.query_params
    missing = [name for name in ("a", "b") if not params.get(name)]
    if missing:
        raise BoardError(400, f"give both runs: ?a=RUN_ID&b=RUN_ID (missing {', '.join(missing)})", "bad_parameter")
    found = [board(request).run(params[name]) for name in ("a", "b")]
    return [(f, f.open()) for f in found]


def _summary(request: Request, found: BoardRun) -> dict[str, Any]:
    sweep = sweep_folder(found.path, found.root)
    return run_json(found.path, found.root, found.id, _sibling_id(board(request), found, sweep) if sweep else None)


def _sibling_id(index: BoardIndex, found: BoardRun, folder: Path) -> str:
    """The id of a folder under the same board folder as `found` (its sweep)."""
    return index.run_id(folder, index.folders.index(found.root))


def pictures(folder: Path, files_url: str, suffix: str) -> list[dict[str, str]]:
    """The pictures directly in `folder`, with the captions the model card gives them (else the file's name)."""
    captions = {file: caption for caption, file in PICTURE_LINK.findall(_read_text(folder / MODEL_CARD) or "")}
    found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".png", ".svg") and p.is_file()
                   and not p.is_symlink() and not p.name.startswith("."))
    return [{"file": name, "caption": captions.get(name) or Path(name).stem.replace("_", " "),
             "url": f"{files_url}/{name}{suffix}"} for name in found]


def _trainer_state(run: Path) -> Path:
    """The run's trainer_state.json; for a run still training, its newest complete checkpoint's (the curves so far)."""
    from ftune.folders import checkpoints, is_complete

    if (run / TRAINER_STATE).is_file():
        return run / TRAINER_STATE
    saved = [c for c in checkpoints(run) if is_complete(c) and (c / TRAINER_STATE).is_file()]
    return saved[-1] / TRAINER_STATE if saved else run / TRAINER_STATE


def curves(path: Path) -> dict[str, Any]:
    """The learning curves from the Trainer's log history: each logged figure as [[step, value], ...], the training
    figures apart from the evaluations (eval_*), and the epoch at each logged step."""
    history = read_json_object(path).get("log_history") or []
    found: dict[str, Any] = {"train": {}, "eval": {}, "epochs": []}
    for entry in history:
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        if isinstance(entry.get("epoch"), (int, float)):
            found["epochs"].append([step, entry["epoch"]])
        for name, value in entry.items():
            if name in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            side = "eval" if name.startswith("eval_") else "train"
            found[side].setdefault(name, []).append([step, value])
    return found


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None

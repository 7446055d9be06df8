"""`ftune sweep TASK`: a hyperparameter search on Optuna in which every trial is a complete ftune run.

    check the sweep's options, search space and metric -> plan the sweep folder (checks only) -> a study that
    already exists: check it was made by the same command -> the held-out split, made once, and every trial's
    configuration checked                                                  [nothing on disk has changed yet]
    -> claim the folder: split.json, sweep.yaml -> create or join the study -> alone in the folder: mark failed the
    trials its dead processes left running -> Optuna's study.optimize (ftune.sweep.search): each trial run in a
    process of its own (ftune.sweep.trial_runs), told, trials.jsonl and best.yaml rewritten, the weights of trials
    that are not the best dropped (--keep best) -> the table and sweep.png

The total counts trials that finish, complete or pruned, across every process working on the study; a failed trial's
place is taken by a new one. A grid sweep runs each combination once, in the order listed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from ftune import console
from ftune.config import TrainConfig, resolve_config
from ftune.errors import UsageError
from ftune.rundir import SPLIT_FILE
from ftune.runs import lower_is_better
from ftune.sweep import study as studies
from ftune.sweep.options import DEFAULT_TRIALS, RECIPE_FILE, SweepOptions
from ftune.sweep.search import Search
from ftune.sweep.space import Param, build_space, format_value, grid_points
from ftune.sweep.trial_runs import visible_gpus

SWEEP_KIND = "sweep"            # the kind in the sweep folder's .ftune-output marker


@dataclass
class Sweep:
    """A sweep, resolved and checked: what every trial needs."""

    task: Any
    base: TrainConfig               # the options every trial shares
    options: SweepOptions
    space: list[Param]
    metric: str                     # "eval_..."
    direction: str
    folder: Path
    storage_url: str
    study_name: str
    target: int                     # trials that finish (complete or pruned)
    grid: Optional[list[dict[str, Any]]] = None
    held_out: dict[str, Any] = field(default_factory=dict)   # split.json

    @property
    def split_seed(self) -> int:
        return self.base.seed if self.base.split_seed is None else self.base.split_seed

    def trial_config(self, params: dict[str, Any], output_dir: Optional[Path]) -> TrainConfig:
        """The configuration of one trial: the sweep's options, the trial's parameters (by flag name), the shared
        split's seed and the trial's folder. Raises UsageError when the combination is invalid."""
        fields = {p.field: params[p.key] for p in self.space if p.key in params}
        layers = [("the sweep's options", self.base.to_dict()), ("the trial's parameters", fields),
                  ("the sweep", {"split_seed": self.split_seed, "output_dir": str(output_dir) if output_dir else None})]
        return resolve_config(self.task.options_class, layers=layers)

    def meta(self) -> dict[str, Any]:
        """What the study records about the sweep, to refuse continuing or joining it with another command."""
        from ftune.data import HELD_OUT_FIELDS
        from ftune.train import NOT_RESULT_CHANGING

        searched = {p.field for p in self.space}
        skip = {*NOT_RESULT_CHANGING, *searched, "preprocessing_workers"}
        held_out = None
        if self.held_out:
            rows = json.dumps({k: self.held_out.get(k) for k in HELD_OUT_FIELDS}, sort_keys=True)
            held_out = hashlib.sha256(rows.encode()).hexdigest()
        return {"task": self.task.name, "params": {p.key: p.spec for p in self.space}, "metric": self.metric,
                "direction": self.direction, "sampler": self.options.sampler, "held_out": held_out,
                "options": {k: v for k, v in self.base.to_dict().items() if k not in skip}}


def run_sweep(task, config: TrainConfig, options: SweepOptions, *, resume: bool = False) -> Path:
    """Run (or continue) the sweep and return its folder. Bad input is refused before anything on disk changes."""
    started = time.monotonic()
    studies.require_optuna()
    sweep = resolve_sweep(task, config, options)
    continuing = plan_sweep_folder(sweep.folder, resume)
    storage = study = None
    if continuing or options.storage:  # a study may exist already: it must be this sweep's
        storage = studies.open_storage(sweep.storage_url)
        study = studies.find_study(storage, sweep.study_name)
        if study is not None:
            check_study(sweep, study, resume)
    sweep.held_out = make_held_out_split(sweep)
    if continuing:
        check_recorded_split(sweep)
    if study is not None:
        check_study(sweep, study, resume)  # now with the held-out rows
    gpus = visible_gpus() if options.jobs > 1 else []
    if gpus and options.jobs > len(gpus):
        raise UsageError(f"--jobs {options.jobs} but {len(gpus)} GPU(s): a trial runs on a GPU of its own; pass --jobs "
                         f"{len(gpus)} or less")

    claim = claim_sweep_folder(sweep, continuing)
    try:
        storage = storage or studies.open_storage(sweep.storage_url)
        if study is None:
            study, made = studies.create_study(storage, sweep.study_name, sweep.direction, sweep.meta())
            if not made:
                check_study(sweep, study, resume)
    except UsageError:
        if not continuing:
            claim.undo()
        raise
    study.sampler = studies.make_sampler(options.sampler, sweep.base.seed)
    study.pruner = studies.make_pruner(options.pruner)
    with studies.working_in(sweep.folder) as alone:
        # Alone in the folder: the trials its processes left running are dead (kill -9, a crash).
        for trial in studies.fail_abandoned_trials(study, sweep.folder) if alone else []:
            console.info(f"trial {trial.number} was interrupted: marked failed; a new trial takes its place")
        if sweep.grid:
            enqueue_grid(study, sweep)
        announce(sweep, study)
        search = Search(sweep, study, gpus, deadline=started + options.timeout if options.timeout else None)
        try:
            search.run()
        finally:
            search.refresh(draw_picture=True)
        search.summarise()
    return sweep.folder


# --------------------------------------------------------------------------------------------------
# Checks (nothing on disk changes)


def resolve_sweep(task, config: TrainConfig, options: SweepOptions) -> Sweep:
    """The sweep of a command: its space, metric, direction, folder, storage and total, each checked."""
    space = build_space(task.options_class, options.params)
    problems = []
    if config.num_processes > 1 or config.accelerate_config:
        problems.append("each trial runs as one process: drop --num-processes/--accelerate-config (run trials side "
                        "by side with --jobs)")
    if options.storage and not options.study_name:
        problems.append("--storage needs --study-name, the same on every machine that works on the study")
    grid = None
    if options.sampler == "grid":
        ranges = [p.key for p in space if p.choices is None]
        if ranges:
            problems.append(f"--sampler grid needs a list of choices for every parameter; {', '.join(ranges)} "
                            "has a range")
        else:
            grid = grid_points(space)
            if options.trials and options.trials > len(grid):
                problems.append(f"the grid has {len(grid)} combinations; pass --trials {len(grid)} or less")
    metric, direction = resolve_metric(task, config, options)
    if problems:
        raise UsageError("; ".join(problems))
    folder = Path(config.output_dir) if config.output_dir else default_sweep_dir(task, config)
    return Sweep(task=task, base=config.replace(output_dir=str(folder)), options=options, space=space,
                 metric=metric, direction=direction, folder=folder,
                 storage_url=options.storage or studies.default_storage_url(folder),
                 study_name=options.study_name or folder.resolve().name,
                 target=options.trials or (len(grid) if grid else DEFAULT_TRIALS), grid=grid)


def resolve_metric(task, config: TrainConfig, options: SweepOptions) -> tuple[str, str]:
    """("eval_NAME", "maximize"|"minimize"): the metric to optimise and its direction."""
    main, greater = task.best_metric(config)
    reported = task.metric_names(config)
    name = (options.metric or main).removeprefix("eval_")
    if name not in reported:
        raise UsageError(f"--metric {options.metric}: ftune {task.name} runs report "
                         f"{', '.join('eval_' + n for n in reported)}; pass one of them")
    if options.direction:
        return f"eval_{name}", options.direction
    better = greater if name == main else not lower_is_better(name)
    return f"eval_{name}", "maximize" if better else "minimize"


def default_sweep_dir(task, config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"sweep-{task.name}-{task.model_source(config).display_name}-{stamp}"


def plan_sweep_folder(folder: Path, resume: bool) -> bool:
    """True when `folder` holds a sweep to continue, False for a new one; UsageError when it may not be used."""
    from ftune.folders import output_kind, prepare_output_folder

    prepare_output_folder(folder, SWEEP_KIND)
    holds_sweep = output_kind(folder) == SWEEP_KIND
    if holds_sweep and not resume:
        raise UsageError(f"{folder} holds a sweep; pass --resume to continue it (a higher --trials adds trials) or "
                         "choose another --output-dir")
    return holds_sweep


def check_study(sweep: Sweep, study, resume: bool) -> None:
    """Refuse a study made by another command."""
    from ftune.config import default_of

    differs = studies.study_differences(study, sweep.meta(),
                                        lambda key: default_of(sweep.task.options_class, key))
    if differs:
        raise UsageError(f"{'--resume would continue' if resume else 'this command would join'} the sweep "
                         f"'{sweep.study_name}' with a different command: {'; '.join(differs)}; rerun with the "
                         f"sweep's options (its sweep.yaml), or start a new sweep with another --output-dir"
                         f"{' and --study-name' if sweep.options.storage else ''}")


def make_held_out_split(sweep: Sweep) -> dict[str, Any]:
    """The held-out split every trial scores, made once from the sweep's options (its data and rows checked), and
    every trial configuration the space allows checked at its ends; returns its split.json record."""
    from ftune.hub import ensure_offline_if_unreachable
    from ftune.train import load_held_out_split

    task, base = sweep.task, sweep.base
    ensure_offline_if_unreachable()
    task.model_source(base).require()
    columns, split = load_held_out_split(task, base)
    task.prepare_state(base, split, columns)
    tokenizer = task.load_tokenizer(base)
    task.check_input_length(base, tokenizer)
    for param in sweep.space:
        for value in param.values_to_check():
            try:
                config = sweep.trial_config({param.key: value}, output_dir=None)
                if config.max_length != base.max_length:
                    task.check_input_length(config, tokenizer)
            except UsageError as exc:
                raise UsageError(f"--param {param.key}={param.spec} allows {param.key}={format_value(value)}, which "
                                 f"is not valid here: {exc}") from None
    return split.record


def check_recorded_split(sweep: Sweep) -> None:
    from ftune.data import held_out_differences

    recorded = sweep.folder / SPLIT_FILE
    if not recorded.is_file():
        return  # the sweep stopped before recording it: it is recorded now
    differs = held_out_differences(sweep.held_out, json.loads(recorded.read_text()))
    if differs:
        raise UsageError(f"the held-out rows of {sweep.base.data} differ from the sweep's {recorded} "
                         f"({'; '.join(differs)}); the data changed since the sweep began: restore it, or start a new "
                         "sweep with another --output-dir")


# --------------------------------------------------------------------------------------------------
# The sweep folder and the study


def claim_sweep_folder(sweep: Sweep, continuing: bool):
    """Make the folder the sweep's (marker, split.json, sweep.yaml). A new sweep creates the marker exclusively: of
    two sweeps started into one new folder, the second is refused having changed nothing. Returns the claim, whose
    `undo` removes only what this command wrote."""
    from ftune.folders import SharedOutput
    from ftune.rundir import dumped_json

    claim = SharedOutput(sweep.folder, sweep.folder)
    if not continuing:
        claim.mark_new(SWEEP_KIND, task=sweep.task.name)
    claim.write(SPLIT_FILE, dumped_json(sweep.held_out) + "\n", replace=False)  # the first sweep's record stays
    claim.write(RECIPE_FILE, recipe_text(sweep))
    return claim


def recipe_text(sweep: Sweep) -> str:
    """sweep.yaml: the sweep's command as a recipe (its options, resolved, and its `sweep:` section)."""
    import yaml

    from ftune.config import RUN_INFO_KEY, SWEEP_KEY

    options = sweep.options
    section = {"params": {p.key: p.spec for p in sweep.space}, "trials": sweep.target, "metric": sweep.metric,
               "direction": sweep.direction, "sampler": options.sampler, "pruner": options.pruner,
               "jobs": options.jobs, "keep": options.keep, "timeout": options.timeout, "storage": options.storage,
               "study_name": sweep.study_name}
    header = (f"# ftune sweep {sweep.task.name} --config {sweep.folder / RECIPE_FILE}\n"
              "# This sweep's command, resolved; in its folder, --resume continues it (a higher --trials adds "
              "trials).\n")
    body = {**sweep.base.to_dict(), SWEEP_KEY: {k: v for k, v in section.items() if v is not None},
            RUN_INFO_KEY: {"task": sweep.task.name}}
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def enqueue_grid(study, sweep: Sweep) -> None:
    """Queue, in order, the grid's first `target` combinations that are neither queued, run nor running (an
    interrupted one is queued again)."""
    present = {t.user_attrs[studies.GRID_KEY] for t in study.get_trials(deepcopy=False)
               if studies.GRID_KEY in t.user_attrs and not studies.was_interrupted(t)}
    for index, params in enumerate(sweep.grid[:sweep.target]):
        if index not in present:
            study.enqueue_trial(params, user_attrs={studies.GRID_KEY: index})


def announce(sweep: Sweep, study) -> None:
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    split = sweep.held_out
    console.info(f"ftune sweep {sweep.task.name}: {sweep.target} trials ({done} finished) of {describe_space(sweep)}, "
                 f"{sweep.direction} {sweep.metric}; sampler {sweep.options.sampler}, pruner {sweep.options.pruner}, "
                 f"{sweep.options.jobs} at once")
    console.info(f"every trial scores the same {split['rows']:,} held-out rows ({split['method']}: "
                 f"{split['eval_split']}; {sweep.folder / SPLIT_FILE}); study '{sweep.study_name}' in "
                 f"{studies.safe_url(sweep.storage_url)}")


def describe_space(sweep: Sweep) -> str:
    return " ".join(f"{p.key}={p.spec}" for p in sweep.space)

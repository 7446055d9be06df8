"""`ftune predict RUN`: inference with a finished run, through the task's one predict path.

Inputs are the values of the task's own options (`--text`, `--question` ...; each task declares them) or the
rows of an --input file; the task's predict settings (e.g. `--num-beams`) override the run's options for this
call only. Predictions are JSON lines on stdout, or a .jsonl/.csv file: an existing one is replaced only with
--overwrite, and never the --input file or a file inside a folder ftune wrote (ftune.folders.plan_output_file).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from ftune import console
from ftune.errors import UsageError
from ftune.hub import ensure_offline_if_unreachable
from ftune.rundir import dumped_json, open_run, write_jsonl


def predict_run(run_path: Path, *, inputs: dict[str, list[str]], settings: dict[str, Any],
                input_file: Optional[Path], output: Optional[Path], batch_size: int,
                overwrite: bool = False) -> list[dict]:
    """Predict for the given inputs and write JSON lines (stdout) or a .jsonl/.csv file (`overwrite`: it may
    replace an existing file).

    `inputs` and `settings` hold the values of the predict options that were given, by flag
    (e.g. {"--text": ["..."]}, {"--num-beams": 2}); the run's task says which of them it takes.
    """
    ensure_offline_if_unreachable()
    run = open_run(run_path, exports=True)
    task = run.task
    input_names = {i.flag: i.name for i in task.predict_inputs}
    setting_keys = {s.flag for s in task.predict_settings}
    foreign = [flag for flag in [*inputs, *settings] if flag not in input_names and flag not in setting_keys]
    if foreign:
        takes = ", ".join([*input_names, *setting_keys]) or "only --input"
        raise UsageError(f"{', '.join(foreign)} does not apply to {task.name} runs; they take {takes}")
    if output is not None and output.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise UsageError(f"--output {output}: use a .jsonl or .csv file name")
    if output is not None:
        from ftune.folders import plan_output_file

        plan_output_file(output, overwrite=overwrite, inputs=[input_file])  # before the model loads
    if input_file is not None:
        if inputs:
            raise UsageError(f"give either --input FILE or {', '.join(inputs)}, not both")
        rows, names = read_input_file(input_file)
    else:
        rows = task.inputs_from_options(run.config, run.state, {input_names[f]: v for f, v in inputs.items()})
        names = [f"input {i + 1}" for i in range(len(rows))]
    config = predict_config(run, settings)
    with Predictor(run, batch_size=batch_size) as predictor:
        results = predictor.predict(rows, names, config)
    write_predictions(results, output, overwrite=overwrite, input_file=input_file)
    return results


def predict_config(run, settings: dict[str, Any]):
    """The run's configuration with the task's predict settings (by flag, e.g. {"--num-beams": 2}) put over its
    options for this call; UsageError naming each setting the option it overrides would refuse."""
    if not settings:
        return run.config
    from ftune.config import resolve_config

    task = run.task
    task.check_predict_settings(settings)
    setting_keys = {s.flag: s.key for s in task.predict_settings}
    overrides = {setting_keys[flag]: value for flag, value in settings.items()}
    return resolve_config(task.options_class, layers=[("ftune.yaml", run.config.to_dict()),
                                                      ("predict options", overrides)])


class Predictor:
    """A finished run (or an export of one) loaded once through its engine (ftune.engines: its tokenizer, its model)
    to predict for many calls through the task's one predict path (`Task.predict`). `ftune predict` makes one for its
    call; `ftune serve` keeps one for its life. One call at a time (ftune serve runs every batch on one thread).

    Use it as a context manager: the engine's scratch folder lives as long as the Predictor.
    """

    def __init__(self, run, *, batch_size: Optional[int]):
        from ftune.engines import open_engine

        self.run = run
        self.task = run.task
        self.engine = open_engine(run, batch_size=batch_size)
        self._scorers: dict[str, Any] = {}     # one per configuration: predict settings change the decoding
        self._by_object: dict[int, tuple] = {}  # id(config) -> (config, its scorer): no dump of the options a call

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._scorers.clear()
        self._by_object.clear()
        self.engine.close()

    def check_inputs(self, rows: list[dict], names: list[str], config=None) -> None:
        """UsageError naming the first row the task cannot predict for, as `predict` would raise it."""
        self.task.check_inputs(config or self.run.config, self.run.state, rows, names)

    def predict(self, rows: list[dict], names: list[str], config=None) -> list[dict]:
        """Each row with the task's prediction fields added; `config`: the run's with predict settings over it
        (`predict_config`), by default the run's own."""
        config = config or self.run.config
        return self.task.predict(config, self._scorer(config), self.tokenizer, self.run.state, rows, names)

    def _scorer(self, config):
        """The scorer of `config`, shared by equal configurations; found by the object itself when it comes again
        (the run's own, or one a server keeps per settings), without dumping its options."""
        known = self._by_object.get(id(config))
        if known is None or known[0] is not config:
            key = dumped_json(config.to_dict())
            if key not in self._scorers:
                self._scorers[key] = self.engine.scorer(config, phase="predicting")
            known = self._by_object[id(config)] = (config, self._scorers[key])
        return known[1]


def read_input_file(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a .csv/.tsv/.json/.jsonl/.parquet file as dicts, and how the user knows each row (its line)."""
    from ftune.data import load_source, require_regular

    require_regular(path, "--input", "a .csv, .tsv, .jsonl, .json or .parquet file")
    if not path.is_file():
        raise UsageError(f"--input {path} does not exist; pass a .csv, .tsv, .jsonl, .json or .parquet file")
    rows = [dict(row) for row in load_source(str(path))["train"]]
    suffix = path.suffix.lower()
    first_line = {".csv": 2, ".tsv": 2, ".jsonl": 1}.get(suffix)  # csv/tsv: line 1 is the header
    if first_line is not None and not _has_blank_lines(path):
        names = [f"{path.name} line {i + first_line}" for i in range(len(rows))]
    else:
        names = [f"{path.name} row {i + 1}" for i in range(len(rows))]
    return rows, names


def _has_blank_lines(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as handle:
        return any(not line.strip() for line in handle)


def write_predictions(results: list[dict], output: Optional[Path], *, overwrite: bool = False,
                      input_file: Optional[Path] = None) -> None:
    """JSON lines on stdout, or the --output file, written whole beside it and renamed in; checked again as it is
    written (the file may have appeared while the model predicted)."""
    if output is None:
        console.result_rows(results)
        return
    from ftune.folders import plan_output_file, write_output_file

    location = plan_output_file(output, overwrite=overwrite, inputs=[input_file])

    def write(path: Path) -> None:
        if output.suffix.lower() != ".csv":
            write_jsonl(path, results)
            return
        fields = list(dict.fromkeys(k for row in results for k in row))
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            for row in results:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})

    write_output_file(location, write, overwrite=overwrite, named=output)
    console.note(f"wrote {len(results)} predictions to {output}")

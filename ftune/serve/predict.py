"""`POST /v1/predict` and what `GET /v1/models/{id}` says a run takes: the rows and settings of a request checked
as `ftune predict` checks them, queued, batched with other requests' rows, and answered with the objects `ftune
predict` prints for the same rows (through `ftune.prediction.Predictor`, the task's one predict path).

A row holds the fields `ftune predict --input` reads for the run (its own column names), or is a bare string for a
run that reads one field. Settings are the task's predict settings by name (`num_beams` for `--num-beams`).
Requests share a batch when their settings and their rows' fields are the same; the task sorts a batch's rows by
length, and a row's answer does not depend on the rows beside it (ftune.tasks.base). A batch that fails is run
again one request at a time, so one request's bad row never fails another's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ftune.errors import UsageError
from ftune.serve.batching import Batcher, Job
from ftune.serve.errors import ApiError


def setting_name(flag: str) -> str:
    """The JSON name of a predict setting: its flag without dashes, e.g. --num-beams -> num_beams."""
    return flag.lstrip("-").replace("-", "_")


class PredictService:
    """The predict endpoint of one run (see the module docstring)."""

    def __init__(self, predictor, batcher: Batcher):
        self.predictor, self.batcher = predictor, batcher
        self.run, self.task = predictor.run, predictor.task
        self.input_fields = input_fields(self.task, self.run.config, self.run.state)
        self.settings = {setting_name(s.flag): s for s in self.task.predict_settings}

    def describe(self) -> dict[str, Any]:
        """What a row holds and which settings apply, for GET /v1/models/{id}."""
        info: dict[str, Any] = {
            "task": self.task.name,
            "input_fields": self.input_fields,
            "settings": {name: {"type": s.type.__name__, "help": s.help} for name, s in self.settings.items()},
        }
        labels = model_labels(getattr(self.predictor.engine, "model", None))
        if labels:
            info["labels"] = labels
        return info

    async def predict(self, body: Any) -> dict[str, Any]:
        rows, names, config = self.parse(body)
        fields = tuple(sorted({key for row in rows for key in row}))
        job = Job(key=(id(config), fields), rows=len(rows), run_batch=self._run_batch, payload=(rows, names, config))
        self.batcher.submit(job)
        try:
            return {"predictions": await asyncio.wrap_future(job.future)}
        except UsageError as exc:
            raise ApiError(422, str(exc), code="invalid_input", param="inputs") from None
        except asyncio.CancelledError:
            job.cancelled.set()
            raise

    def parse(self, body: Any) -> tuple[list[dict], list[str], Any]:
        """The request's rows (as `ftune predict --input` reads them), how each is named in errors, and the run's
        configuration with the settings over it; ApiError 422 naming the field at fault and what the run takes."""
        if not isinstance(body, dict):
            raise ApiError(422, f"the body must be a JSON object {self._shape()}", code="invalid_body")
        unknown = [key for key in body if key not in ("inputs", "settings", "model")]
        if unknown:
            raise ApiError(422, f"unknown field {', '.join(map(repr, unknown))}; the body is {self._shape()}",
                           code="unknown_field", param=unknown[0])
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(422, f"'inputs' must be a non-empty list of rows; {self._takes()}", code="missing_inputs",
                           param="inputs")
        rows, names = [], []
        for index, row in enumerate(inputs):
            name = f"inputs[{index}]"
            if isinstance(row, str) and len(self.input_fields) == 1:
                row = {self.input_fields[0]: row}
            if not isinstance(row, dict):
                raise ApiError(422, f"{name} is not a row; {self._takes()}", code="invalid_input", param=name)
            missing = [f for f in self.input_fields if f not in row]
            if missing and not self._readable(row, name):
                raise ApiError(422, f"{name} has no field {', '.join(map(repr, missing))}; {self._takes()}",
                               code="missing_field", param=f"{name}.{missing[0]}")
            rows.append(row)
            names.append(name)
        config = self._config(body.get("settings"))
        for row, name in zip(rows, names):
            try:
                self.predictor.check_inputs([row], [name], config)
            except UsageError as exc:
                raise ApiError(422, f"{exc}; {self._takes()}", code="invalid_input", param=name) from None
        return rows, names, config

    def _readable(self, row: dict, name: str) -> bool:
        """Whether the task reads the row although it lacks one of the input fields (NER also reads a list of
        words under the run's own column)."""
        try:
            self.predictor.check_inputs([row], [name])
        except UsageError:
            return False
        return True

    def _config(self, settings: Any):
        from ftune.prediction import predict_config

        if settings is None or settings == {}:
            return self.run.config
        if not isinstance(settings, dict):
            raise ApiError(422, f"'settings' must be an object; {self._settings_text()}", code="invalid_settings",
                           param="settings")
        by_flag = {}
        for name, value in settings.items():
            setting = self.settings.get(name)
            if setting is None:
                raise ApiError(422, f"settings.{name} does not apply to {self.task.name} runs; "
                               f"{self._settings_text()}", code="unknown_setting", param=f"settings.{name}")
            kinds = (int,) if setting.type is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ApiError(422, f"settings.{name} must be {'a whole number' if setting.type is int else 'a number'}"
                               f", not {value!r}", code="invalid_setting", param=f"settings.{name}")
            by_flag[setting.flag] = value
        try:
            config = predict_config(self.run, by_flag)
        except UsageError as exc:
            message = str(exc)
            for name, setting in self.settings.items():   # the API's names, not the command line's
                message = message.replace(setting.flag, f"settings.{name}")
            raise ApiError(422, message, code="invalid_setting", param="settings") from None
        return self._shared_config(config)

    def _shared_config(self, config):
        """One object per distinct configuration, so that requests with equal settings share batches."""
        from ftune.rundir import dumped_json

        known = self.__dict__.setdefault("_configs", {})
        return known.setdefault(dumped_json(config.to_dict()), config)

    def _run_batch(self, jobs: list[Job]) -> None:
        rows = [row for job in jobs for row in job.payload[0]]
        names = [name for job in jobs for name in job.payload[1]]
        config = jobs[0].payload[2]
        try:
            results = self.predictor.predict(rows, names, config)
        except Exception:  # noqa: BLE001 — one request's rows may be at fault: each runs alone
            if len(jobs) == 1:
                raise
            for job in jobs:
                try:
                    job.finish(self.predictor.predict(job.payload[0], job.payload[1], config))
                except Exception as exc:  # noqa: BLE001 — that request's answer
                    job.fail(exc)
            return
        start = 0
        for job in jobs:
            job.finish(results[start:start + job.rows])
            start += job.rows

    def _takes(self) -> str:
        shape = " or a bare string" if len(self.input_fields) == 1 else ""
        fields = ", ".join(repr(f) for f in self.input_fields)
        return f"a {self.task.name} row of this run holds {fields}{shape}"

    def _settings_text(self) -> str:
        names = ", ".join(self.settings) or "none"
        return f"the settings of {self.task.name} runs: {names}"

    def _shape(self) -> str:
        return '{"inputs": [ROW, ...], "settings": {...}}'


def input_fields(task, config, state) -> list[str]:
    """The fields of a row the run reads, found as `ftune predict` makes rows from its options: the keys of the row
    the task builds from one value of its first predict input, else of all of them (a pair, a question and its
    context)."""
    names = [item.name for item in task.predict_inputs]
    for given in (names[:1], names):
        try:
            rows = task.inputs_from_options(config, state, {name: ["text"] for name in given})
        except UsageError:
            continue
        return list(rows[0])
    return []


def model_labels(model) -> list[str]:
    """The labels a classifier or tagger predicts, from its configuration (none for regression or QA heads)."""
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {}
    if getattr(config, "problem_type", None) == "regression" or not id2label:
        return []
    head = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__  # a LoRA run too
    if not head.endswith(("SequenceClassification", "TokenClassification")):
        return []
    return [id2label[i] for i in sorted(id2label)]

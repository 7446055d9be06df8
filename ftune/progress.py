"""What a run reports while it trains and scores, through ftune.console.

transformers prints its own log dicts (ProgressCallback, PrinterCallback) between tqdm bars; `attach` takes those
callbacks off a Trainer and puts `ConsoleProgress` in their place: the training bar with the loss, learning rate
and ETA, one compact line per evaluation, and a bar while held-out rows are scored (plain lines or JSON events
where there is no terminal). `report_start` and `report_end` are the first and last things a training run says.

Imported only when a run starts (it imports transformers).
"""

from __future__ import annotations

from typing import Any, Optional

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from ftune import console

# Figures of the Trainer's logs that are bookkeeping, not results: left out of the compact lines.
_BOOKKEEPING = ("runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos")


def attach(trainer, scoring: str = "evaluating", best_metric: Optional[str] = None,
           greater_is_better: bool = True) -> None:
    """Replace the Trainer's own printing with ftune's. `scoring` names the phase of scoring rows ("evaluating",
    "predicting"); a trainer that generates text (`generates = True`) calls it "generating"."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    name = "generating" if getattr(trainer, "generates", False) else scoring
    trainer.add_callback(ConsoleProgress(name, best_metric, greater_is_better))


class ConsoleProgress(TrainerCallback):
    """Drives ftune.console from the Trainer's events (rank 0 prints; the console checks)."""

    def __init__(self, scoring: str, best_metric: Optional[str], greater_is_better: bool):
        self.scoring_name = scoring
        self.best_metric = best_metric if best_metric is None or best_metric.startswith("eval_") \
            else f"eval_{best_metric}"
        self.greater_is_better = greater_is_better
        self.best: Optional[float] = None
        self.training: Optional[console.Phase] = None
        self.scoring: Optional[console.Phase] = None
        self.first_step = 0

    # ---- training ---------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step  # above 0 when resumed
        self.training = console.Phase("training", state.max_steps, "steps", completed=state.global_step)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.training is not None:
            self.training.update(completed=state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.training is None or "loss" not in logs or any(k.startswith("eval_") for k in logs):
            return control  # evaluations are reported by on_evaluate; the Trainer's closing summary by ftune
        step, total = state.global_step, state.max_steps
        loss, lr, grad_norm = logs.get("loss"), logs.get("learning_rate"), logs.get("grad_norm")
        eta = self._eta(step, total)
        figures = [f"loss {loss:.4f}"] + ([f"lr {lr:.2e}"] if lr is not None else [])
        text = (f"step {step}/{total}  epoch {state.epoch or 0:.2f}  " + "  ".join(figures)
                + (f"  grad_norm {grad_norm:.3g}" if grad_norm is not None else "")
                + f"  {console.format_seconds(self.training.seconds)}"
                + (f", eta {console.format_seconds(eta)}" if eta is not None else ""))
        self.training.log("step", text, stats="  ".join(figures), step=step, max_steps=total,
                          epoch=state.epoch, loss=loss, learning_rate=lr, grad_norm=grad_norm,
                          elapsed_s=round(self.training.seconds, 2), eta_s=None if eta is None else round(eta, 1))
        return control

    def _eta(self, step: int, total: int) -> Optional[float]:
        done = step - self.first_step
        if done <= 0 or total <= 0:
            return None
        return self.training.seconds / done * max(total - step, 0)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training is not None:
            steps = state.global_step - self.first_step
            self.training.close(f"training: {steps:,} steps in {console.format_seconds(self.training.seconds)}",
                                steps=steps)
            self.training = None
        return control

    # ---- scoring ----------------------------------------------------------------------------------
    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.scoring is None:
            batches = len(eval_dataloader) if eval_dataloader is not None and hasattr(eval_dataloader, "__len__") \
                else None
            self.scoring = console.Phase(self.scoring_name, batches, "batches", summary=False)
        self.scoring.advance()
        return control

    def _close_scoring(self) -> None:
        if self.scoring is not None:
            self.scoring.close()
            self.scoring = None

    def on_predict(self, args, state, control, **kwargs):
        self._close_scoring()
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._close_scoring()
        metrics = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        best = self._is_best(metrics)
        console.event("eval", eval_line(metrics, state.global_step, state.max_steps, state.epoch, best,
                                        self.best_metric),
                      step=state.global_step, epoch=state.epoch, metrics=compact_metrics(metrics), best=best)
        return control

    def _is_best(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.best_metric) if self.best_metric else None
        if value is None:
            return False
        if self.best is None or (value > self.best if self.greater_is_better else value < self.best):
            self.best = value
            return True
        return False


def compact_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The results of an evaluation, without the Trainer's bookkeeping (runtime, samples per second, epoch)."""
    return {k: v for k, v in metrics.items() if not any(k.endswith(b) or k == b for b in _BOOKKEEPING)}


def eval_line(metrics: dict[str, Any], step: int, max_steps: int, epoch: Optional[float], best: bool,
              main_metric: Optional[str]) -> str:
    """One evaluation as one line: the main metric first, names without "eval_", 4 decimals."""
    figures = compact_metrics(metrics)
    ordered = sorted(figures, key=lambda k: k != main_metric)
    shown = "  ".join(f"{k.removeprefix('eval_')} {console.format_value(figures[k])}" for k in ordered)
    where = f"step {step}/{max_steps}" + (f"  epoch {epoch:.2f}" if epoch is not None else "")
    return f"eval  {where}  {shown}" + ("  (best so far)" if best else "")


# --------------------------------------------------------------------------------------------------
# The first and last things a training run says


def report_start(task, config, split, model, precision: str, world: int, target) -> None:
    """What is trained on what, how, and where it goes: two lines for people, the "start" event for scripts."""
    from ftune.lora import trainable_summary

    effective = config.batch_size * config.grad_accum * world
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    method = "LoRA" if config.lora else "full fine-tuning"
    text = (f"ftune {task.name}: {config.model} on {config.data} — {len(split.train):,} train rows, "
            f"{len(split.eval):,} held-out rows ({split.record['method']}: {split.record['eval_split']})\n"
            f"{method}: {trainable_summary(model)}; precision {precision}; effective batch {effective} = "
            f"{config.batch_size} per device x {world} process(es) x {config.grad_accum} accumulation; output "
            f"{target}")
    console.event("start", text, task=task.name, model=config.model, data=config.data, train_rows=len(split.train),
                  eval_rows=len(split.eval), held_out=split.record.get("method"),
                  method="lora" if config.lora else "full", trainable_parameters=trainable, parameters=total,
                  precision=precision, effective_batch_size=effective, processes=world, output_dir=str(target))


def report_end(target, evaluation, rows: int, train_metrics: Optional[dict[str, Any]]) -> None:
    """The held-out metrics table (also with --quiet), the task's extra tables, where the run is; JSON: "end"."""
    console.final(console.metrics_table(evaluation.metrics, title=f"held-out metrics ({rows:,} rows)"),
                  details=evaluation.table, closing=f"run saved to {target}", status="finished",
                  output_dir=str(target), metrics=evaluation.metrics, train=train_metrics)

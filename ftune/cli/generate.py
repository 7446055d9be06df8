"""`ftune generate`: text from a causal-LM or seq2seq model or run, streamed for a single prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune import console
from ftune.cli.common import Debug
from ftune.errors import UsageError


def generate_command(
    model: Annotated[str, typer.Option("--model", "-m", help="A run folder (full, LoRA or merged), a model folder "
                                       "or Hub id (causal LM or seq2seq), or a .gguf file.")],
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Prompt text (repeatable).")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts-file", help="Prompts, one per line (.txt) or "
                                                         "JSON lines with a \"prompt\" field (.jsonl).")] = None,
    gguf_file: Annotated[Optional[str], typer.Option("--gguf-file", help="GGUF file inside the --model "
                                                     "folder.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="0: greedy decoding; above 0 (finite): "
                                               "sample with this temperature.")] = 0.0,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling, above 0 and at most 1: keep "
                                                   "the smallest token set with this probability.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=0, help="Sample from the K likeliest tokens (0: "
                                                 "no limit).")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty", help="Above 0: above 1 "
                                                                "discourages repeats, 1 is none.")] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", min=1, help="Beam search width (1: none).")] = 1,
    num_return_sequences: Annotated[int, typer.Option("--num-return-sequences", min=1,
                                                      help="Texts per prompt.")] = 1,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Random seed: the same seed gives the "
                                                "same samples.")] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they are generated "
                                         "(a single prompt).")] = True,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap each prompt as a user turn in the chat "
                                       "template.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", help="Write JSON lines (prompt, sequence, "
                                                   "generation) to FILE.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per batch.")] = 8,
    engine: Annotated[str, typer.Option("--engine", metavar="transformers|llamacpp", help="llamacpp: run a .gguf "
                                        "file (or GGUF export folder) with llama.cpp (pip install "
                                        "'ftune[llamacpp]').")] = "transformers",
    debug: Debug = False,
) -> None:
    """Generate text from a causal-LM or seq2seq model or run: --prompt, --prompts-file; streams a single prompt."""
    from ftune.hub import ensure_offline_if_unreachable

    ensure_offline_if_unreachable()
    from ftune.generation import GenerationOptions, generate_texts, load_generation_model, read_prompts

    prompts = read_prompts(prompt or [], prompts_file)
    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                top_k=top_k, repetition_penalty=repetition_penalty, num_beams=num_beams,
                                num_return_sequences=num_return_sequences, seed=seed)
    options.check()
    streaming = stream and len(prompts) == 1 and num_return_sequences == 1 and num_beams == 1
    if engine not in ("transformers", "llamacpp"):
        raise UsageError(f"--engine {engine!r} is not an engine; choose transformers or llamacpp")
    if engine == "llamacpp":
        from ftune.engines.llamacpp import generate_with_llamacpp

        texts = generate_with_llamacpp(model, gguf_file, prompts, options, chat=chat, stream=streaming)
    else:
        loaded, tokenizer = load_generation_model(model, gguf_file)
        streamer = None
        if streaming:
            from ftune.generation import console_streamer

            streamer = console_streamer(tokenizer)
        texts = generate_texts(loaded, tokenizer, prompts, options, batch_size=batch_size, chat=chat,
                               streamer=streamer)
    rows = [{"prompt": p, "sequence": k, "generation": t} for p, ts in zip(prompts, texts) for k, t in enumerate(ts)]
    if output is not None:
        from ftune.rundir import write_jsonl

        output.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(output, rows)
        console.note(f"wrote {len(rows)} generation(s) to {output}")
    elif not streaming:
        if len(rows) == 1:
            console.result(rows[0]["generation"])
        else:
            console.result_rows(rows)

"""`stapo-eval`: evaluate a model on the paper's math benchmarks, or compare finished runs.

    stapo-eval --model Qwen/Qwen3-8B-Base                       # paper protocol, training decoding, all six
    stapo-eval --model outputs/stapo-1.7b --decoding justrl --benchmarks aime24 math500
    stapo-eval --model outputs/stapo-1.7b --n 4 --max_new_tokens 4096 --max_problems 50   # a quick look
    stapo-eval --compare runs/grpo/eval_results.json runs/stapo/eval_results.json
    stapo-eval --model outputs/stapo-1.7b --hub_model_id me/stapo-1.7b    # results into the Hub repo's card too

Also `python -m stapo_trl.evaluate`. See `stapo_trl.evaluation` for the files written and the resume rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import evaluation as ev
from . import hub

_OVERRIDE_FLAGS = {
    "benchmark_path": "path",
    "benchmark_split": "split",
    "benchmark_config": "config",
    "question_column": "question_column",
    "answer_column": "answer_column",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stapo-eval",
        description="avg@N evaluation on AIME24, AIME25, AMC23, MATH500, Minerva and OlympiadBench with the STAPO "
        "paper's protocol (avg@32 on AIME24/AIME25/AMC23, avg@4 on the others, 20480 new tokens), or a "
        "side-by-side comparison of finished runs (--compare).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("model and output")
    run.add_argument("--model", help="Hub id or local path of the model to evaluate.")
    run.add_argument("--revision", help="Hub revision (branch, tag or commit); the commit used is recorded.")
    run.add_argument(
        "--output_dir",
        help="Where samples and results go; re-running with the same directory resumes. Default: "
        "<model>/eval/<decoding> for a local model, eval_runs/<org--name>/<decoding> for a Hub model.",
    )
    run.add_argument("--run_name", help="Label of this run in tables (default: model name and decoding).")
    run.add_argument(
        "--push_to_hub",
        action="store_true",
        help="Add the results to the model card of the Hub repository (--hub_model_id, or --model when it is a Hub "
        "id) and push that README.md alone; the weights are not touched. A local --model's card (README.md) is "
        "always updated.",
    )
    run.add_argument("--hub_model_id", help="The Hub repository whose card gets the results (implies --push_to_hub).")
    run.add_argument("--hub_revision", help="The branch of --hub_model_id to commit the card to (default: main).")

    bench = parser.add_argument_group("benchmarks")
    bench.add_argument(
        "--benchmarks",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help=f"Benchmarks to evaluate, any of {', '.join(ev.BENCHMARK_ORDER)}, or 'all'.",
    )
    for flag, field in _OVERRIDE_FLAGS.items():
        bench.add_argument(
            f"--{flag}",
            nargs="+",
            action="extend",
            default=[],
            metavar="NAME=VALUE",
            help=f"Override the dataset {field} of a benchmark, e.g. aime24=VALUE (repeatable).",
        )
    bench.add_argument("--max_problems", type=int, help="Evaluate only the first N problems of each benchmark.")

    decoding = parser.add_argument_group("decoding")
    decoding.add_argument(
        "--decoding",
        default=ev.DEFAULT_DECODING,
        help="Decoding preset: 'training' (temperature 1.0, top-p 1.0) or 'justrl' (temperature 0.7, top-p 0.9).",
    )
    decoding.add_argument("--temperature", type=float, help="Override the preset's temperature (0 = greedy).")
    decoding.add_argument("--top_p", type=float, help="Override the preset's top-p.")
    decoding.add_argument(
        "--n",
        nargs="+",
        metavar="N|NAME=N",
        help="Samples per problem: one integer for every benchmark and/or NAME=N per benchmark. Default: the "
        "paper's (32 on aime24, aime25, amc23; 4 on the others).",
    )
    decoding.add_argument("--max_new_tokens", type=int, default=ev.PAPER_MAX_NEW_TOKENS)
    decoding.add_argument(
        "--pass_k", nargs="+", type=int, metavar="K", help="k of pass@k (default: 1 and n); k > n is skipped."
    )
    decoding.add_argument("--seed", type=int, default=0)
    decoding.add_argument(
        "--chat_template_kwargs",
        help="JSON object passed to the chat template, as in training (e.g. '{\"enable_thinking\": false}').",
    )

    backend = parser.add_argument_group("backend")
    backend.add_argument(
        "--backend", default="auto", help="auto (vLLM when installed, else transformers), vllm or transformers."
    )
    backend.add_argument("--batch_size", type=int, default=64, help="Prompts per generation call (and per flush).")
    backend.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM: GPUs per model copy.")
    backend.add_argument("--data_parallel_size", type=int, default=1, help="vLLM: model copies (worker processes).")
    backend.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="vLLM.")
    backend.add_argument("--max_model_len", type=int, help="vLLM: context length (default: the model's).")
    backend.add_argument(
        "--max_batch_sequences", type=int, default=64, help="transformers: sequences per model.generate call."
    )
    backend.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32.")
    backend.add_argument("--trust_remote_code", action="store_true")
    backend.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")

    compare = parser.add_argument_group("comparison")
    compare.add_argument(
        "--compare",
        nargs="+",
        metavar="RESULTS",
        help="Print the runs side by side (eval_results.json files or their directories) and exit.",
    )
    compare.add_argument("--labels", nargs="+", help="Row labels for --compare (default: each run's name).")
    compare.add_argument("--compare_output", help="Also save the --compare table (Markdown) to this file.")
    return parser


def _split_pair(flag: str, item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"--{flag}: expected NAME=VALUE, got {item!r}")
    return name.strip(), value


def _parse_n(items: Sequence[str] | None):
    if not items:
        return None
    per_benchmark: dict[str, int] = {}
    default = None
    for item in items:
        name, sep, value = item.partition("=")
        raw = value if sep else name
        try:
            number = int(raw)
        except ValueError:
            raise ValueError(f"--n: expected an integer or NAME=INTEGER, got {item!r}") from None
        if sep:
            per_benchmark[name.strip()] = number
        else:
            default = number
    if not per_benchmark:
        return default
    if default is not None:
        from .data import BENCHMARKS

        return {**{name: default for name in BENCHMARKS}, **per_benchmark}
    return per_benchmark


def config_from_args(args: argparse.Namespace) -> ev.EvalConfig:
    """An `EvalConfig` from parsed arguments; raises `ValueError` naming the flag on any invalid value."""
    overrides: dict[str, dict[str, str]] = {}
    for flag, field in _OVERRIDE_FLAGS.items():
        for item in getattr(args, flag):
            name, value = _split_pair(flag, item)
            overrides.setdefault(name, {})[field] = value
    chat_template_kwargs = None
    if args.chat_template_kwargs:
        try:
            chat_template_kwargs = json.loads(args.chat_template_kwargs)
        except json.JSONDecodeError as error:
            raise ValueError(f"--chat_template_kwargs: not valid JSON ({error})") from None
    if args.model is None:
        raise ValueError("--model is required (or use --compare)")
    parsed = {
        "n": _parse_n(args.n),
        "dataset_overrides": overrides,
        "chat_template_kwargs": chat_template_kwargs,
        "progress": not args.no_progress,
    }
    # Every other field of EvalConfig has a flag of the same name.
    copied = {f.name: getattr(args, f.name) for f in dataclasses.fields(ev.EvalConfig) if f.name not in parsed}
    return ev.EvalConfig(**copied, **parsed)


def run_compare(paths: Sequence[str], labels: Sequence[str] | None = None, output: str | None = None) -> str:
    runs = [ev.load_results(path) for path in paths]
    table = ev.compare_markdown(runs, labels)
    if output:
        Path(output).write_text(table)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        try:
            table = run_compare(args.compare, args.labels, args.compare_output)
        except (OSError, ValueError) as error:
            parser.error(f"--compare: {error}")
        print(table, end="")
        return 0
    try:
        config = config_from_args(args)
        # Everything that can be checked without the model weights is checked here: flags, the Hub repository whose
        # card gets the results, backend, revision, the output directory's settings, the benchmark data, the
        # tokenizer and the stored prompts.
        card_repo = hub_card_repo(args)
        if card_repo is not None:
            hub.check_card_repo(card_repo, revision=args.hub_revision)
        prepared = ev.prepare_evaluation(config)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    except ev.ResumeError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    results = ev.evaluate_model(prepared)
    print(ev.format_results_markdown(results), end="")
    print(f"\nWrote {Path(config.resolved_output_dir()) / ev.EVAL_RESULTS_FILE}", file=sys.stderr)
    publish_results(results, config.model, card_repo, args.hub_revision)
    return 0


def hub_card_repo(args: argparse.Namespace) -> str | None:
    """The Hub repository whose card gets the results: `--hub_model_id`, or with `--push_to_hub` a Hub `--model`."""
    if args.hub_model_id:
        return args.hub_model_id
    if not args.push_to_hub:
        return None
    if args.model is not None and Path(args.model).is_dir():
        raise ValueError(
            "--push_to_hub: --model is a local folder; name the Hub repository whose card gets the results with "
            "--hub_model_id <owner>/<name>."
        )
    return args.model


def publish_results(results: dict, model: str, card_repo: str | None, revision: str | None) -> None:
    """Add the results to the model card: the local model's README.md, and the Hub repository's (README.md alone)."""
    from huggingface_hub import ModelCard

    local_card = Path(model) / "README.md"
    if local_card.is_file():
        card = hub.add_eval_results(ModelCard.load(local_card), [results], model_name=Path(model).resolve().name)
        card.save(local_card)
        print(f"Added the results to the model card {local_card}", file=sys.stderr)
    if card_repo is not None:
        card = hub.add_eval_results(
            hub.load_card(card_repo, revision=revision), [results], model_name=card_repo.split("/")[-1]
        )
        commit = hub.push_card(card, card_repo, revision=revision, message=f"stapo-eval: {results['run_name']}")
        print(f"Added the results to the model card of {card_repo} (README.md only): {commit}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

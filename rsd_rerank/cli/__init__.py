"""The ``rsd-rerank`` command: parsing, progress, errors and atomic writes; the algorithms live elsewhere.

One module per sub-command (``add_parser`` and ``run``); the options they share are built once from the
config dataclasses in ``options``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rsd_rerank.cli import compare, difficulty, finetune, index, pipeline, rank_llm, rerank, retrieve, train
from rsd_rerank.cli.options import AGENT_FIELDS, TRAIN_FIELDS, config_from, field_docs

__all__ = ["AGENT_FIELDS", "TRAIN_FIELDS", "build_parser", "config_from", "field_docs", "main"]

COMMANDS = (rerank, rank_llm, index, retrieve, pipeline, compare, difficulty, train, finetune)
"""The sub-commands in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsd-rerank", description=__doc__.split("\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _inputs_and_outputs(args: argparse.Namespace) -> tuple[list, list[tuple[Path, bool]]]:
    """The files a command reads and the files (False) or folders (True) it writes."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    inputs = [
        get("requests") if args.command != "retrieve" else None,
        get("run"),
        get("topics"),
        get("qrels"),
        get("corpus"),
        get("val_requests"),
    ]
    outputs: list[tuple[Path, bool]] = []
    if args.command in ("rerank", "retrieve", "pipeline"):
        outputs.append((Path(args.output), False))
    if args.command == "retrieve" and args.requests:
        outputs.append((Path(args.requests), False))
    if args.command == "compare":
        outputs += [(Path(args.out).with_suffix(suffix), False) for suffix in (".json", ".md", ".png")]
    if args.command == "difficulty" and args.out:
        from rsd_rerank.files import stem_file

        outputs += [(stem_file(Path(args.out), suffix), False) for suffix in (".json", ".md", ".claims.jsonl")]
    if args.command == "train" or (args.command == "finetune" and args.out):
        outputs.append((Path(args.out), True))
    if args.command == "index":
        outputs.append((Path(args.index), True))
    return inputs, outputs


def _guarded(args: argparse.Namespace) -> None:
    """Run the command once its outputs are known to be writable, distinct from its inputs and locked."""
    from rsd_rerank.files import check_writable, distinct_paths, locked
    from rsd_rerank.targets import check_target_name

    for model in [getattr(args, "model", None), *(w.model for w in getattr(args, "with_model", []))]:
        if model is not None:  # an unknown name is refused offline, before any work
            check_target_name(model)
    inputs, outputs = _inputs_and_outputs(args)
    distinct_paths(inputs, [path for path, _ in outputs])
    for path, directory in outputs:
        check_writable(path, directory=directory)
    if args.command == "train":
        from rsd_rerank.targets import cache_dir

        check_writable(cache_dir(), directory=True, what="cache folder (RSD_RERANK_CACHE)")
    with contextlib.ExitStack() as stack:
        for path, _ in outputs:
            stack.enter_context(locked(path))
        args.func(args)


@contextlib.contextmanager
def _quiet_libraries(verbose: bool):
    """A first run prints what the user asked for: progress bars, results, this project's warnings.
    Without ``-v``: no INFO lines from libraries (ir_datasets logs at INFO with its own handlers, so
    only ``logging.disable`` reaches it), no transformers deprecation notices, no Pyserini
    ``SyntaxWarning``s and no Lucene vectorization notice (``integrations.pyserini``)."""
    if verbose:
        yield
        return
    import warnings

    from transformers.utils import logging as hf_logging

    hf_level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=r"(transformers|torch)(\.|$)")
            yield
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(hf_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with _quiet_libraries(args.verbose):
            _guarded(args)
    except (ValueError, RuntimeError, OSError) as err:
        # Bad input (ValueError) and the environment (a missing model, a full disk, no JVM) both reach
        # the user as one line; the traceback is for -v.
        if args.verbose:
            traceback.print_exc()
        print(f"rsd-rerank {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every output is written atomically: what is on disk is whole, and --resume continues it.
        print(
            f"rsd-rerank {args.command}: interrupted; outputs on disk are complete up to the last write",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

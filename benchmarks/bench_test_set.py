"""The test set a benchmark runs on: given with --test-set, or a preset generated for the run."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from env_worker.flatland_test_set import generate_test_set


def parser_with_test_set(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every test-set benchmark takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-set", type=Path, help="an existing test set (default: generate --preset)")
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--rounds", type=int, default=3)
    return parser


@contextlib.contextmanager
def test_set_for(args: argparse.Namespace) -> Iterator[Path]:
    """`args.test_set`, or `args.preset` generated into a directory removed afterwards."""
    if args.test_set is not None:
        yield args.test_set
        return
    with tempfile.TemporaryDirectory() as scratch:
        test_set = Path(scratch) / args.preset
        generate_test_set(test_set, args.preset)
        yield test_set

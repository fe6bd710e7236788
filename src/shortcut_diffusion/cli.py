"""The ``sdo`` command: thin sub-commands over the library."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .config import add_arguments, from_args
from .errors import UsageError


def _gradcheck(args: argparse.Namespace) -> int:
    from .gradcheck import GradcheckConfig, format_table, run_gradcheck

    config = from_args(GradcheckConfig, args)
    report = run_gradcheck(config)
    print(json.dumps(report) if config.json else format_table(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .gradcheck import GradcheckConfig

    parser = argparse.ArgumentParser(prog="sdo", description="Shortcut Diffusion Optimization")
    commands = parser.add_subparsers(dest="command", required=True)
    gc = commands.add_parser(
        "gradcheck",
        help="compare every estimator's gradient with full backpropagation on the same noise",
        description="Gradient of a reward w.r.t. a target with every estimator on the same noise: "
        "cosine and relative norm vs full, network evaluations, bytes saved for backward, seconds.",
    )
    add_arguments(gc, GradcheckConfig)
    gc.set_defaults(run=_gradcheck)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"sdo: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

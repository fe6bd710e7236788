"""The ``sdo`` command: one small module per command, each a thin layer over the library.

A command module holds ``COMMANDS`` (name, config dataclass, help) and ``run(args) -> exit code``;
its configs are torch-free and ``run`` imports the heavy modules, so that building the parser
(``sdo --help``, every command's ``--help``) needs no torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from shortcut_diffusion.cli import bench, finetune, gradcheck, guide, latent, testbed
from shortcut_diffusion.errors import UsageError, WriteError
from shortcut_diffusion.io.interrupts import as_interrupted, interruptible
from shortcut_diffusion.options.parsing import add_arguments
from shortcut_diffusion.version import __version__

MODULES = (latent, guide, finetune, gradcheck, bench, testbed)  # in the order of ``sdo --help``


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdo", description="Shortcut Diffusion Optimization")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        for name, config_cls, help in module.COMMANDS:
            command = commands.add_parser(name, help=help, description=help)
            add_arguments(command, config_cls)
            command.set_defaults(run=module.run, config_cls=config_cls)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:  # answered without building the parser
        print(f"sdo {__version__}")
        raise SystemExit(0)  # as argparse's version action does
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with interruptible():  # Ctrl-C and SIGTERM: the runs save what they have, then one line
            return args.run(args)
    except UsageError as error:
        print(f"sdo: error: {error}", file=sys.stderr)
        return 2
    except WriteError as error:
        print(f"sdo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        interrupted = as_interrupted(error)
        print(f"sdo: {interrupted.message()}", file=sys.stderr)
        return interrupted.exit_code


if __name__ == "__main__":
    sys.exit(main())

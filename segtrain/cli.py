"""Shared CLI plumbing: one-line errors, exit code 2 for bad input, 130 on Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from segtrain.errors import ConfigError, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
        prog: str | None = None) -> int:
    """Call `main(argv)`; turn user errors into one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = prog or "error"
    try:
        return main(argv) or 0
    except SystemExit as exit_:  # argparse: --help, or a bad flag already reported
        return exit_.code if isinstance(exit_.code, int) else 2
    except ConfigError as error:
        flag = "--" + error.key.replace("_", "-")
        print(f"{name}: error: {flag}: {error.problem}", file=sys.stderr)
    except UserError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 2

"""What the project's command lines share."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn


def prog(module: str, script: str) -> str:
    """The name the user typed, for usage lines: the console script (``edge-emotion run``) or
    ``python -m edge``; one of them printed for the other is a command that does not exist."""
    return script if os.path.basename(sys.argv[0]) == script else f"python -m {module}"


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line and exit code 2, like every other start-up failure (argparse
    prints the whole usage first, which a journal shows as several unrelated lines)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

"""What the project's command lines share."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line and exit code 2, like every other start-up failure (argparse
    prints the whole usage first, which a journal shows as several unrelated lines)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

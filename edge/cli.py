"""What the project's command lines share."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, or None: checked before the work whose result goes
    there, not after it. The nearest existing folder on the way counts (missing folders are
    made); a file there, or no write permission, blocks."""
    try:
        folder = _nearest_existing(path.parent)
        if not folder.is_dir():
            return f"a file is where an output folder must go: {folder}"
    except OSError as error:  # a folder on the way that cannot be searched
        return f"{error.filename or path}: {error.strerror or error}"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not a writable folder"
    return None


def name_max(path: Path) -> int:
    """The longest file name, in bytes, the file system of ``path`` (or of its nearest
    existing folder) takes: 255 on ext4 and most others."""
    try:
        return os.pathconf(_nearest_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _nearest_existing(folder: Path) -> Path:
    """``folder``, or the first of its parents that exists (missing folders are made)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def not_a_file(path: Path, what: str = "file") -> str | None:
    """Why ``path`` cannot be read as ``what``, or None when it is a regular file: "not found"
    for a folder or ``/dev/zero`` sent users looking for a file that is there (and reading a
    device or a pipe would never end)."""
    if path.is_file():
        return None
    if path.is_dir():
        return f"a folder, not a {what}"
    if path.exists():
        return f"not a regular file (a device or a pipe), not a {what}"
    return f"{what} not found"


def prog(module: str, script: str) -> str:
    """The name the user typed, for usage lines: the console script (``edge-emotion run``) or
    ``python -m edge``; one of them printed for the other is a command that does not exist."""
    return script if os.path.basename(sys.argv[0]) == script else f"python -m {module}"


def path_argument(text: str) -> Path:
    """A path option's value; an empty one (``--config "$UNSET"``) is named as such, not read
    as ``.``, the current folder, as ``Path("")`` is."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (is a variable unset?)")
    return Path(text)


# C0/C1 controls and line separators as escapes: a name or value quoted in an error (an
# environment variable's name may hold a line break) keeps the error on its one line.
_ESCAPED = {
    point: repr(chr(point))[1:-1] for point in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def one_line(text: str) -> str:
    """``text`` with its control characters and line separators escaped: a file name with a
    tab or line break quoted in an error or a result keeps it on its one line."""
    return text.translate(_ESCAPED)


def say_error(prog: str, message: str) -> None:
    """A start-up or input error as one line on stderr: ``PROG: error: MESSAGE``, with every
    URL in it masked (a URL typed where a path goes carries its password along), escaped
    first: a tab in a password ended the URL before its ``@``."""
    from edge.config.camera import mask_urls

    print(f"{prog}: error: {mask_urls(one_line(message))}", file=sys.stderr)


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line and exit code 2, like every other start-up failure (argparse
    prints the whole usage first, which a journal shows as several unrelated lines)."""

    def error(self, message: str) -> NoReturn:
        say_error(self.prog, f"{message} (see --help)")
        sys.exit(2)


# Stop (SIGTERM, SIGINT) and reload (SIGHUP): the daemon's main thread alone takes them.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class Interrupts:
    """Ctrl-C ends a command in one line and exit code 130, never a traceback, from its
    first import on: made at the top of a ``__main__``, before the heavy imports.

    Until ``run`` starts the command, and once it has ended and its output is flushed, the
    process ends at once. In between, Ctrl-C unwinds (``finally`` blocks run, output is
    flushed) and the line is printed at the end: fd 2 is /dev/null while OpenCV opens a
    video or LiteRT builds an interpreter (``native_stderr_silenced``). Remembered, as a
    KeyboardInterrupt raised inside a C extension's import comes out as that import's
    ImportError."""

    def __init__(self, tool: str) -> None:
        self.tool, self.seen, self.running = tool, False, False
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # `nohup`, `cmd &` in a script
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.seen = True
        if not self.running:
            os.write(2, f"{self._name(sys.argv[1:])}: interrupted\n".encode())
            os._exit(130)
        raise KeyboardInterrupt

    def run(self, command: Callable[[list[str]], int], argv: list[str]) -> int:
        self.running = True
        sys.unraisablehook = self._unraisable
        try:
            code = command(argv)
            flush_output()
            # Done and said: a Ctrl-C while Python shuts down (TensorFlow's teardown takes a
            # second) ends it at once with the line, not by SIGINT with no word (status -2).
            self.running = False
        except BaseException as error:
            if not (isinstance(error, KeyboardInterrupt) or self.seen):
                raise
            self._interrupted(argv)
        if self.seen:  # raised where CPython swallows it: "Exception ignored in ..." (a finaliser)
            self._interrupted(argv)
        return code

    def _unraisable(self, unraisable: sys.UnraisableHookArgs) -> None:
        """Our interrupt swallowed by a finaliser is said once, at the end, not as a trace."""
        if not (unraisable.exc_type is KeyboardInterrupt and self.seen):
            sys.__unraisablehook__(unraisable)

    def _interrupted(self, argv: list[str]) -> NoReturn:
        print(f"{self._name(argv)}: interrupted", file=sys.stderr)
        _exit_interrupted()

    def _name(self, argv: list[str]) -> str:
        return " ".join([self.tool, *argv[:1]])


def _exit_interrupted() -> NoReturn:
    """Exit code 130, always. An interrupt that lands while a C extension runs Python code
    through ``PyRun_String`` sets CPython's "uncaught Ctrl-C" flag although it is caught here,
    and ``python -m`` then ends the process by SIGINT after ``sys.exit(130)``: status -2, seen
    in CI when Ctrl-C hit TensorFlow's import."""
    flush_output()
    os._exit(130)


def flush_output() -> None:
    """Flush stdout and stderr before ``os._exit``, which does not; a reader that has left
    (a closed pipe) is no error: nothing more can be said to it."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            if stream is not None:  # started with it closed (`>&-`)
                stream.flush()

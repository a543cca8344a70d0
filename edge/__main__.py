"""``python -m edge run|demo|check-config|analyze``: the daemon's command line."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from edge.cli import (  # light: before the heavy imports
    STOP_SIGNALS,
    Interrupts,
    OneLineParser,
    flush_output,
    path_argument,
    prog,
    say_error,
)

# A reload (SIGHUP) or a stop (SIGTERM) that arrives while the daemon starts waits, blocked
# (below), until it runs. One in the instant before the block is remembered here and acted on
# then: by default SIGHUP would end the process (a second reload within a second of the first
# left the service dead), and as a container's PID 1 the process would ignore a default-handled
# SIGTERM (`docker stop` would wait its 10 s and kill it).
_early_reloads: list[int] = []
_early_stops: list[int] = []

# `python -m edge` or the console script (which imports this module under its own name).
_COMMAND_LINE = __name__ == "__main__" or os.path.basename(sys.argv[0]) == "edge-emotion"
# Ctrl-C: one line, also while importing (the daemon installs its own handler once running).
_INTERRUPTS = Interrupts("edge") if _COMMAND_LINE else None
if _COMMAND_LINE and sys.argv[1:2] in (["run"], ["demo"]):
    signal.signal(signal.SIGTERM, lambda signum, _frame: _early_stops.append(signum))
    signal.signal(signal.SIGHUP, lambda signum, _frame: _early_reloads.append(signum))
    # From here until the daemon runs (Daemon.run unblocks them in the main thread), a stop or
    # reload waits, blocked, as one sent during a reload's restart already does (serve): every
    # thread started meanwhile (native pools at import, the daemon's own) inherits the block,
    # so the main thread alone takes them; one taken by another thread had its handler run
    # too late to stop a restart. A blocked signal also reaches a container's PID 1.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from edge.config import (  # noqa: E402
    MAX_CONFIG_BYTES,
    ConfigError,
    ConfigFile,
    EdgeConfig,
    load_config,
)
from edge.emotions import ModelError  # noqa: E402

EXIT_CONFIG = 2
# The descriptor of the configuration a reload checked, for the process it restarts (an
# in-memory file, inherited across the exec): see ConfigFile. Not EDGE_*, which are settings.
CHECKED_CONFIG_FD = "_EDGE_EMOTION_CHECKED_CONFIG_FD"
CHECKED_CONFIG_NAME = "edge-emotion-config"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return _INTERRUPTS.run(_run_command, argv) if _INTERRUPTS else _run_command(argv)


def _run_command(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        return args.command(args)
    except (ConfigError, ModelError) as error:
        say_error(f"edge {args.name}", str(error))
        return EXIT_CONFIG
    except BrokenPipeError:
        # The reader went away (`check-config | head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(
        prog=prog("edge", "edge-emotion"),
        description="Face-emotion recognition for edge cameras: the daemon (run), its sample "
        "(demo), the configuration check (check-config) and offline analysis of files (analyze).",
    )
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.set_defaults(command=run_daemon, name="run")
    run.add_argument(
        "--config", type=path_argument, help="YAML configuration (EDGE_* variables override)"
    )

    demo = commands.add_parser("demo", help="run on a built-in sample clip, events to stdout")
    demo.set_defaults(command=run_demo, name="demo")

    check = commands.add_parser("check-config", help="validate and print the configuration")
    check.set_defaults(command=check_config, name="check-config")
    check.add_argument("--config", type=path_argument)

    analyze = commands.add_parser("analyze", help="faces and emotions in image/video files")
    analyze.set_defaults(command=run_analyze, name="analyze")
    analyze.add_argument("paths", type=path_argument, nargs="+")
    analyze.add_argument("--model", type=path_argument, help="default: the shipped model")
    analyze.add_argument("--json", action="store_true", help="JSON lines (default: a table)")
    return top


def run_daemon(args: argparse.Namespace) -> int:
    source = ConfigFile(args.config)
    return serve(source.load(_inherited_config()), source)


def _inherited_config() -> bytes | None:
    """The configuration the reload that started this process checked, if one did: only from
    the in-memory file reload_in_place made (the variable alone could name any descriptor)."""
    fd = os.environ.pop(CHECKED_CONFIG_FD, None)
    if fd is None or not fd.isdigit():
        return None
    try:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{CHECKED_CONFIG_NAME} "):
            return None
        with open(int(fd), "rb") as file:
            return file.read(MAX_CONFIG_BYTES + 1)
    except OSError:  # not ours after all: the file is read as usual
        return None


def run_demo(args: argparse.Namespace) -> int:
    from edge.demo import demo_config, sample_clip

    return serve(load_config(None, demo_config(sample_clip())))


def serve(config: EdgeConfig, source: ConfigFile | None = None) -> int:
    from edge.daemon import Daemon, tune_opencv

    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Until the daemon runs, the stop and reload signals wait, blocked, in every thread (the
    # interpreter's and the readers' threads start with this mask): then only the main thread,
    # which unblocks them, can take one, and one that comes after the run is not lost to a
    # thread whose handler runs too late to stop a restart (below).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    tune_opencv(len(config.cameras))
    daemon = Daemon(config, source=source)
    daemon.install_signal_handlers()
    if _early_stops:
        logging.getLogger("edge").info("stopped while starting (SIGTERM)")
        return 0
    if _early_reloads:
        daemon.request_reload()  # starts, then restarts at once with the configuration re-read
    code = daemon.run()
    # From here a stop or another reload waits, blocked; across a restart it reaches the new
    # process as it starts (a stop then stops it at once): a stop is never lost to a reload.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if daemon.reload_requested:
        reload_in_place(source.checked if source else None)
    # Threads may still be inside native code: a reader blocked in OpenCV/FFmpeg (up to its
    # read timeout), a live-view request in cv2.imencode, OpenCV's own pool. Interpreter
    # finalisation tears them down and can abort the process ("terminate called without an
    # active exception", exit -6, seen under HTTP load). Every event is flushed or spooled by
    # now, so leave without finalising.
    logging.shutdown()
    flush_output()
    os._exit(code)


def reload_in_place(checked: bytes | None) -> None:
    """SIGHUP: everything is flushed and stopped by now; start again as the same process (same
    PID, so systemd and other supervisors keep tracking it) with the configuration re-read,
    as ``Daemon.request_reload`` checked it (``checked``, handed over in memory). Signals are
    blocked (a mask survives the exec) until the new process has its handlers."""
    logging.getLogger(__name__).info("SIGHUP: restarting with the configuration re-read")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if checked is not None:
        with contextlib.suppress(OSError):  # no memfd (a sandbox): the file is read again
            fd = os.memfd_create(CHECKED_CONFIG_NAME, 0)  # without MFD_CLOEXEC: inherited
            os.set_inheritable(fd, True)
            with open(fd, "wb", closefd=False) as file:
                file.write(checked)
            os.lseek(fd, 0, os.SEEK_SET)
            os.environ[CHECKED_CONFIG_FD] = str(fd)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def check_config(args: argparse.Namespace) -> int:
    """What ``run`` would refuse at start-up, refused here too: the model is loaded (file,
    metadata, interpreter), not just found, TLS files are loaded as the client will, and a
    spool file must be one (``edge.preflight``, which a reload runs too)."""
    from edge.preflight import preflight

    config = load_config(args.config)
    preflight(config)
    for what, server in (("metrics", config.metrics), ("view", config.view)):
        if server.enabled:  # resolved, not bound: the running service may hold the port
            _resolvable(what, server.host, server.port)
    print(json.dumps(config.masked(), indent=2))
    return 0


def _resolvable(what: str, host: str, port: int) -> None:
    import socket

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ConfigError(f"{what} {host}:{port}: cannot serve: {error.strerror}") from None


def run_analyze(args: argparse.Namespace) -> int:
    from edge.analyze import ResultsNotWritten, analyze

    try:
        return analyze(args.paths, args.model, args.json)
    except ResultsNotWritten as error:
        say_error("edge analyze", str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())

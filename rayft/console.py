"""A quiet console: a command shows its own progress bars, its own lines and its summary; what
libraries and Ray print goes to a log file under `$RAYFT_HOME/logs`, whose path the command prints.

`quiet(command)` sends the process's stderr (file descriptor 2: Python warnings, tqdm bars, Ray's,
DeepSpeed's and native libraries' messages) and the Python loggers of those libraries to the log
file, keeps Ray workers' output in Ray's own session logs, sends the lines others print on stdout
(Ray's relayed raylet messages, DeepSpeed's log records) to the log as well (`StdoutRouter`), and
returns a stream on the terminal's stderr for rayft's own errors. `rayft -v` skips all of it and
shows everything.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

from rayft.home import rayft_home

QUIET_ENV = "RAYFT_QUIET"  # read by ensure_ray: workers' output stays in Ray's session logs
CHATTY_LOGGERS = (
    "ray",
    "vllm",
    "deepspeed",
    "DeepSpeed",
    "transformers",
    "torch",
    "datasets",
    "urllib3",
    "filelock",
    "py.warnings",
)


# The start of a line someone else prints on our stdout: Ray's relayed raylet, autoscaler and worker
# lines ("(raylet) WARNING ...", "(MapWorker pid=12) ..."), a library's log record
# ("[2026-12-03 11:53:54,833] [WARNING] ..." from DeepSpeed, whose handler writes to stdout).
FOREIGN_LINE = re.compile(
    r"(?:\x1b\[[\d;]*m)?\((?:raylet|autoscaler|\S*?\s?pid=\d+)|\[\d{4}-\d\d-\d\d [\d:,]+\] \[[A-Z]+\]"
)
# Cursor moves and erases (not colours) that start a progress bar's redraw, kept on the terminal.
CURSOR_CONTROL = re.compile(r"(?:\r|\x1b\[[\d;?]*[A-Za-ln-z])*")


class StdoutRouter(io.TextIOBase):
    """`sys.stdout` of a quiet command: each line goes to the terminal unless its visible text starts
    like a foreign line (`FOREIGN_LINE`); then it goes to the log, up to its newline even when that
    comes in a later write of the same thread (`print` writes the text, then the newline)."""

    def __init__(self, terminal, log):
        self.terminal, self.log = terminal, log
        self.lock, self.routed = threading.Lock(), threading.local()

    def write(self, text: str) -> int:
        if not text:
            return 0
        with self.lock:
            parts = text.split("\n")
            for index, part in enumerate(parts):
                to_log = index == 0 and getattr(self.routed, "open", False)
                if not to_log:
                    control = CURSOR_CONTROL.match(part).group()
                    self.terminal.write(control)
                    part = part[len(control) :]
                    to_log = FOREIGN_LINE.match(part) is not None
                (self.log if to_log else self.terminal).write(part + "\n" * (index < len(parts) - 1))
            self.routed.open = to_log and parts[-1] != ""
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:
        return self.terminal.encoding


def quiet(command: str) -> tuple[Path, object]:
    """Route everything but rayft's own output to a new log file; returns its path and a stream on
    the terminal's stderr."""
    folder = rayft_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115  (open for the process's life)
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8")
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    sys.stdout = StdoutRouter(sys.stdout, log)
    os.environ[QUIET_ENV] = "1"
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM's records reach the root logger's file handler
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    return path, terminal

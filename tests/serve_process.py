"""`rayft serve CONFIG` as a real process (`python -m rayft.cli serve`, quiet console): started in its
own process group, its stdout read line by line, stopped the way operators stop it or killed."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """Returns once the server printed its log path and its "rayft serving" line (it answers then),
    or at once with `wait=False`."""

    def __init__(
        self, config: dict, folder: Path, env: dict[str, str], start_timeout_s: float = 240, wait: bool = True
    ):
        self.port = config["serve"]["port"]
        path = folder / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rayft.cli", "serve", str(path)],
            start_new_session=True,
            text=True,
            stdout=subprocess.PIPE,
            stderr=open(folder / "stderr.log", "a"),
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | env,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.printed: list[str] = []
        if not wait:
            return
        try:
            self.printed = [self.next_line(start_timeout_s), self.next_line(start_timeout_s)]
        except queue.Empty:
            self.kill()
            raise
        if not (self.printed[0].startswith("log: ") and self.printed[1].startswith("rayft serving '")):
            self.kill()
            raise AssertionError(f"rayft serve printed {self.printed} first")

    def next_line(self, timeout_s: float) -> str:
        return self.lines.get(timeout=timeout_s).rstrip("\n")

    def stop(self, timeout_s: float = 120) -> int:
        """SIGTERM to the server process (not its group), as Kubernetes sends it; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.finish(timeout_s)

    def finish(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        while not self.lines.empty():
            self.printed.append(self.next_line(1))
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)

"""A quiet console: `rayft data prepare` as a real process prints its own lines (the log path first,
then its summary) and nothing else; what Ray, Ray Data and the libraries say lands in the log file.
The process starts its own Ray, so that test stops the session's first (one Ray cluster at a time).
The stdout router that keeps others' lines off the terminal is tested on its own, with hypothesis."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rayft.console import StdoutRouter

OWN_RAY_HEAD = True  # conftest: do not restart the session's Ray for this module's tests


@pytest.fixture
def no_session_ray():
    from session_ray import stop_session_ray

    stop_session_ray()


def rayft(*args: str, home: Path) -> subprocess.CompletedProcess:
    """The `rayft` console script's entry (`rayft.cli:run`) in a fresh process."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from rayft.cli import run; sys.exit(run())", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=os.environ | {"RAYFT_HOME": str(home)},
    )


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_data_prepare_keeps_library_and_ray_chatter_in_its_log_file(no_session_ray, tiny_model, tmp_path):
    from rayft.data.samples import write_support_tickets

    tickets = write_support_tickets(tmp_path / "tickets.jsonl", n=120, seed=5)
    config = tmp_path / "data.yaml"
    config.write_text(f"name: quiet\nmodel:\n  base: {tiny_model}\ndata:\n  max_tokens: 256\n")

    done = rayft(
        "data", "prepare", str(tickets), "--out", str(tmp_path / "out"), "--config", str(config), home=tmp_path / "home"
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # warnings, Ray's start-up lines and Ray Data's bars all went to the log
    lines = done.stdout.splitlines()
    assert lines[0].startswith("log: ")
    log = Path(lines[0].removeprefix("log: "))
    assert log.parent == tmp_path / "home" / "logs"
    assert "dataset " in done.stdout and "rejected: " in done.stdout  # rayft's own summary is on the console
    chatter = log.read_text()
    assert "ray" in chatter.lower() and len(chatter.splitlines()) > 5
    strangers = [
        line for line in lines if re.match(r"\(.*pid=\d+|\[?20\d\d-|\w+Warning", line)
    ]  # Ray workers, log records
    assert not strangers, strangers


# What others print on our stdout, and what rayft prints (progress bar redraws start with cursor moves).
FOREIGN = [
    "\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: 5b33",
    "(raylet) Task ServeController.graceful_shutdown failed.",
    "(MapWorker(ReadJSON) pid=4312) INFO something",
    "[2026-12-03 11:53:54,833] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU.",
]
OURS = [
    "log: /tmp/home/logs/quickstart.log",
    "[rayft] run support-20261203-115507: 288 steps",
    "train support ━━━━━━━━━━ 288/288 0:00:39 loss 1.4662",
    "│   rejected: invalid_json      │ 1   │",
    "(/tmp/out)",
    "",
]


class Sink(io.StringIO):
    def isatty(self) -> bool:
        return False


def routed(writes: list[str]) -> tuple[str, str]:
    terminal, log = Sink(), Sink()
    router = StdoutRouter(terminal, log)
    for text in writes:
        router.write(text)
    return terminal.getvalue(), log.getvalue()


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=30), st.booleans())
def test_others_lines_go_to_the_log_and_ours_to_the_terminal_however_printed(picks, print_like):
    lines = [(FOREIGN if foreign else OURS)[i % (4 if foreign else 6)] for foreign, i in picks]
    writes = [w for line in lines for w in (line, "\n")] if print_like else ["".join(f"{x}\n" for x in lines)]
    terminal, log = routed(writes)
    assert terminal == "".join(f"{x}\n" for x in lines if x in OURS)
    assert log == "".join(f"{x}\n" for x in lines if x in FOREIGN)


def test_a_progress_redraw_keeps_its_cursor_moves_and_drops_a_foreign_line_inside_it():
    frame = "\r\x1b[2K\x1b[1A\x1b[2K(raylet) WARNING: too many workers\n\r\x1b[2Ktrain ━━━ 3/9"
    terminal, log = routed(["train ━━━ 2/9", frame, "\r\x1b[2Ktrain ━━━ 4/9"])
    assert terminal == "train ━━━ 2/9\r\x1b[2K\x1b[1A\x1b[2K\r\x1b[2Ktrain ━━━ 3/9\r\x1b[2Ktrain ━━━ 4/9"
    assert log == "(raylet) WARNING: too many workers\n"


def test_a_line_another_thread_began_is_finished_in_the_log():
    import threading

    terminal, log = Sink(), Sink()
    router = StdoutRouter(terminal, log)
    router.write("train ━━━ 2/9")  # a bar in the main thread, no newline yet
    other = threading.Thread(target=lambda: (router.write("(raylet) worker died"), router.write("\n")))
    other.start()
    other.join()
    router.write("\r\x1b[2Ktrain ━━━ 3/9\n")
    assert log.getvalue() == "(raylet) worker died\n"
    assert terminal.getvalue() == "train ━━━ 2/9\r\x1b[2Ktrain ━━━ 3/9\n"


def test_an_unforeseen_failure_is_one_line_naming_the_log_that_holds_its_traceback(tmp_path):
    (tmp_path / "file").write_text("")

    done = rayft("model", "tiny", "--out", str(tmp_path / "file" / "tiny"), home=tmp_path / "home")

    assert done.returncode == 1
    log = Path(done.stdout.splitlines()[0].removeprefix("log: "))
    assert done.stderr.startswith("error: NotADirectoryError") and f"(traceback in {log})" in done.stderr
    assert "Traceback (most recent call last)" in log.read_text()

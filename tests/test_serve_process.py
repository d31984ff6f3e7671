"""`rayft serve CONFIG` as a real process stopped the way operators stop it: SIGTERM (Kubernetes) drains
(new requests 503 with Retry-After, the ones in flight finish) and exits 0 with one line, from the
first moment the endpoint answers; during start-up it stops start-up and exits 0; Ctrl-C, a SIGINT
to the whole process group, does the same. The process starts its own Ray, so this module stops the
session's first (one Ray cluster at a time)."""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_process import ServeProcess, free_port

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(600)]

OWN_RAY_HEAD = True  # conftest: do not restart the session's Ray for these tests
KEY = "process-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module", autouse=True)
def no_session_ray():
    from session_ray import stop_session_ray

    stop_session_ray()


class Server(ServeProcess):
    """The tiny base served by a `rayft serve` process that waits up to a minute for requests in flight."""

    def __init__(self, tiny_model: str, folder, wait: bool = True):
        port = free_port()
        config = {
            "name": "proc",
            "model": {"base": tiny_model},
            "serve": {"port": port, "max_model_len": 1024, "shutdown_grace_s": 60},
        }
        super().__init__(config, folder, {"RAYFT_API_KEYS": KEY}, wait=wait)

    def first_answer(self, timeout_s: float = 240) -> None:
        """Wait until the endpoint first answers `/v1/models` (before the "rayft serving" line)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "rayft serve ended before it answered"
            try:
                if httpx.get(self.url + "/v1/models", headers=AUTH, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("rayft serve never answered")

    def log_text(self) -> str:
        """What Ray and the libraries printed (the log file named on the first line)."""
        from pathlib import Path

        return Path(next(line for line in self.printed if line.startswith("log: "))[5:]).read_text(errors="replace")


def stream(url: str, started: threading.Event) -> dict:
    """A long streamed answer, read to the end: its usage and whether [DONE] came."""
    import json

    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 960,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage, done = None, False
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120) as response:
        for line in response.iter_lines():
            started.set()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"]
    return {"status": response.status_code, "usage": usage, "done": done}


def slow_upload(url: str, started: threading.Event, seconds: float) -> httpx.Response:
    """A request whose client sends its body over `seconds`: in flight on the server all that time."""
    import json

    body = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "hi " * 40}], "max_tokens": 8, "temperature": 0}
    ).encode()

    def trickle():
        for i in range(0, len(body), 8):
            yield body[i : i + 8]
            started.set()
            time.sleep(seconds * 8 / len(body))

    return httpx.post(
        url + "/v1/chat/completions",
        content=trickle(),
        timeout=120,
        headers=AUTH | {"content-type": "application/json"},
    )


def test_sigterm_drains_requests_in_flight_refuses_new_ones_and_exits_0(tiny_model, tmp_path):
    """SIGTERM the moment the endpoint first answers, before `rayft serve` has said it is serving
    (it was caught by Ray's own handler there once: exit 1, a native stack dump, requests cut off)."""
    server = Server(tiny_model, tmp_path, wait=False)
    try:
        server.first_answer()
        uploading, streaming = threading.Event(), threading.Event()
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(slow_upload, server.url, uploading, 8.0)
            long = pool.submit(stream, server.url, streaming)
            assert uploading.wait(60) and streaming.wait(60)
            os.kill(server.process.pid, signal.SIGTERM)  # as Kubernetes stops a pod
            refused, deadline = None, time.monotonic() + 30
            while refused is None and time.monotonic() < deadline:
                probe = httpx.get(server.url + "/health", timeout=30)
                refused = probe if probe.status_code == 503 else None
            answered, streamed = slow.result(timeout=120), long.result(timeout=120)
        assert refused is not None and refused.headers["retry-after"] == "1", "no 503 while draining"
        # answered: admitted before the drain, though its body was still arriving
        assert refused.json()["error"]["code"] == "shutting_down"
        assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 8
        assert streamed == {"status": 200, "usage": streamed["usage"], "done": True}
        assert streamed["usage"]["completion_tokens"] == 960  # not cut short
        assert server.finish(120) == 0
        assert server.printed[-1].startswith("rayft serve: stopped on SIGTERM after draining for")
        assert server.printed[-1].endswith("every request in flight finished"), server.printed
        assert "SIGTERM received" not in server.log_text()  # Ray's native handler never ran
    finally:
        server.kill()


@pytest.mark.parametrize("after_s", [0.0, 5.0])
def test_sigterm_during_start_up_stops_it_and_exits_0(tiny_model, tmp_path, after_s):
    """At once (imports), and a few seconds in (Ray or Serve starting, wherever that lands on this
    machine): start-up stops, Ray with it, and the process exits 0 saying so."""
    server = Server(tiny_model, tmp_path, wait=False)
    try:
        server.printed.append(server.next_line(60))  # the log line: the process is running rayft
        time.sleep(after_s)
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.finish(120) == 0, server.printed
        assert server.printed[-1].startswith("rayft serve: stopped on SIGTERM"), server.printed
        assert "SIGTERM received" not in server.log_text()
    finally:
        server.kill()


def test_ctrl_c_to_the_process_group_stops_it_cleanly(tiny_model, tmp_path):
    server = Server(tiny_model, tmp_path)
    try:
        assert httpx.get(server.url + "/v1/models", headers=AUTH, timeout=30).status_code == 200
        os.killpg(server.process.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        assert server.finish(120) == 0
        assert server.printed[-1].startswith("rayft serve: stopped on SIGINT"), server.printed
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=5)
    finally:
        server.kill()

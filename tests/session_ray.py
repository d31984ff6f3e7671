"""The session's one local Ray and what runs on it for several modules (the shared Serve app of
`serving_app.py`): stopped together, once, before a module that runs its own cluster (a `ray
start` head, several nodes). Only one Ray cluster runs at a time."""

from __future__ import annotations

import contextlib

_stops: list = []


def on_stop(callback) -> None:
    """Run `callback` (once) when the session's Ray stops."""
    _stops.append(callback)


def forget(callback) -> bool:
    """Take `callback` off the list; whether it was still on it (not yet run)."""
    if callback in _stops:
        _stops.remove(callback)
        return True
    return False


def stop_session_ray() -> None:
    """Stop the services started on the session's Ray, then Ray itself."""
    import ray

    while _stops:
        with contextlib.suppress(Exception):  # Ray already gone: nothing left to stop
            _stops.pop()()
    ray.shutdown()

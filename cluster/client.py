"""Connecting to a Ray cluster's Jobs API: which address, and a token when the cluster wants one.

Ray 2.60 clusters run with token auth (`RAY_AUTH_MODE=token`) or without it. A Jobs client that
sends no token to a token cluster gets HTTP 401, and Ray's own client only sends one when *this*
process runs in token mode, which rayft turns off for the local clusters it starts. So rayft asks
the cluster (the public `/api/authentication_mode` endpoint) and sends the token, from the places
Ray itself reads it, exactly when the cluster wants it. The same `rayft submit` then works against
both kinds of cluster without touching `RAY_AUTH_MODE`.
"""

from __future__ import annotations

import functools
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

LOCAL_HEAD = "http://127.0.0.1:8265"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "~/.ray/auth_token"


class ClusterError(RuntimeError):
    """A cluster or job request that cannot be done; the message says which address or job, and why."""


class JobGone(ClusterError):
    """The cluster answers but does not know the job (it ran on a head since replaced)."""


def resolve_address(address: str | None) -> str:
    """The Jobs API (dashboard) URL: `--address`, else `RAY_ADDRESS`, else the local head."""
    address = (address or os.environ.get("RAY_ADDRESS") or LOCAL_HEAD).rstrip("/")
    return address if "://" in address else f"http://{address}"


def is_loopback(address: str) -> bool:
    return urllib.parse.urlparse(address).hostname in LOOPBACK_HOSTS


def this_machines_addresses() -> set[str]:
    import psutil

    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs} | LOOPBACK_HOSTS


def cluster_auth_mode(address: str) -> str | None:
    """`token` or `disabled` as the cluster reports it; None when it does not say (older Ray)."""
    try:
        with urllib.request.urlopen(f"{address}/api/authentication_mode", timeout=10) as response:
            return json.loads(response.read()).get("authentication_mode")
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as error:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({error}); start one with "
            f"`ray start --head` or pass --address / set RAY_ADDRESS"
        ) from None


def find_token() -> tuple[str, str] | None:
    """The auth token and where it came from, looked up in Ray's order: RAY_AUTH_TOKEN,
    the file named by RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), TOKEN_ENV
    path = Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH).expanduser()
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), str(path)
    return None


def auth_headers(address: str, mode: str | None) -> dict[str, str]:
    """The Authorization header a cluster in `mode` needs (none when it runs without tokens)."""
    if mode == "disabled":
        return {}
    token = find_token()
    if token is None:
        if mode == "token":
            raise ClusterError(
                f"the Ray cluster at {address} uses token authentication and no token was found: set "
                f"{TOKEN_ENV}, or {TOKEN_PATH_ENV} to a file holding it, or write it to {DEFAULT_TOKEN_PATH}"
            )
        return {}
    return {"Authorization": f"Bearer {token[0]}"}


@contextmanager
def _api_address(address: str):
    # Ray's client replaces the address it is given with RAY_API_SERVER_ADDRESS or RAY_ADDRESS from
    # the environment; pin the one rayft resolved (an explicit --address must win) while it connects.
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if saved is None:
            del os.environ["RAY_API_SERVER_ADDRESS"]
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


class Cluster:
    """A connected Jobs API client with what rayft learned about the cluster."""

    def __init__(self, address: str | None = None):
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        self.address = resolve_address(address)
        self.auth_mode = cluster_auth_mode(self.address)
        self.headers = auth_headers(self.address, self.auth_mode)
        try:
            with _api_address(self.address):
                self.client = JobSubmissionClient(self.address, headers=dict(self.headers))
        except (ConnectionError, RuntimeError, AuthenticationError) as error:
            raise ClusterError(f"cannot use the Ray Jobs API at {self.address}: {error}") from None

    def head_node_ip(self) -> str | None:
        """The head node's IP as the cluster reports it (Ray's state API); None if it does not say."""
        request = urllib.request.Request(f"{self.address}/api/v0/nodes?limit=1000&detail=false", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                nodes = json.loads(response.read())["data"]["result"]["result"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return next((n.get("node_ip") for n in nodes if n.get("is_head_node")), None)

    @functools.cached_property
    def local(self) -> bool:
        """Whether the head runs on this machine (same disk, same interpreter): its node IP is one of
        this machine's addresses. A port-forward to a pod or VM is not local, though it is 127.0.0.1."""
        ip = self.head_node_ip()
        return is_loopback(self.address) if ip is None else ip in this_machines_addresses()

    def call(self, method: str, *args, **kwargs):
        """Call a JobSubmissionClient method; its errors become ClusterErrors naming the address."""
        from ray.exceptions import AuthenticationError

        try:
            return getattr(self.client, method)(*args, **kwargs)
        except (RuntimeError, AuthenticationError) as error:
            if "status code 404" in str(error) and "does not exist" in str(error):  # the Jobs API's answer
                raise JobGone(f"{self.address}: {error}") from None
            raise ClusterError(f"{self.address}: {error}") from None
        except OSError as error:  # requests' ConnectionError and timeouts: the head is unreachable now
            raise ClusterError(f"{self.address} does not answer: {error}") from None

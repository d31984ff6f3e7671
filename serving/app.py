"""`rayft serve`: one OpenAI-compatible endpoint for a base model and all its adapters, on Ray Serve.

setup   resolve the base (a path, hub id or `registry:NAME`) and its served name, the API and admin
        keys, and two deployments: the OpenAI ingress (`ingress.py`) and the vLLM engine (`engine.py`), whose
        replica count or autoscaling bounds come from the config
run     Ray Serve on `serve.host:serve.port`; adapters named in `serve.adapters` are loaded before
        the call returns, every other one on first use
report  `rayft serve` prints the URL and the served names, then runs until SIGTERM or Ctrl-C and
        drains (`lifecycle.py`)

A server without API keys on a host other machines can reach is refused unless the config says
`serve.allow_unauthenticated: true`.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
from ray import serve

from rayft import storage
from rayft.config import ConfigError, RayftConfig, ServeConfig
from rayft.registry import Registry, registry_base, verified_artifact
from rayft.serving.drain import DrainBoard
from rayft.serving.engine import ENGINE_ENV, EngineServer
from rayft.serving.ingress import OpenAIServer
from rayft.serving.routing import default_base_name

APP_NAME = "rayft"
DIRECT_PORTS = 4  # direct-ingress ports per ingress replica (see direct_ingress_env)
DIRECT_DRAIN_S = 2  # how long a stopping ingress replica keeps its direct port open (Serve's default: 30 s)
INGRESS_HEADROOM = 32
INGRESS_SETTINGS = {"max_concurrent_requests", "retry_after_s", "response_cache_size", "max_model_len",
                    "max_request_bytes", "max_json_depth", "max_stop", "max_prompt_tokens", "share_response_cache"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEYS_ENV = "RAYFT_API_KEYS"
ADMIN_KEYS_ENV = "RAYFT_ADMIN_KEYS"


def keys_from(configured: list[str], env: str) -> list[str]:
    """`configured` keys plus those in the environment variable `env` (comma-separated) and in the
    file `env`_FILE names (one per line or comma-separated: how Kubernetes secret volumes and the
    cluster launcher's file mounts deliver secrets). Blank entries are not keys."""
    text = os.environ.get(env, "")
    if os.environ.get(f"{env}_FILE"):
        path = Path(os.environ[f"{env}_FILE"])
        if not path.is_file():
            raise ConfigError(f"{env}_FILE: {path} is not a file")
        text += "," + path.read_text(encoding="utf-8").replace("\n", ",")
    return list(dict.fromkeys(configured + [k.strip() for k in text.split(",") if k.strip()]))


def api_keys(serve_config: ServeConfig) -> list[str]:
    """Keys of the OpenAI routes: `serve.api_keys`, `RAYFT_API_KEYS` and `RAYFT_API_KEYS_FILE`."""
    return keys_from(serve_config.api_keys, API_KEYS_ENV)


def admin_keys(serve_config: ServeConfig) -> list[str]:
    """Keys of the admin routes: `serve.admin_keys`, `RAYFT_ADMIN_KEYS` and `RAYFT_ADMIN_KEYS_FILE`."""
    return keys_from(serve_config.admin_keys, ADMIN_KEYS_ENV)


def engine_options(serve_config: ServeConfig) -> dict:
    """Ray Serve options of the engine deployment: a fixed replica count, or autoscaling bounds."""
    options = {
        "name": "engine", "max_ongoing_requests": serve_config.max_num_seqs * 2, "health_check_period_s": 10,
        "ray_actor_options": {"num_cpus": serve_config.cpus_per_engine or 1, "num_gpus": 1 if serve_config.use_gpu else 0,
                              "runtime_env": {"env_vars": ENGINE_ENV}},
    }
    if serve_config.min_replicas == serve_config.max_replicas:
        options["num_replicas"] = serve_config.max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": serve_config.min_replicas, "max_replicas": serve_config.max_replicas,
            "initial_replicas": max(1, serve_config.min_replicas),
            "target_ongoing_requests": serve_config.target_ongoing_requests,
        }
    return options


def direct_ingress_env(serve_config: ServeConfig) -> dict[str, str]:
    """What Ray Serve's controller and the ingress replicas read at start-up so that each ingress
    replica also serves HTTP itself on a port from `serve.direct_port` up (Ray Serve's direct
    ingress); empty when the option is off. A replica that is replaced may take the next port while
    the old one drains, hence a range of DIRECT_PORTS per ingress replica."""
    if serve_config.direct_port is None:
        return {}
    last = serve_config.direct_port + DIRECT_PORTS * serve_config.ingress_replicas - 1
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(serve_config.direct_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(min(last, 65535)),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DIRECT_DRAIN_S),
    }


def served_base(config: RayftConfig, registry: Registry) -> tuple[str, str | None, str | None]:
    """(path or URI, registry ref, weights hash) of the base: a registry version's registered hash
    (its local bytes checked against it here, so a mismatch is refused before Serve starts), a local
    folder's content hash, None for a hub id."""
    version = registry_base(config.model.base, registry)
    if version is not None:
        if not storage.is_remote(version.artifact_uri):
            verified_artifact(version)
        return version.artifact_uri, version.ref, version.weights_hash
    path = config.model.base
    return path, None, storage.content_hash(path) if Path(path).is_dir() else None


def check_exposure(settings: ServeConfig) -> None:
    """Refuse to listen where other machines can reach without keys, unless the config says so."""
    if settings.host not in LOOPBACK and not api_keys(settings) and not settings.allow_unauthenticated:
        raise ConfigError(f"serve.host {settings.host} can be reached from other machines and no API keys are set "
                          "(serve.api_keys or RAYFT_API_KEYS): anyone could use every model and, without admin "
                          "keys, load and unload adapters. Set keys, or serve.allow_unauthenticated: true")


def build_app(config: RayftConfig, registry_node: str | None = None):
    """The Serve application (ingress bound to one engine deployment) for `config`. The ingress
    reads the registry's SQLite file, so with `registry_node` (an IP) it is placed on that node."""
    check_exposure(config.serve)
    registry = Registry()
    base_path, base_ref, base_hash = served_base(config, registry)
    settings = config.serve
    engine = serve.deployment(EngineServer, **engine_options(settings)).bind(
        base_path, base_hash, base_ref, config.model.chat_template, settings.model_dump())
    ingress = settings.model_dump(include=INGRESS_SETTINGS) | {
        "base_name": settings.base_name or default_base_name(config.model.base, base_ref),
        "base_path": base_path, "base_ref": base_ref, "base_hash": base_hash, "registry_path": str(registry.path),
        "api_keys": api_keys(settings), "admin_keys": admin_keys(settings),
    }
    actor: dict = {"num_cpus": 0.25}
    if registry_node:
        actor["resources"] = {f"node:{registry_node}": 0.001}
    if settings.direct_port is not None:
        actor["runtime_env"] = {"env_vars": direct_ingress_env(settings)}
    # Serve queues what is over max_ongoing_requests; headroom above the ingress's own limit makes
    # the ingress answer 429 first, and leaves room for /health, /metrics and the admin routes.
    return OpenAIServer.options(num_replicas=settings.ingress_replicas, ray_actor_options=actor,
                                max_ongoing_requests=settings.max_concurrent_requests + INGRESS_HEADROOM,
                                ).bind(engine, ingress)


def start(config: RayftConfig) -> str:
    """Start the app on Ray Serve (returns once it answers) and return its base URL."""
    from rayft.runtime import ensure_ray

    ensure_ray(log_to_driver=False)  # the replicas' chatter goes to Ray's session logs, not the console
    DrainBoard(APP_NAME).clear()  # a drain flag left by an earlier server on this cluster
    direct = direct_ingress_env(config.serve)
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port},
                controller_options={"runtime_env": {"env_vars": direct}} if direct else None)
    app = build_app(config, registry_node=ray.util.get_node_ip_address())  # this process's registry
    handle = serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    for ref in config.serve.adapters:
        response = handle.load_adapter_by_ref.remote(ref).result()
        if response:
            raise ValueError(f"serve.adapters: {response}")
    return f"http://{config.serve.host}:{config.serve.port}"


def shutdown() -> None:
    """Stop the app and Ray Serve (Ray itself keeps running)."""
    serve.shutdown()

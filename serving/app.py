"""`rayft serve`: one OpenAI-compatible endpoint for a base model and all its adapters, on Ray Serve.

setup   resolve the base (a path, hub id or `registry:NAME`) and its served name once, the API and
        admin keys (`auth.py`) and the projects' (`rayft.projects`), and two deployments: the OpenAI
        ingress (`ingress.py`) and the vLLM engine (`engine.py`), whose replica count or
        autoscaling bounds come from the config; with the fine-tuning API on, the job runner too,
        and CPU reservations that leave a job's stages room on a small cluster (`reservations`)
run     Ray Serve on `serve.host:serve.port`; adapters named in `serve.adapters` are loaded before
        the call returns, every other one on first use
report  `rayft serve` prints the URL and the served names, then runs until SIGTERM or Ctrl-C and
        drains (`lifecycle.py`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve

from rayft import storage
from rayft.config import ConfigError, RayftConfig, ServeConfig
from rayft.home import rayft_home
from rayft.projects import ProjectDirectory
from rayft.registry import Registry, registry_base, verified_artifact
from rayft.service.files import files_root
from rayft.service.pipeline import ServicePaths
from rayft.service.runner import JobRunner
from rayft.serving.auth import KeyCheck, admin_keys, api_keys, check_exposure
from rayft.serving.drain import DrainBoard
from rayft.serving.engine import EngineServer
from rayft.serving.ingress import OpenAIServer
from rayft.serving.routing import ServedBase, default_base_name
from rayft.serving.startup import PhaseClock
from rayft.vllm_setup import VLLM_ENV

APP_NAME = "rayft"
DIRECT_PORTS = 4  # direct-ingress ports per ingress replica (see direct_ingress_env)
DIRECT_DRAIN_S = 2  # how long a stopping ingress replica keeps its direct port open (Serve's default: 30 s)
INGRESS_HEADROOM = 32
INGRESS_CPUS = 0.25
ROUTING_STATS_PERIOD_S = 1.0  # how often the engine router learns which adapters each replica holds


@dataclass(frozen=True)
class Reservations:
    """Logical CPUs Ray reserves for each engine and ingress replica, and why when they were cut."""

    engine: float
    ingress: float
    note: str | None = None


def reservations(serve_config: ServeConfig, cluster_cpus: float | None) -> Reservations:
    """What the serving deployments reserve. With the fine-tuning API on, the jobs it starts need
    `serve.fine_tuning.stage_cpus` logical CPUs free (a stage's Ray Data task beside an eval
    engine): on a cluster too small for both, the deployments' default reservations shrink to leave
    them (they are bookkeeping for Ray's scheduler: the engine still computes on every core), and a
    `cpus_per_engine` set by hand is kept, with a note that stages will wait."""
    engine, ingress = float(serve_config.cpus_per_engine or 1), INGRESS_CPUS
    wanted = engine * serve_config.max_replicas + ingress * serve_config.ingress_replicas
    stage = serve_config.fine_tuning.stage_cpus
    if not serve_config.fine_tuning.enabled or cluster_cpus is None or cluster_cpus - wanted >= stage:
        return Reservations(engine, ingress)
    if serve_config.cpus_per_engine is not None:
        return Reservations(
            engine,
            ingress,
            f"the cluster has {cluster_cpus:g} logical CPUs and serving reserves {wanted:g}: fine-tuning jobs' "
            f"stages need {stage:g} (serve.fine_tuning.stage_cpus) and will wait; lower serve.cpus_per_engine",
        )
    share = max(cluster_cpus - stage, 0) / wanted
    return Reservations(
        round(engine * share, 3),
        round(ingress * share, 3),
        f"the cluster has {cluster_cpus:g} logical CPUs: serving reserves {wanted * share:g} of them and leaves "
        f"{min(stage, cluster_cpus):g} to fine-tuning jobs' stages (serve.fine_tuning.stage_cpus)",
    )


def engine_options(serve_config: ServeConfig, cpus: float | None = None) -> dict:
    """Ray Serve options of the engine deployment: a fixed replica count, or autoscaling bounds;
    `cpus`: what each replica reserves (default `cpus_per_engine`, else 1)."""
    options = {
        "name": "engine",
        "max_ongoing_requests": serve_config.max_num_seqs * 2,
        "health_check_period_s": 10,
        "request_router_config": {
            "request_router_class": "rayft.serving.adapter_router.AdapterAffinityRouter",
            "request_routing_stats_period_s": ROUTING_STATS_PERIOD_S,
        },
        "ray_actor_options": {
            "num_cpus": (serve_config.cpus_per_engine or 1) if cpus is None else cpus,
            "num_gpus": 1 if serve_config.use_gpu else 0,
            "runtime_env": {"env_vars": VLLM_ENV | SERVE_PATH_ENV},
        },
    }
    if serve_config.max_engines_per_node:
        options["max_replicas_per_node"] = serve_config.max_engines_per_node
    if serve_config.min_replicas == serve_config.max_replicas:
        options["num_replicas"] = serve_config.max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": serve_config.min_replicas,
            "max_replicas": serve_config.max_replicas,
            "initial_replicas": max(1, serve_config.min_replicas),
            "target_ongoing_requests": serve_config.target_ongoing_requests,
        }
    return options


# Ray Serve's request path on one event loop per Serve process (user code and a handle's router on
# the replica's own loop, rather than a thread and a loop of their own: cross-thread hand-offs on
# every request), no per-request log lines to stderr, the objects made at start-up kept out of the
# garbage collector's passes. Ray Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED sets these, with gRPC and
# direct ingress, which rayft leaves as they are. Set in the controller's runtime env (the proxies
# and replicas it starts inherit it) and the replicas', never in the process that calls serve.run:
# its handles are used from synchronous code (bench/RESULTS.md, HTTP against vLLM's own server).
SERVE_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}


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


def served_base(config: RayftConfig, registry: Registry) -> ServedBase:
    """The base the config names, resolved once: a registry version with its registered hash (its
    local bytes checked against it here, so a mismatch is refused before Serve starts), a local
    folder with its content hash, or a hub id. A quantized version (`rayft quantize`) also serves
    the adapters of its source, when the registry still holds that source with the weights hash
    its lineage names."""
    version = registry_base(config.model.base, registry)
    name = config.serve.base_name or default_base_name(config.model.base, version.ref if version else None)
    if version is None:
        path = config.model.base
        return ServedBase(name, path, None, storage.content_hash(path) if Path(path).is_dir() else None)
    if not storage.is_remote(version.artifact_uri):
        verified_artifact(version)
    lineage = version.config.get("quantization")
    if not lineage:
        return ServedBase(name, version.artifact_uri, version.ref, version.weights_hash)
    source = registry.find_by_artifact(version.base_model)
    same = source is not None and source.weights_hash == lineage["source_weights_hash"]
    return ServedBase(
        name,
        version.artifact_uri,
        version.ref,
        version.weights_hash,
        {"scheme": lineage["scheme"], "method": lineage["method"], "source": lineage["source"]},
        version.base_model if same else None,
    )


def jobs_address(config: RayftConfig) -> str:
    """The Ray Jobs API fine-tuning jobs run on: `serve.fine_tuning.jobs_address`, else the
    dashboard of the cluster this server runs on."""
    from ray._private.worker import get_dashboard_url

    address = config.serve.fine_tuning.jobs_address or get_dashboard_url()
    if not address:
        raise ConfigError(
            "serve.fine_tuning runs jobs through a Ray cluster's Jobs API, and this Ray has no dashboard: "
            "start a head (`ray start --head`) and set RAY_ADDRESS, or set serve.fine_tuning.jobs_address"
        )
    return address if "://" in address else f"http://{address}"


def fine_tuning_runner(
    config: RayftConfig, registry: Registry, base: ServedBase, projects: ProjectDirectory, actor: dict
):
    """The job runner's deployment and the service's folders, or (None, None) when the API is off.
    The runner gets the config and the projects' limits without any key: it checks none."""
    if not config.serve.fine_tuning.enabled:
        return None, None
    home = rayft_home().resolve()
    paths = ServicePaths(
        home=str(home),
        registry=str(registry.path),
        files=files_root(config.serve.fine_tuning),
        jobs=str(home / "fine_tuning"),
    )
    settings = config.model_copy(deep=True)
    settings.serve.fine_tuning.jobs_address = jobs_address(config)
    settings.serve.api_keys, settings.serve.admin_keys, settings.serve.projects = [], [], {}
    settings.review.reviewers = {}
    runner = JobRunner.options(ray_actor_options=actor | {"num_cpus": 0}).bind(
        settings.model_dump(mode="json"), base.trained_on, paths, projects.without_keys()
    )
    return runner, paths


def build_app(
    config: RayftConfig,
    registry_node: str | None = None,
    base: ServedBase | None = None,
    cluster_cpus: float | None = None,
):
    """The Serve application (ingress bound to one engine deployment) for `config` and its `base`
    (resolved here when not given), reserving CPUs as `reservations` says for a cluster of
    `cluster_cpus`. The ingress reads the registry's SQLite file, so with `registry_node` (an IP)
    it is placed on that node."""
    serve_config = config.serve
    check_exposure(serve_config)
    registry = Registry()
    base = base or served_base(config, registry)
    cpus = reservations(serve_config, cluster_cpus)
    engine = serve.deployment(EngineServer, **engine_options(serve_config, cpus.engine)).bind(
        base.path,
        base.weights_hash,
        base.ref,
        config.model.chat_template,
        serve_config.model_dump(),
        config.model.tool_parser,
    )
    projects = ProjectDirectory.of(serve_config.projects, serve_config.fine_tuning)
    keys = KeyCheck(api_keys(serve_config) + projects.all_keys(), admin_keys(serve_config))
    actor: dict = {"num_cpus": cpus.ingress}
    if registry_node:
        actor["resources"] = {f"node:{registry_node}": 0.001}
    actor["runtime_env"] = {"env_vars": SERVE_PATH_ENV | direct_ingress_env(serve_config)}
    # Serve queues what is over max_ongoing_requests; headroom above the ingress's own limit makes
    # the ingress answer 429 first, and leaves room for /health, /metrics and the admin routes.
    placement = {k: v for k, v in actor.items() if k == "resources"}
    runner, paths = fine_tuning_runner(config, registry, base, projects, placement)
    return OpenAIServer.options(
        num_replicas=serve_config.ingress_replicas,
        ray_actor_options=actor,
        max_ongoing_requests=serve_config.max_concurrent_requests + INGRESS_HEADROOM,
    ).bind(engine, base, serve_config, keys, projects, str(registry.path), runner, paths)


def start(
    config: RayftConfig,
    base: ServedBase | None = None,
    clock: PhaseClock | None = None,
    before: Callable[[str], None] = lambda phase: None,
) -> str:
    """Start the app for `config` (and its `base`, resolved here when not given) on Ray Serve;
    returns once it answers, with its base URL. Each phase is timed on `clock`, and `before(phase)`
    runs first: `rayft serve` takes SIGTERM back from Ray there, and stops start-up when one came."""
    from rayft.runtime import ensure_ray

    clock = clock or PhaseClock()
    before("ray")
    with clock.phase("ray"):
        ensure_ray(log_to_driver=False)  # the replicas' chatter goes to Ray's session logs, not the console
    before("serve")
    with clock.phase("serve"):
        DrainBoard(APP_NAME).clear()  # a drain flag left by an earlier server on this cluster
        serve.start(
            http_options={"host": config.serve.host, "port": config.serve.port},
            controller_options={"runtime_env": {"env_vars": SERVE_PATH_ENV | direct_ingress_env(config.serve)}},
        )
    before("replicas")
    with clock.phase("replicas (engine and ingress)"):
        cpus = ray.cluster_resources().get("CPU")
        app = build_app(config, registry_node=ray.util.get_node_ip_address(), base=base, cluster_cpus=cpus)
        handle = serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    for name, seconds in handle.engine_startup.remote().result():
        clock.add(f"  engine: {name.strip()}" if not name.startswith("  ") else f"    {name.strip()}", seconds)
    with clock.phase("adapters (serve.adapters)"):
        for ref in config.serve.adapters:
            response = handle.load_adapter_by_ref.remote(ref).result()
            if response:
                raise ValueError(f"serve.adapters: {response}")
    return f"http://{config.serve.host}:{config.serve.port}"


def shutdown() -> None:
    """Stop the app and Ray Serve (Ray itself keeps running)."""
    serve.shutdown()

"""The Serve application of a KubeRay `RayService`: `rayft serve` without a driver process.

A RayService deploys applications named in its `serveConfigV2` by import path; this builder turns
`args: {config: PATH}` into the same application `rayft serve PATH` runs (ingress + vLLM engine).
"""

from __future__ import annotations


def app_builder(args: dict):
    """Ray Serve application builder: `import_path: rayft.cluster.service:app_builder`,
    `args: {config: /etc/rayft/CONFIG.yaml}`."""
    from rayft.config import ConfigError, load_config
    from rayft.serving.app import build_app

    if "config" not in args:
        raise ConfigError("serveConfigV2 args: give `config`, the path of a rayft config inside the pods")
    return build_app(load_config(args["config"]))

"""Running rayft on Ray clusters: `rayft submit` / `rayft jobs` over Ray's Jobs API (`submit.py`,
`jobs.py`, `client.py`), the RayService application builder (`service.py`), and manifests for
KubeRay (`kuberay/`) and the Ray cluster launcher (`launcher/`). See docs/cluster.md.
"""

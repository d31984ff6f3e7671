"""Routes requests to engine replicas (placeholder: Serve's default power-of-two choices)."""

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter


class AdapterAffinityRouter(PowerOfTwoChoicesRequestRouter):
    pass

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test process: 2 CPUs and 2 logical GPUs (none real; Ray only
    counts them), dashboard off. ray.init takes ~5-7 s here, so it is shared."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()

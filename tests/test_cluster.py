"""Resources are checked node by node (a trial runs on one node), and the trials at once are
the fewest of CPU and GPU slots on each node. Ray's nodes are mocked: no cluster needed."""

from __future__ import annotations

import pytest
from models import space_yaml

from spiralsearch.search import cluster
from spiralsearch.search.cluster import ClusterError, check_resources, fits, slots
from spiralsearch.search.space import parse_space

GIB = 1 << 30


def space(resources: str, search: str = "sampler: tpe, scheduler: none, "
          "samples_per_budget: 1, seed: 0"):
    return parse_space(space_yaml("res", resources=resources, search=search))


def node(cpu: float, gpu: float = 0, memory_gib: float = 64) -> dict[str, float]:
    return {"CPU": cpu, "GPU": gpu, "memory": memory_gib * GIB}


def test_a_trial_is_checked_per_node_not_against_the_sum():
    """Two nodes of 8 CPUs: a 12-CPU trial fits neither (Ray would wait forever), though the
    cluster has 16."""
    nodes = [node(8, 1), node(8, 1)]
    check_resources(space("cpu: 8, gpu: 1"), nodes, "the Ray cluster")  # either holds it
    with pytest.raises(ClusterError, match=r"resources\.cpu: each trial asks 12 CPUs but no "
                       r"node of the Ray cluster has that many \(the most on one node: 8\)"):
        check_resources(space("cpu: 12, gpu: 0"), nodes, "the Ray cluster")
    with pytest.raises(ClusterError, match=r"resources\.gpu: each trial asks 1 GPUs but this "
                       r"machine has 0"):
        check_resources(space("cpu: 1, gpu: 1"), [node(2)], "this machine")


def test_cpu_and_gpu_must_be_on_the_same_node():
    """One node has the GPU, the other the CPUs: a 4-CPU, 1-GPU trial fits neither."""
    nodes = [node(2, 1), node(16, 0)]
    with pytest.raises(ClusterError, match="no node of the Ray cluster has the CPUs, GPUs"):
        check_resources(space("cpu: 4, gpu: 1"), nodes, "the Ray cluster")


def test_concurrency_is_the_fewest_of_cpu_and_gpu_slots():
    """16 CPUs, 1 GPU, gpu: 0.25: 4 trials at once, not 16."""
    s = space("cpu: 1, gpu: 0.25")
    assert fits(s, node(16, 1)) == 4 and slots(s, [node(16, 1)]) == 4
    assert slots(s, [node(16, 1), node(2, 2)]) == 4 + 2  # per node, then summed
    assert slots(space("cpu: 1, gpu: 0"), [node(16, 1)]) == 16
    assert slots(space("cpu: 2, gpu: 0"), [node(3)]) == 1
    assert slots(s, [node(16, 1)], max_concurrent=3) == 3  # --max-concurrent wins
    capped = space("cpu: 1, gpu: 0.25", "sampler: tpe, scheduler: none, samples_per_budget: 1, "
                   "seed: 0, max_concurrent: 2")
    assert slots(capped, [node(16, 1)]) == 2
    assert slots(space("cpu: 1, gpu: 0, memory_gb: 8"), [node(16, 0, 20)]) == 2  # memory


def test_the_running_cluster_is_read_node_by_node(monkeypatch):
    """_check_cluster reads ray.nodes() (alive ones only), not the cluster's totals."""
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [
        {"Alive": True, "Resources": node(8, 1)}, {"Alive": True, "Resources": node(8, 1)},
        {"Alive": False, "Resources": node(64, 8)}])  # a dead node holds nothing
    assert cluster._check_cluster(space("cpu: 8, gpu: 1")) == [node(8, 1), node(8, 1)]
    with pytest.raises(ClusterError, match="asks 12 CPUs"):
        cluster._check_cluster(space("cpu: 12, gpu: 0"))
    # a data-parallel trial's workers spread over nodes: 2 workers of 8 CPUs fit 8 + 8
    assert cluster._check_cluster(space("cpu: 8, gpu: 0, workers: 2"))
    with pytest.raises(ClusterError, match=r"resources\.workers: 4 workers"):
        cluster._check_cluster(space("cpu: 8, gpu: 0, workers: 4"))


@pytest.mark.parametrize("entries, message", [
    (dict(train="micro_batch: 3"), "train.micro_batch: 3 does not divide batch_size 4"),
    (dict(train="micro_batch: 4", batch_size="{choice: [4, 6]}"),
     "train.micro_batch: 4 does not divide batch_size 6"),
    # how a step runs is not a design choice: it is not part of a trial's identity
    (dict(train="micro_batch: {choice: [2, 4]}"), "train.micro_batch: says how a trial's "
     "steps run, not what they compute, so it takes one value, not a distribution"),
])
def test_rules_between_keys_refuse_the_space_not_a_trial(entries, message):
    """A rule between two keys of a section holds for every combination of its values, at
    validation (dry-run and run), not in the worker."""
    from spiralsearch.search.space import SpaceError

    with pytest.raises(SpaceError, match=message):
        parse_space(space_yaml("rules", **entries))
    parse_space(space_yaml("rules", train="micro_batch: 2"))  # divides 4: fine


def test_tunes_slow_loop_warnings_are_not_printed(caplog):
    """'... may be a performance bottleneck' (Tune timing its own loop) is nothing a user can
    act on; other warnings from the same logger still show."""
    import logging

    cluster._quiet()
    log = logging.getLogger("ray.tune.utils.util")
    with caplog.at_level(logging.WARNING):
        log.warning("The `process_trial_result` operation took 0.9 s, which may be a "
                    "performance bottleneck.")
        log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]

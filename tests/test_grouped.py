import pytest
from ray.tune.search import Searcher

from spiralsearch.search.grouped import FixedSearch, GroupedSearch


class Sequence_(Searcher):
    """Suggests lr values from a list, and remembers what it was told."""

    def __init__(self, values):
        super().__init__(metric="objective", mode="min")
        self.values, self.told, self.added = list(values), {}, []

    def suggest(self, trial_id):
        return {"train.lr": self.values.pop(0)} if self.values else None

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = result

    def add_evaluated_point(self, params, value):
        self.added.append((params, value))


def test_round_robin_quotas_resume_and_dedupe():
    a, b = Sequence_([1, 2, 3, 4]), Sequence_([10, 20])
    known = {(0, 1): {"objective": 0.5}}  # group 0 finished lr=1 in an earlier run
    search = GroupedSearch([a, b], quotas=[3, 1], metric="objective", mode="min",
                           first=[[{"train.lr": 7}], []],
                           known=lambda g, p: known.get((g, p["train.lr"])))
    got = [search.suggest(f"t{i}") for i in range(5)]
    assert got[:4] == [
        {"group": 0, "params": {"train.lr": 7}},  # the unfinished trial goes first
        {"group": 1, "params": {"train.lr": 10}},
        {"group": 0, "params": {"train.lr": 2}},  # lr=1 is known: taught, not re-run
        {"group": 0, "params": {"train.lr": 3}},
    ]
    assert got[4] == Searcher.FINISHED
    assert a.told == {"t2": {"objective": 0.5}}
    search.on_trial_complete("t0", {"objective": 0.4})  # the resumed trial's result
    assert a.added == [({"train.lr": 7}, 0.4)]
    search.on_trial_complete("t3", {"objective": 0.3})
    assert a.told["t3"] == {"objective": 0.3}


def test_fixed_search_suggests_empty_params():
    assert FixedSearch(metric="objective", mode="min").suggest("t") == {}


def test_points_already_running_are_not_proposed_again():
    """A seeded sampler replays its first run's points on a re-run: the one still queued for
    resumption must not run twice, and an exhausted group stops instead of repeating."""
    a = Sequence_([7, 7, 8] + [8] * 30)
    search = GroupedSearch([a], quotas=[3], metric="objective", mode="min",
                           first=[[{"train.lr": 7}]])
    assert search.suggest("t0") == {"group": 0, "params": {"train.lr": 7}}
    assert search.suggest("t1") == {"group": 0, "params": {"train.lr": 8}}  # 7: running
    assert a.told["t1"] is None  # the repeat was marked failed in its study
    assert search.suggest("t2") == Searcher.FINISHED  # only repeats left


@pytest.mark.parametrize("ours, theirs", [
    ("spiralsearch.search.recorder:StoreCallback", "ray.tune:Callback"),
    ("spiralsearch.search.grouped:GroupedSearch", "ray.tune.search:Searcher"),
    ("spiralsearch.search.grouped:FixedSearch", "ray.tune.search:Searcher"),
    ("spiralsearch.search.grouped:PointSearch", "ray.tune.search:Searcher"),
    ("spiralsearch.search.grouped:GroupedASHA", "ray.tune.schedulers:FIFOScheduler"),
])
def test_every_hook_we_define_is_one_ray_calls(ours, theirs):
    """A misspelt hook is never called and fails silently (an `on_step` that Ray 2.60 does
    not have left the progress heartbeat dead): each on_* method must exist on Ray's base."""
    import importlib

    def load(path):
        module, name = path.split(":")
        return getattr(importlib.import_module(module), name)

    cls, base = load(ours), load(theirs)
    hooks = [n for n in vars(cls) if n.startswith("on_")]
    assert hooks and [h for h in hooks if not hasattr(base, h)] == []

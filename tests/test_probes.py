import math

import pandas as pd
import pytest
import torch

from spiralsearch import ModelConfig, build_model
from spiralsearch.analysis.probes import attention_probes, dynamic_heads, head_stats
from spiralsearch.cli import main


def tiny(spec):
    return build_model(ModelConfig.from_spec(spec, "tiny", d_model=32, n_heads=2,
                                             vocab_size=17, max_seq_len=64))


def test_one_row_per_iteration_layer_and_head():
    torch.manual_seed(0)
    model = tiny("1+2x{1/4@1,1/2,1}+1")
    df = attention_probes(model, torch.randint(0, 17, (5, 22)), batch_size=2)
    assert len(df) == 3 * 2 * 2
    assert df.groupby("iteration")["positions"].first().tolist() == [6, 11, 22]  # L_t
    assert df["chunk"].tolist()[:4] == [4, 4, 4, 4] and set(df["offset"]) == {0, 1}
    assert df["entropy_norm"].between(0, 1).all() and df["lam"].between(0, 1).all()
    assert all(blk.attn.probe is None for blk in model.core)  # hooks removed


def test_uniform_attention_matches_the_formulas():
    """Zero queries and keys: every query spreads evenly over its causal keys, so
    p(k) = (1/L) sum_{q >= k} 1/(q+1) and LAM = mean_q min(w, q+1)/(q+1)."""
    L, w = 9, 3
    q = torch.zeros(1, 2, L, 4)
    stats = head_stats(q, q, w)[0, 0]
    p = [sum(1 / (qq + 1) for qq in range(k, L)) / L for k in range(L)]
    entropy = -sum(x * math.log(x) for x in p)
    lam = sum(min(w, qq + 1) / (qq + 1) for qq in range(L)) / L
    assert stats.tolist() == pytest.approx([entropy, entropy / math.log(L), lam])


def test_sharp_attention_on_the_first_key():
    """Keys that all queries match only at position 0: entropy -> 0, LAM -> 0 far away."""
    L = 8
    k = torch.zeros(1, 1, L, 2)
    k[..., 0, 0] = 100.0
    q = torch.zeros(1, 1, L, 2)
    q[..., 0] = 1.0
    h, hn, lam = head_stats(q, k, window=1)[0, 0].tolist()
    assert h < 1e-6 and hn < 1e-6
    assert lam == pytest.approx(1 / L)  # only query 0 has key 0 in its window


def test_dynamic_heads_ranks_by_range():
    df = pd.DataFrame([dict(iteration=t, layer=l, head=h, entropy=0.0, entropy_norm=v, lam=0.0)
                       for (l, h), vs in {(0, 0): [0.1, 0.9], (0, 1): [0.5, 0.5],
                                          (1, 0): [0.2, 0.4], (1, 1): [0.3, 0.1],
                                          (2, 0): [0.0, 0.0]}.items()
                       for t, v in enumerate(vs)])
    top = dynamic_heads(df, "entropy_norm", top=0.4)
    assert list(zip(top["layer"], top["head"], strict=True)) == [(0, 0), (1, 0)]
    assert top["range"].tolist() == pytest.approx([0.8, 0.2])
    with pytest.raises(ValueError, match="not one of"):
        dynamic_heads(df, "perplexity")


def test_cli_probe_on_a_trained_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "--spec", "1+1x{1/2,1}+0", "--d-model", "32", "--n-heads", "2",
                 "--seq-len", "32", "--batch-size", "4", "--budget-tokens", str(4 * 32 * 4),
                 "--evals", "1", "--eval-batches", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["probe", str(out), "--sequences", "4", "--format", "json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert len(data["probes"]) == 2 * 1 * 2  # iterations x core layers x heads
    assert {"layer", "head", "range"} <= set(data["dynamic_heads"]["lam"][0])


@pytest.mark.slow
def test_cli_probe_scores_the_runs_own_split_and_tokenizer(tmp_path, monkeypatch, capsys):
    """With split_seed 1 and a BPE tokenizer, the probe's held-out sequences are the run's
    validation windows, tokenized by the run's tokenizer (the split_seed-0 data differ)."""
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "--spec", "1+1x{1/2,1}+0", "--d-model", "32", "--n-heads", "2",
                 "--seq-len", "32", "--batch-size", "4", "--budget-tokens", str(4 * 32 * 2),
                 "--evals", "1", "--eval-batches", "1", "--split-seed", "1",
                 "--tokenizer", "bpe:300", "--out", str(out)]) == 0
    capsys.readouterr()
    import spiralsearch.analysis.probes as probes
    from spiralsearch.data.dataset import load_dataset

    seen = []
    real = probes.attention_probes
    monkeypatch.setattr(probes, "attention_probes",
                        lambda model, x, **kw: seen.append(x) or real(model, x, **kw))
    assert main(["probe", str(out), "--sequences", "4", "--format", "json"]) == 0
    run_ds = load_dataset("corpus:sotu", "bpe:300", val_fraction=0.1, test_fraction=0.1, seed=1)
    other = load_dataset("corpus:sotu", "bpe:300", val_fraction=0.1, test_fraction=0.1, seed=0)
    expected, _ = next(run_ds.val_batches(4, 32, 1))
    assert torch.equal(seen[0], expected)
    assert not torch.equal(seen[0], next(other.val_batches(4, 32, 1))[0])
    assert int(seen[0].max()) < 300


def test_a_plain_model_has_nothing_to_probe():
    model = build_model(ModelConfig.from_spec("4", d_model=32, n_heads=2, vocab_size=17))
    with pytest.raises(ValueError, match=r"^probe: spec 4 has no shared core"):
        attention_probes(model, torch.zeros(1, 8, dtype=torch.long))


def test_uniform_baseline_is_uniform_causal_attention():
    """The report's baseline: what the probes read when every query spreads evenly over its
    causal keys (the formulas above), and log L for a uniform key marginal."""
    from spiralsearch.analysis.probes import uniform_baseline

    L, w = 9, 3
    p = [sum(1 / (qq + 1) for qq in range(k, L)) / L for k in range(L)]
    base = uniform_baseline(L, w)
    assert base["entropy"] == pytest.approx(-sum(x * math.log(x) for x in p))
    assert base["lam"] == pytest.approx(sum(min(w, qq + 1) / (qq + 1) for qq in range(L)) / L)
    assert base["entropy_max"] == pytest.approx(math.log(L))
    assert base["entropy_max"] > base["entropy"]

"""The README is a promise: every Python block runs, and every `spiralsearch` command in its
bash blocks runs through the CLI and succeeds (in a scratch folder holding a small results
file where a command reads one). `make` lines are the contract CI itself runs."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from spiralsearch.cli import main
from spiralsearch.store import ResultsStore

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text()) if kind == lang]


def commands() -> list[str]:
    """Every `spiralsearch ...` command of the bash blocks, continuation lines joined (a
    backslash, or an open quote carried to the next line)."""
    out = []
    for body in blocks("bash"):
        text = body.replace("\\\n", " ")
        lines, pending = [], ""
        for line in text.splitlines():
            pending = f"{pending} {line.strip()}" if pending else line.strip()
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # an unclosed quote: the command goes on
                continue
            lines.append(pending)
            pending = ""
        out += [c for c in lines if c.startswith("spiralsearch ")]
    # and the full commands quoted inline (e.g. the counting table's), not the placeholders
    # of the command table (SPEC, DIR...), fragments, or the one that needs the network
    for c in re.findall(r"`(spiralsearch [^`]+)`", README.read_text()):
        if (len(shlex.split(c)) >= 4 and not re.search(r"\b[A-Z][A-Z_]+\b|\.\.\.|\[", c)
                and "data fetch" not in c):
            out.append(c)
    return out


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A folder with results/quickstart.duckdb (a few complete trials) and tests/data (the
    files README commands import), the README's cwd."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(README.parent / "tests" / "data", tmp_path / "tests" / "data")
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    store = ResultsStore(tmp_path / "results" / "quickstart.duckdb")
    store.begin_sweep("quickstart", "name: quickstart\n")
    rows = [dict(sweep="quickstart", config={"model": {"spec": spec}, "budget": {"value": b}},
                 family=family, spec=spec, status="complete", budget_kind="flops",
                 budget_target=b, final_val_loss=3.0 - 0.1 * i - (0.05 if family == "spiral"
                                                                  else 0.0))
            for family, spec in (("plain", "4"), ("spiral", "1+2x{1/4,1/2,1}+1"))
            for i, b in enumerate((1.5e11, 3e11, 6e11))]
    store.write(trials=rows)
    store.end_sweep("quickstart")
    return tmp_path


def test_readme_has_blocks_to_run():
    assert len(blocks("python")) >= 3 and len(commands()) >= 3


@pytest.mark.parametrize("i", range(len(blocks("python"))))
def test_python_block_runs(i, scratch):
    exec(compile(blocks("python")[i], f"README.md python block {i}", "exec"), {})


@pytest.mark.slow
@pytest.mark.parametrize("command", commands())
def test_command_runs(command, scratch, capsys):
    argv = shlex.split(command, comments=True)[1:]
    assert main(argv) == 0, capsys.readouterr().err

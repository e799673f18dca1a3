"""Every committed benchmark result names the command that wrote it, and that command writes it.

A result file whose stated command is missing, prints without writing, or writes somewhere else
is one a person must have edited by hand (the audit that found the SAE table typed in). Running
the commands is the benchmarks' job (minutes to hours); this checks the paper trail.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = re.compile(r"^Command: `([^`]+)`", re.MULTILINE)


def _command(md: Path) -> str:
    head = "\n".join(md.read_text().splitlines()[:8])
    found = COMMAND.search(head)
    assert found, f"{md.name}: no 'Command: `...`' line near the top"
    return found.group(1)


def _writer(command: str) -> Path:
    """The script a stated command runs (``pipelines/benchmark.py`` for ``discovery benchmark``)."""
    if command.startswith("discovery benchmark"):
        return ROOT / "pipelines" / "benchmark.py"
    script = re.search(r"(benchmarks/\w+\.py)", command)
    assert script, f"the command {command!r} runs no script under benchmarks/"
    return ROOT / script.group(1)


@pytest.mark.parametrize("md", sorted(RESULTS.glob("*.md")), ids=lambda p: p.name)
def test_each_result_names_the_command_that_writes_it(md):
    command = _command(md)
    writer = _writer(command)
    assert writer.is_file(), f"{md.name}: {writer.relative_to(ROOT)} does not exist"
    source = writer.read_text()
    assert "Command:" in source, f"{writer.name} does not write its command into its result"
    out = re.search(r"--out (\S+)", command)
    if out:
        assert out.group(1) == f"benchmarks/results/{md.name}", (
            f"{md.name} says it was written to {out.group(1)}")
    else:  # the script's default destination: an argparse default or a module constant
        dest = re.compile(rf"(default=|^[A-Z_]+ = ).*[\"'/]{re.escape(md.name)}[\"']",
                          re.MULTILINE)
        assert dest.search(source), f"{md.name}: {writer.name} writes no file of that name"
        assert "write_text(" in source, (
            f"{writer.name} only prints: {md.name} cannot have come from it")


def test_every_data_file_beside_the_results_has_a_writer():
    """The CSV and JSON companions are written by a command stated in a result file."""
    commands = " ".join(_command(md) for md in RESULTS.glob("*.md"))
    sources = " ".join(p.read_text() for p in (ROOT / "benchmarks").glob("*.py"))
    for data in sorted([*RESULTS.glob("*.csv"), *RESULTS.glob("*.json")]):
        stem = data.name.split(".")[0]
        assert (f"--csv benchmarks/results/{stem}" in commands
                or f"benchmarks/results/{data.name}" in sources), (
            f"{data.name}: no stated command writes it")


def test_a_print_only_script_would_be_caught(tmp_path, monkeypatch):
    """The check fails on the kind of file it exists to catch."""
    fake = tmp_path / "benchmarks" / "results"
    fake.mkdir(parents=True)
    (tmp_path / "benchmarks" / "bench_x.py").write_text('print("Command: `python x`")\n')
    md = fake / "x.md"
    md.write_text("# X\n\nCommand: `python benchmarks/bench_x.py`\n\n| a |\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="writes no file of that name|only prints"):
        test_each_result_names_the_command_that_writes_it(md)

"""The CLI surface: every command documents itself with an example."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from blagpt.cli import cli


def _commands(group, prefix=()):
    """Every command path of the CLI, groups included (a new command is covered by itself)."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        path = [*prefix, name]
        if not isinstance(cmd, click.Group) or cmd.invoke_without_command:
            out.append(path)
        if isinstance(cmd, click.Group):
            out += _commands(cmd, path)
    return out


COMMANDS = _commands(cli)
assert len(COMMANDS) >= 15, COMMANDS


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(cmd):
    out = CliRunner().invoke(cli, [*cmd, "--help"])
    assert out.exit_code == 0
    assert "Example" in out.output and f"blagpt {' '.join(cmd)}" in out.output


def test_top_level_help_and_version():
    out = CliRunner().invoke(cli, ["--help"])
    assert out.exit_code == 0 and "torchrun" in out.output
    assert "0.1.0" in CliRunner().invoke(cli, ["--version"]).output


def test_resume_refuses_a_new_model(tmp_path):
    from conftest import run_cli

    proc = run_cli(["train", "--resume", "x", "--model", "tinylm"], cwd=tmp_path)
    assert proc.returncode == 2 and "--resume takes the run's own config" in proc.stderr
    proc = run_cli(["train", "--resume", "nothing-here", "--no-track"], cwd=tmp_path)
    assert proc.returncode == 1 and "--resume nothing-here: no run folder" in proc.stderr

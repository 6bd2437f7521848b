"""Every ``proveniq … --help`` page, walked: each flag names its ``PROVENIQ_*`` variable,
no type placeholder like ``<bool>`` or ``<str>``, no reStructuredText markup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from typer.main import get_command
from typer.testing import CliRunner

from proveniq_core.cli import app

PLACEHOLDER = re.compile(r"<[a-z][a-z |]*>")
RST = re.compile(r"``|:[a-z]+:`|(^|\s)\.\. [a-z]+::")


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group under ``command``, with the words that invoke it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def test_every_help_page_names_each_flags_variable_without_placeholders() -> None:
    """For every command: each option but --help (and a hidden one) shows 'env var:
    PROVENIQ_…' in its help; no <type> placeholder and no ``markup`` appear anywhere."""
    runner = CliRunner()
    seen = 0
    for path, command in commands(get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        text = " ".join(result.output.split())
        assert not PLACEHOLDER.search(text), (path, PLACEHOLDER.findall(text))
        assert not RST.search(text), (path, RST.findall(text))
        for param in command.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            if getattr(param, "hidden", False):  # not for people (serve's --listen-fd)
                assert not any(opt in text for opt in param.opts), (path, param.opts)
                continue
            assert isinstance(param.envvar, str), (path, param.name)
            assert param.envvar.startswith("PROVENIQ_"), (path, param.name)
            assert f"env var: {param.envvar}" in text, (path, param.name)
            seen += 1
    assert seen > 60  # the walk reached the commands' options


def test_choices_show_in_help_and_refuse_others() -> None:
    """--role, --log-format and --event-loop list their choices in serve --help (the real
    command); --log-format refuses another value naming the choices."""
    env = {**os.environ, "COLUMNS": "200"}
    serve = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    for choice in (
        "--role api|worker|all",
        "--log-format json|console",
        "--event-loop asyncio|uvloop",
        "--log-level debug|info|warning|error",
    ):
        assert choice in serve
    refused = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "serve", "--log-format", "xml"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert refused.returncode == 2
    assert "'xml' is not one of 'json', 'console'" in refused.stderr


def test_top_level_help_states_where_each_command_connects() -> None:
    """proveniq --help states the connection rule: which commands use the service's API,
    which open the database, and that only serve and migrate create one."""
    top = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text = " ".join(top.split())
    assert "dlq, assets, lockers, circuits and demo act through the running service's HTTP API" in (
        text
    )
    assert "keys, audit and sagas read and change stored records" in text
    assert "They never create a database." in text
    assert "serve and migrate open the same database, and only they create it" in text

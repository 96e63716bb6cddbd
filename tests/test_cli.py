"""Every command's options are generated from its config dataclass: same names, defaults and help."""

from __future__ import annotations

import dataclasses

import click
from click.testing import CliRunner

from pipeline import main


def leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, f"{prefix}{name} "))
        else:
            found[prefix + name] = command
    return found


def test_every_command_matches_its_config() -> None:
    commands = leaf_commands(main)
    assert {"extract", "regions import-tsv"} <= set(commands)
    for name, command in commands.items():
        config = getattr(command.callback, "config_class", None)
        assert config is not None, f"{name} has no config dataclass"
        fields = {f.name: f for f in dataclasses.fields(config)}
        params = {p.name: p for p in command.params}
        assert set(params) == set(fields), name
        for field_name, field in fields.items():
            param = params[field_name]
            if isinstance(param, click.Option):
                assert f"--{field_name.replace('_', '-')}" in param.opts, (name, field_name)
                assert param.help == field.metadata["help"], (name, field_name)
            if field.default is not dataclasses.MISSING:
                expected = () if param.multiple and field.default is None else field.default
                assert param.default == expected, (name, field_name)
            else:
                assert param.required, (name, field_name)


def test_help_works_for_every_command() -> None:
    runner = CliRunner()
    for name in leaf_commands(main):
        result = runner.invoke(main, [*name.split(), "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


def test_config_validation_is_a_usage_error(tmp_path) -> None:
    result = CliRunner().invoke(
        main,
        ["extract", "--games", "g", "--regions", "r", "--out", str(tmp_path / "o.h5"), "--batch-size", "0"],
    )
    assert result.exit_code == 2 and "--batch-size must be ≥ 1" in result.output


def test_interrupt_says_how_to_continue(tmp_path, monkeypatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("extract.job.run_extract", interrupted)
    args = ["extract", "--games", "g.jsonl", "--regions", "r.h5", "--out", str(tmp_path / "o.h5"), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and "Interrupted. Work finished so far is kept" in result.output
    assert "rerun the same command with --resume" in result.output and "Traceback" not in result.output

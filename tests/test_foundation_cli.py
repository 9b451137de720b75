"""The `orthofm` console script: discovery of sub-command modules, --help, --version, errors, exit codes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import orthofm
from orthofm import cli
from orthofm.utils.runtime import has_native_bf16

ORTHOFM = Path(sys.executable).parent / "orthofm"
HEAVY = ("torch", "monai", "monailabel", "timm", "transformers", "itk", "faiss")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ORTHOFM), *args], capture_output=True, text=True, timeout=300, check=False)


def test_version_matches_package_and_installed_metadata() -> None:
    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"orthofm {orthofm.__version__}"
    assert metadata.version("orthofm") == orthofm.__version__  # the editable install is not stale


def test_help_lists_every_discovered_command_without_warnings() -> None:
    parser, discovery = cli.build_parser()
    assert discovery.failures == {}, f"sub-command modules that do not load: {discovery.failures}"
    names = [m.__name__.rsplit(".", 1)[-1] for m in discovery.modules]
    assert "env" in names
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no sub-commands registered"
    for command in sub.choices:
        assert f"    {command} " in result.stdout or f"    {command}\n" in result.stdout, command


def test_no_command_prints_usage_and_exits_2() -> None:
    result = _run()
    assert result.returncode == 2
    assert "usage: orthofm" in result.stderr


def test_unknown_command_is_rejected() -> None:
    result = _run("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_python_dash_m_is_the_same_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "orthofm.cli", "--version"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.stdout.strip() == f"orthofm {orthofm.__version__}"


def test_help_imports_no_heavy_library() -> None:
    """`orthofm --help` must answer instantly: sub-command modules import torch & co. inside their run()."""
    probe = textwrap.dedent(f"""
        import importlib, json, sys
        import orthofm.cli as cli
        heavy = {HEAVY!r}
        blame = {{}}
        for name in cli._command_module_names():
            before = {{h for h in heavy if h in sys.modules}}
            importlib.import_module(name)
            new = sorted(h for h in heavy if h in sys.modules and h not in before)
            if new:
                blame[name] = new
        cli.build_parser()
        print(json.dumps(blame))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}, "move these imports into the sub-command's run(): " + result.stdout


def test_env_command_reports_this_machine_as_json() -> None:
    result = _run("env", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["native_bf16"] is has_native_bf16()
    assert facts["best_inference_dtype"] == ("bfloat16" if has_native_bf16() else "float32")
    assert facts["inference_engine"] in ("openvino", "torch")
    assert facts["libraries"]["orthofm"] == orthofm.__version__
    assert facts["torch_threads"] >= 1


@pytest.fixture(autouse=True)
def _restore_orthofm_log_level() -> None:
    """cli.main() configures logging; keep that from leaking into other tests' caplog."""
    logger = logging.getLogger("orthofm")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture()
def extra_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sub-command modules in an extra folder on ``orthofm.cli.__path__``, discovered like the real ones."""
    (tmp_path / "zzgood.py").write_text(textwrap.dedent("""
        def register(subparsers):
            p = subparsers.add_parser("zzgood", help="a test command")
            p.add_argument("--fail", action="store_true")
            p.set_defaults(func=run)

        def run(args):
            if args.fail:
                raise ValueError("input image /x.png has 0 pixels")
            return 3
    """))
    (tmp_path / "zzbroken.py").write_text("import no_such_module_for_orthofm_test\n")
    (tmp_path / "zznoreg.py").write_text("X = 1\n")
    (tmp_path / "_zzprivate.py").write_text("raise SystemExit('private modules must not be imported')\n")
    monkeypatch.setattr(cli, "__path__", [*cli.__path__, str(tmp_path)])
    yield tmp_path
    for name in ("zzgood", "zzbroken", "zznoreg"):
        sys.modules.pop(f"orthofm.cli.{name}", None)


def test_broken_modules_are_reported_and_the_rest_still_work(extra_commands: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, discovery = cli.build_parser()
    assert set(discovery.failures) == {"zzbroken", "zznoreg"}
    assert "ModuleNotFoundError" in discovery.failures["zzbroken"]
    assert "no register" in discovery.failures["zznoreg"]
    assert cli.main(["zzgood"]) == 3
    err = capsys.readouterr().err
    assert "sub-command module 'zzbroken' could not be loaded" in err


def test_command_errors_exit_1_with_a_message_or_traceback_on_request(extra_commands: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "zzgood", "--fail"]) == 1
    err = capsys.readouterr().err
    assert "orthofm zzgood: error: input image /x.png has 0 pixels" in err
    assert "Traceback" not in err
    with pytest.raises(ValueError, match="0 pixels"):
        cli.main(["--traceback", "zzgood", "--fail"])

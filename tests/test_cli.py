"""One CLI dialect (issue 11): every command exits 2 on bad input with one message that starts
with the file, key or option at fault; ``--help`` documents the exit statuses; optional
dependencies fail with the extra to install; the CLI and ML modules import no cycle."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.cli.common import EXIT_FAILED, EXIT_INPUT, EXIT_OK
from bridge.core.extras import EXTRAS, MissingExtraError, require_extra

ROOT = Path(__file__).resolve().parent.parent
BAD_KEY = '[[devices]]\nname = "d"\nhost = "127.0.0.1"\n[[devices.tags]]\nname = "x"\nadress = 0\n'


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_KEY, encoding="utf-8")
    return path


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["train", "--help"]])
def test_help_lists_the_exit_statuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "exit status:" in out
    for status in (EXIT_OK, EXIT_FAILED, EXIT_INPUT):
        assert f"\n  {status}  " in out, out


@pytest.mark.parametrize("command", [["check"], ["run"], ["registers"],
                                     ["record", "--duration", "1s", "--out", "rec"]])
def test_bad_config_exits_2_naming_file_and_key(command: list[str], bad_config: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command[0], str(bad_config), *command[1:]]
    assert main(argv) == EXIT_INPUT
    assert f"{bad_config}: devices[0].tags[0].adress: unknown key" in _err(capsys)


@pytest.mark.parametrize("command", ["check", "run", "registers", "record"])
def test_missing_config_file_is_named_once(command: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    extra = ["--duration", "1s", "--out", str(tmp_path)] if command == "record" else []
    assert main([command, str(missing), *extra]) == EXIT_INPUT
    err = _err(capsys)
    assert err.startswith(f"{missing}: cannot read") and err.count(str(missing)) == 1, err


@pytest.mark.parametrize(("argv", "message"), [
    (["simulate", "--fault-at", "soon"], "--fault-at: 'soon' is not SECONDS:FAULT"),
    (["simulate", "--fault-at", "5:meltdown"], "--fault-at: '5:meltdown': fault 'meltdown'"),
    (["simulate", "--replay", "no-such.csv"], "--replay no-such.csv: file not found"),
    (["simulate", "--opcua", "--replay", __file__], "--opcua: "),
    (["certs", "--days", "0"], "--days: 0: must be >= 1"),
    (["demo", "--fault", "meltdown"], "--fault: invalid choice"),
    (["run"], "the following arguments are required: config"),
    (["train", "--kind", "pca"], "train: DATA is required"),
    (["train", "x.csv", "--kind", "nope", "--out", "m.onnx"], "--kind: invalid choice"),
    (["quantize", "no-such.onnx", "--out", "q.onnx", "--data", "d.csv"],
     "no-such.onnx: model file not found"),
    (["evaluate", "no-such.onnx", "d.csv"], "no-such.onnx: model file not found"),
    (["no-such-command"], "invalid choice"),
])
def test_bad_argument_exits_2_naming_it(argv: list[str], message: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_INPUT
    assert message in _err(capsys)


def test_train_option_errors_name_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "n.csv"
    data.write_text("datetime;x\n2020-01-01 00:00:00;1\n2020-01-01 00:00:01;2\n", encoding="utf-8")
    for option, value in (("--window", "1"), ("--period", "0"), ("--target-far", "0.9"),
                          ("--margin", "0.5"), ("--calib-fraction", "0.9")):
        argv = ["train", str(data), "--kind", "pca", "--out", str(tmp_path / "m.onnx"), option, value]
        assert main(argv) == EXIT_INPUT, argv
        assert _err(capsys).startswith(f"{option} "), argv


def test_certs_refuses_to_overwrite_naming_the_file(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("asyncua")
    assert main(["certs", "--out", str(tmp_path), "--hostname", "h"]) == EXIT_OK
    assert main(["certs", "--out", str(tmp_path), "--hostname", "h"]) == EXIT_INPUT
    assert _err(capsys).startswith(str(tmp_path / "plcbridge_"))


# ------------------------------------------------------------------ optional extras
def test_extras_table_matches_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (distribution, extra) in EXTRAS.items():
        names = [req.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
                 for req in declared[extra]]
        assert distribution in names, (module, extra, names)


def test_require_extra_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiomqtt", None)  # what an absent package looks like
    with pytest.raises(MissingExtraError, match=r"mqtt sink needs aiomqtt.*pip install 'plcbridge\[mqtt\]'"):
        require_extra("aiomqtt", "mqtt sink")
    with pytest.raises(ImportError):  # still caught by code that guards with ImportError
        require_extra("aiomqtt", "mqtt sink")
    with pytest.raises(ValueError, match="not an optional dependency"):
        require_extra("numpy", "anything")
    assert require_extra("onnx", "test").__name__ == "onnx"


@pytest.mark.parametrize(("modules", "argv", "extra"), [
    # A submodule imported earlier is found in sys.modules before its package: hide both.
    (("matplotlib", "matplotlib.pyplot"), ["evaluate", "m.onnx", "d.csv", "--plot", "plots"], "bench"),
    (("asyncua",), ["certs", "--out", "pki"], "opcua"),
    (("asyncua",), ["simulate", "--opcua"], "opcua"),
    (("onnx",), ["quantize", "m.onnx", "--out", "q.onnx", "--data", "d.csv"], "recipes"),
])
def test_missing_extra_exits_2_with_the_install_line(modules: tuple[str, ...], argv: list[str], extra: str,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    assert main(argv) == EXIT_INPUT
    assert f"pip install 'plcbridge[{extra}]'" in _err(capsys)


def test_train_without_scikit_learn_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "n.csv"
    data.write_text("datetime;x\n2020-01-01 00:00:00;1\n2020-01-01 00:00:01;2\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert main(["train", str(data), "--kind", "ae", "--out", str(tmp_path / "m.onnx")]) == EXIT_INPUT
    assert "train --kind ae needs scikit-learn" in _err(capsys)


# ------------------------------------------------------------------ import graph
def _imports(path: Path) -> set[str]:
    """Every module a file imports: top level, inside functions and under TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_cli_ml_and_recipes_import_no_cycle() -> None:
    files = [p for d in ("bridge/cli", "bridge/ml", "models/recipes") for p in (ROOT / d).rglob("*.py")]
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in files}
    graph = {name: sorted(m for m in _imports(path) if m in names and m != name)
             for name, path in names.items()}

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph[node]:
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    cycles = [c for name in graph if (c := cycle_from(name, name, (name,)))]
    assert not cycles, cycles


def test_bridge_does_not_import_the_recipes() -> None:
    users = [p for p in (ROOT / "bridge").rglob("*.py")
             if any(m == "models" or m.startswith("models.") for m in _imports(p))]
    assert not users, users

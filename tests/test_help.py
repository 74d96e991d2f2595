"""--help everywhere: every script names its inputs, outputs and an example; train.py lists every setting."""
import dataclasses
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import config as C
import datasets

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> list[str]:
    """Every command of the project: files with a __main__ block, and packages run with `python -m`."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv", "data", "train_results") or rel.parts[0].startswith("."):
            continue
        if path.name == "__main__.py":
            found.append(f"-m {rel.parent.as_posix()}")
        elif 'if __name__ == "__main__":' in path.read_text():
            found.append(rel.as_posix())
    return found


def _run(script: str, args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run a script in this process, as `python script args` would (its __main__ block included)."""
    module = script.removeprefix("-m ") if script.startswith("-m ") else None
    monkeypatch.setattr(sys, "argv", [module or str(ROOT / script), *args])
    monkeypatch.chdir(ROOT)
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().out


def test_the_list_of_scripts_is_complete():
    scripts = _scripts()
    assert {"train.py", "benchmark.py", "prepare_data.py", "plot_log.py", "-m lpips", "sketch_styletransfer/train.py",
            "sketch_styletransfer/evaluate.py", "evaluate/style_transfer.py"} <= set(scripts)


@pytest.mark.parametrize("script", _scripts())
def test_help_names_inputs_outputs_and_an_example(script, monkeypatch, capsys):
    code, text = _run(script, ["--help"], monkeypatch, capsys)
    assert code == 0, text
    for heading in ("inputs", "outputs", "examples?"):
        assert re.search(rf"(?im)^\s*{heading}:", text), f"{script} --help has no '{heading}:' line"
    example = re.split(r"(?im)^\s*examples?:", text)[1]
    name = script.removeprefix("-m ") if script.startswith("-m ") else script
    assert re.search(rf"python (-m )?\S*{re.escape(name)}", example), f"{script}: no example that runs it"


def test_benchmark_alone_prints_the_full_help_with_examples(monkeypatch, capsys):
    code, text = _run("benchmark.py", [], monkeypatch, capsys)
    assert code == 0
    assert "python benchmark.py fid --real" in text and "{fid,stats}" in text and "Protocol" in text


def test_train_help_lists_every_setting_grouped_with_type_value_and_comment(monkeypatch, capsys):
    code, text = _run("train.py", ["-h"], monkeypatch, capsys)
    assert code == 0
    settings = text.split("Settings under preset 'demo'")[1]
    for field in dataclasses.fields(C.Config):
        assert f"\n      {field.metadata['comment']}\n" in settings + "\n", field.name
    assert re.findall(r"(?m)^(\S[^:\n]*):$", settings) == [
        "data", "networks", "AE stage", "GAN stage",
        "sampling and augmentation of the paired data (defaults are the reference's)",
        "logging, evaluation, checkpoints", "run"]  # the groups of the Config class, in its order
    assert "  IM_SIZE_AE (int) = 64   [preset demo]" in settings            # the demo preset's value, and why
    assert "  BETAS (comma-separated floats) = 0.5,0.999\n" in settings
    assert "  TRIAL_NAME (str or none) = none\n" in settings

    code, face = _run("train.py", ["DATA_NAME=face", "BATCH_SIZE_AE=4", "--help"], monkeypatch, capsys)
    assert code == 0 and "Settings under preset 'face'" in face
    assert "  IM_SIZE_AE (int) = 512\n" in face and "  BATCH_SIZE_AE (int) = 4   [command line]" in face
    code, _ = _run("train.py", ["BATCH_SIZ=3", "--help"], monkeypatch, capsys)
    assert code == 1


def test_an_old_python_is_refused_at_start_in_one_line():
    code = "import sys; sys.version_info = (3, 10, 4, 'final', 0); sys.path.insert(0, sys.argv[1]); import datasets"
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: this project needs Python >= 3.11 (this is Python 3.10.4); "
                                                "see README 'Quick start'"]
    assert datasets.python_error() is None and datasets.python_error((3, 12, 0)) is None


def _main_decorators(source: str) -> list[str] | None:
    """The decorator names of a module's top-level `def main`, or None without one."""
    import ast
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return [getattr(d, "id", getattr(d, "attr", "")) for d in node.decorator_list]
    return None


def test_every_command_reports_user_errors_by_one_rule():
    """errors.cli wraps every command's main: a UserError or OSError is one line and exit code 1;
    train_step_*.py pass their arguments on to train.main, which wears it."""
    assert _main_decorators("@cli\ndef main(argv):\n    pass\n") == ["cli"]
    assert _main_decorators("def main(argv):\n    pass\n") == []
    delegates = {"train_step_1_ae.py", "train_step_2_gan.py"}
    mains = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in ("tests", ".venv", "data", "train_results") and not rel.parts[0].startswith("."):
            decorators = _main_decorators(path.read_text(encoding="utf-8"))
            if decorators is not None:
                mains[rel.as_posix()] = decorators
    assert {"train.py", "bench_speed.py", "evaluate/quality.py", "lpips/metric.py", "app.py"} <= set(mains)
    assert {s for s in _scripts() if not s.startswith("-m ")} - set(mains) == set()  # every script has a main
    for name, decorators in mains.items():
        assert "cli" in decorators or name in delegates, name


def test_cli_turns_user_errors_into_one_line_and_keeps_bugs(capsys):
    from errors import EXIT_USER_ERROR, UserError, cli

    @cli
    def main(error):
        if error:
            raise error
        return 0

    assert main(None) == 0
    assert main(datasets.DataError("no images in x")) == EXIT_USER_ERROR == 1
    assert capsys.readouterr().err == "error: no images in x\n"
    assert main(PermissionError(13, "Permission denied", "out")) == 1
    assert capsys.readouterr().err.count("\n") == 1
    import benchmark, fileio, inference, plot_log, training, weights
    from sketch_styletransfer import train as tom_train
    kinds = (C.ConfigError, datasets.DataError, fileio.CheckpointError, fileio.OutputError, weights.WeightsError,
             inference.InferenceError, benchmark.StatsError, plot_log.LogError, tom_train.RunError,
             training.NonFiniteLoss)
    assert all(issubclass(kind, UserError) for kind in kinds)
    assert issubclass(C.ConfigError, ValueError) and issubclass(weights.WeightsError, RuntimeError)  # as before
    with pytest.raises(KeyError):  # a bug keeps its traceback
        main(KeyError("x"))

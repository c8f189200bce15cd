"""The conformance kit with optimizers a new plugin author has: a plugin module loaded with -p
(or registered in-process, or given as a class), a rule that torch.compile cannot compile, the
data-parallel ranks that must load the same plugin, and an optimizer name pytest does not know.
"""

from __future__ import annotations

import itertools
import multiprocessing.resource_tracker
import os
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import pytest

import benchbnn
import benchbnn.core.plugins as plugins
from benchbnn.cli import main
from benchbnn.optim import BinaryOptimizer, ema_, flip_
from benchbnn.optim.conformance import check_property
from benchbnn.testing import conformance_tests

#: A plugin module with two optimizers: one whose flip count is one too high at every step, and
#: one that also raises when stepped with the data-parallel property's averaged gradients.
PLUGIN = '''
import benchbnn
from benchbnn.optim import BinaryOptimizer, ema_, flip_


class BadCount(BinaryOptimizer):
    """Bop-like, but counts one flip too many."""

    name = "{prefix}-bad-count"
    rule_hparams = (benchbnn.HParam("gamma", 0.01, low=0.0, high=1.0),)
    state_buffers = ("m",)

    @staticmethod
    def update(w, g, m, *, gamma):
        ema_(m, g, gamma)
        return flip_(w, w * m > 0) + 1


class Raises(BadCount):
    """Raises at its first step."""

    name = "{prefix}-raises"

    def rule_kwargs(self, group):
        raise RuntimeError("raised by the optimizer on purpose")


@benchbnn.hookimpl
def benchbnn_optimizers():
    return [benchbnn.optimizer_spec(BadCount), benchbnn.optimizer_spec(Raises)]
'''


#: Numbers of the plugin modules written by the tests (each module name is new to the process).
_MODULES = itertools.count()


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A plugin module written into tmp_path (its folder on sys.path), with a unique name;
    yields (module name, optimizer-name prefix). The registry is restored afterwards."""
    number = next(_MODULES)
    name, prefix = f"kit_fix_plugin_{number}", f"kit-fix-{number}"
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / f"{name}.py").write_text(PLUGIN.format(prefix=prefix))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setattr(plugins, "_extra_modules", [])
    monkeypatch.setattr(plugins, "_extra_objects", [])
    plugins.reset_registry()
    yield name, prefix
    sys.modules.pop(name, None)
    plugins.reset_registry()


def _load(how: str, module_name: str):
    """Make the plugin module known as -p does, as register_plugin does, or import its class."""
    import importlib

    if how == "-p":
        plugins.add_plugin_modules([module_name])
        plugins.check_plugin_modules([module_name])
    elif how == "register_plugin":
        benchbnn.register_plugin(importlib.import_module(module_name))
    return importlib.import_module(module_name)


def _fresh_python(code: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    env.pop("BENCHBNN_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


# --- 1. the reproducer snippet runs as printed ----------------------------------------------


@pytest.mark.parametrize("how", ["-p", "register_plugin", "class"])
def test_the_snippet_reproduces_the_failure_in_a_fresh_process(plugin_module, tmp_path, how):
    module_name, prefix = plugin_module
    module = _load(how, module_name)
    optimizer = module.BadCount if how == "class" else f"{prefix}-bad-count"
    result = check_property(optimizer, "flip-count", steps=5)
    assert result.status == "failed" and result.details["step"] == 1
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _fresh_python(result.snippet, pythonpath=tmp_path / "plugins", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "UnknownNameError" not in done.stderr
    assert done.stdout.splitlines()[0] == (
        f"{prefix}-bad-count: flip-count: failed: "
        "flip_count is 240 after step 1, but 237 weights changed sign"
    )


def test_the_snippet_of_a_local_module_imports_and_registers_it(plugin_module):
    module_name, prefix = plugin_module
    _load("-p", module_name)
    snippet = check_property(f"{prefix}-bad-count", "flip-count", steps=5).snippet
    assert f"benchbnn.register_plugin(importlib.import_module({module_name!r}))" in snippet
    assert snippet.splitlines()[-2].startswith(f"result = check_property('{prefix}-bad-count'")


def test_a_snippet_that_cannot_run_as_printed_says_why():
    """A class defined inside a function: no fresh process can import it."""

    class Odd(BinaryOptimizer):
        name = "bop"  # same name as the built-in, but a different class: given as the class
        rule_hparams = (benchbnn.HParam("gamma", 0.01, low=0.0, high=1.0),)
        state_buffers = ("m",)

        @staticmethod
        def update(w, g, m, *, gamma):
            ema_(m, g, gamma)
            return flip_(w, w * m > 0) + 1

    result = check_property(Odd, "flip-count", steps=3)
    assert result.status == "failed"
    # a class defined in a function cannot be imported by a fresh process: said, not hidden
    assert result.snippet.startswith("# cannot be run as printed:")
    assert "check_property('bop'" in result.snippet


# --- 2. a rule that torch.compile cannot compile fails 'compiled' -------------------------


class Branchy(BinaryOptimizer):
    """Bop-like, with a Python branch on a tensor value (which torch.compile refuses)."""

    name = "kit-fix-branchy"
    rule_hparams = (benchbnn.HParam("gamma", 0.01, low=0.0, high=1.0),)
    state_buffers = ("m",)

    @staticmethod
    def update(w, g, m, *, gamma):
        ema_(m, g, gamma)
        if (m > 0).any():
            return flip_(w, w * m > 0)
        return flip_(w, w * m > 1)


def test_a_rule_that_cannot_compile_fails_compiled_with_the_error_and_the_fix():
    for _ in range(2):  # the second run in the process is reported as fully as the first
        result = check_property(Branchy, "compiled", steps=3)
        assert result.status == "failed", result.report()
        assert result.details["step"] == 1
        assert result.reason.startswith(
            "torch.compile failed for Branchy.update (Unsupported: Data-dependent branching)"
        )
        assert "never branch in Python on a tensor value" in result.reason
        assert "docs/plugins.md" in result.reason


def test_compiled_is_skipped_only_where_torch_compile_is_unavailable(monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    result = check_property(Branchy, "compiled", steps=3)
    assert result.status == "skipped"
    assert result.reason == "torch.compile unavailable: TORCHDYNAMO_DISABLE is set"


def _in_memory_plugin(name: str) -> types.ModuleType:
    """A plugin module that exists only in this process, registering Branchy."""
    module = types.ModuleType(name)
    module.benchbnn_optimizers = benchbnn.hookimpl(lambda: [benchbnn.optimizer_spec(Branchy)])
    return module


@pytest.mark.usefixtures("clean_registry")
def test_check_exits_1_for_a_rule_that_cannot_compile(capsys):
    benchbnn.register_plugin(_in_memory_plugin("kit_fix_branchy_plugin"))
    assert main(["check", "kit-fix-branchy", "--property", "compiled", "--steps", "3"]) == 1
    out = capsys.readouterr().out
    assert "kit-fix-branchy: compiled: failed: torch.compile failed for Branchy.update" in out


# --- 3. the data-parallel ranks load the same plugin; nothing is left behind ----------------


def _children() -> list[int]:
    """Process ids whose parent is this process (Linux /proc), once Python's multiprocessing
    resource tracker runs (started by the first spawn, it lives as long as this process)."""
    multiprocessing.resource_tracker.ensure_running()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found.append(int(entry.name))
    return found


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """A temporary folder of this test's own as the system's (for this process and children).

    torch keeps its compile cache (``torchinductor_USER``, made when torch._dynamo is imported)
    in the temporary folder unless told otherwise: a cache meant to persist, kept apart here."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-cache"))
    return folder


@pytest.mark.parametrize("how", ["-p", "register_plugin"])
def test_data_parallel_runs_a_plugin_loaded_in_this_process(plugin_module, own_tmp, how):
    module_name, prefix = plugin_module
    _load(how, module_name)
    children = _children()
    result = check_property(f"{prefix}-bad-count", "data-parallel", steps=4)
    assert result.status == "passed", result.report()
    assert result.reason == "4 steps on 2 gloo processes: identical on every rank"
    assert list(own_tmp.iterdir()) == []
    assert _children() == children


def test_a_failing_rank_is_reported_and_leaves_nothing_behind(plugin_module, own_tmp):
    module_name, prefix = plugin_module
    _load("-p", module_name)
    children = _children()
    result = check_property(f"{prefix}-raises", "data-parallel", steps=4)
    assert result.status == "failed"
    assert result.reason.startswith("a data-parallel rank failed: rank ")
    assert result.reason.endswith("RuntimeError: raised by the optimizer on purpose")
    assert list(own_tmp.iterdir()) == []  # no pytorch-errorfile-*.pickle, no rendezvous file
    assert _children() == children


def test_data_parallel_skips_before_starting_processes_that_could_not_load_it(own_tmp):
    """An in-memory plugin module: no fresh process can import it."""
    name = benchbnn.register_plugin(_in_memory_plugin("kit_fix_in_memory"))
    try:
        result = check_property("kit-fix-branchy", "data-parallel", steps=4)
    finally:
        benchbnn.unregister_plugin(name)
    assert result.status == "skipped"
    assert result.reason.startswith("the ranks are fresh processes and 'kit-fix-branchy' was")
    assert "BENCHBNN_PLUGINS" in result.reason
    assert list(own_tmp.iterdir()) == []


# --- 4. conformance_tests with a name pytest does not know ---------------------------------


def test_an_unknown_name_fails_the_first_test_only():
    test = conformance_tests("kit-fix-nowhere", properties=["binary-weights", "flip-count"])
    with pytest.raises(pytest.fail.Exception) as failed:
        test("binary-weights")
    message = str(failed.value)
    assert message.startswith("unknown optimizer 'kit-fix-nowhere'")
    for advice in ("benchbnn.register_plugin(module)", "BENCHBNN_PLUGINS", "(MyOptimizer)"):
        assert advice in message
    with pytest.raises(pytest.skip.Exception, match=r"see the failure of \[binary-weights\]"):
        test("flip-count")


def test_an_unknown_name_under_pytest_is_one_failure(tmp_path):
    (tmp_path / "test_unknown.py").write_text(
        textwrap.dedent(
            """
            from benchbnn.testing import conformance_tests

            test_mine = conformance_tests("kit-fix-nowhere")
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BENCHBNN_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_unknown.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    # one failure section (the short summary may repeat its message, cut to the terminal width)
    assert done.stdout.count("_ test_mine[") == 1, done.stdout
    assert "unknown optimizer 'kit-fix-nowhere'" in done.stdout
    assert "1 failed, 8 skipped" in done.stdout


def test_a_name_registered_before_the_tests_run_is_found(plugin_module):
    module_name, prefix = plugin_module
    test = conformance_tests(f"{prefix}-bad-count", properties=["binary-weights"], steps=3)
    _load("register_plugin", module_name)  # e.g. in a fixture, after collection
    test("binary-weights")

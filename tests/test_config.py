"""Settings come from the environment, are validated, and are all documented."""

from __future__ import annotations

import ast
import io
import re
import tokenize

import pytest

from testkit import ROOT
from webapp.config import (
    SETTINGS,
    Config,
    ConfigError,
    available_cpus,
    dual_streams,
    plan_concurrency,
    setting,
)


def test_defaults():
    config = Config.from_env({})
    # The engine and the precision are decided per model and machine, by measuring.
    assert (config["ENGINE"], config["QUANTIZE"]) == ("auto", "auto")
    assert config["INT8_MIN_AGREEMENT"] == 0.98
    assert config["MALLOC_ARENA_MAX"] == 2
    assert config["MAX_CONTENT_LENGTH"] == 20 * 1024 * 1024
    assert config["MAX_IMAGE_PIXELS"] == 50_000_000
    assert config["BOOTSTRAP_SERVE_LOCAL"] is True
    assert config["TORCH_THREADS"] >= 1
    assert len(config["SECRET_KEY"]) >= 32


def test_values_are_read_and_converted():
    config = Config.from_env({"MAX_UPLOAD_MB": "2.5", "ALLOW_DOWNLOAD": "yes",
                              "QUANTIZE": "NONE", "TORCH_THREADS": "3"})
    assert config["MAX_CONTENT_LENGTH"] == int(2.5 * 1024 * 1024)
    assert config["ALLOW_DOWNLOAD"] is True
    assert config["QUANTIZE"] == "none"
    assert config["TORCH_THREADS"] == 3


@pytest.mark.parametrize("env, words", [
    ({"QUANTIZE": "turbo"}, "QUANTIZE='turbo': use one of auto, none, bf16, dynamic, static"),
    ({"QUANTIZE": "bf16", "ENGINE": "torch"}, "QUANTIZE=bf16 needs ENGINE=openvino"),
    ({"ENGINE": "tensorrt"},
     "ENGINE='tensorrt': use one of auto, torch, openvino, onnxruntime"),
    ({"ENGINE": "auto", "QUANTIZE": "dynamic"}, "needs ENGINE=torch"),
    ({"QUANTIZE": "dynamic"}, "QUANTIZE=dynamic is torch's dynamic quantization and needs "
                              "ENGINE=torch"),
    ({"MALLOC_ARENA_MAX": "-1"}, "MALLOC_ARENA_MAX=-1: must be between 0 and 64"),
    ({"MAX_UPLOAD_MB": "lots"}, "MAX_UPLOAD_MB='lots': expected a number"),
    ({"PORT": "70000"}, "PORT=70000: must be between 1 and 65535"),
    ({"ALLOW_DOWNLOAD": "maybe"}, "ALLOW_DOWNLOAD='maybe'"),
])
def test_bad_values_name_the_setting(env, words):
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert words in str(info.value)


@pytest.mark.parametrize("cpus, workers, threads, expected", [
    (1, 0, 0, (1, 1)), (2, 0, 0, (1, 2)), (8, 0, 0, (4, 2)), (2, 2, 0, (2, 1)),
    (4, 0, 1, (2, 1)), (16, 3, 0, (3, 5)), (2, 3, 2, (3, 2)),  # explicit values win
])
def test_workers_times_threads_fit_the_cpus(cpus, workers, threads, expected):
    assert plan_concurrency(workers, threads, cpus=cpus) == expected
    if not (workers and threads):
        w, t = expected
        assert w * t <= cpus


@pytest.mark.parametrize("cpus, workers, threads, expected", [
    (1, 0, 0, (1, 1)), (2, 0, 0, (2, 2)), (4, 0, 0, (2, 2)), (8, 0, 0, (4, 2)),
    (2, 1, 0, (1, 2)), (2, 3, 1, (3, 1)),  # explicit values win
])
def test_dual_streams_get_two_workers_of_two_threads(cpus, workers, threads, expected):
    """OpenVINO's dual streams (the default): a second worker on 2 CPUs, as measured."""
    assert plan_concurrency(workers, threads, cpus=cpus, dual=True) == expected


def test_the_default_settings_plan_dual_streams_and_other_engines_do_not():
    assert dual_streams(Config.from_env({}))
    assert not dual_streams(Config.from_env({"ENGINE_STREAMS": "latency"}))
    assert not dual_streams(Config.from_env({"ENGINE": "onnxruntime"}))
    assert Config.from_env({"WEB_CONCURRENCY": "2", "TORCH_THREADS": "0"})["TORCH_THREADS"] \
        >= (2 if available_cpus() >= 2 else 1)


@pytest.mark.parametrize("engine", ["auto", "openvino", "onnxruntime", "torch"])
def test_auto_precision_is_left_to_the_engine(engine):
    """QUANTIZE=auto is decided per model by measuring (tests/engines/test_engines.py), never from
    the engine's name or the CPU's flags."""
    assert Config.from_env({"ENGINE": engine})["QUANTIZE"] == "auto"
    assert Config.from_env({"ENGINE": engine, "QUANTIZE": "static"})["QUANTIZE"] == "static"


def test_every_setting_is_documented_in_docs_settings():
    """docs/settings.md has a table row for every setting (a mention elsewhere on the page
    is not enough), and no row for a setting that does not exist."""
    page = (ROOT / "docs" / "settings.md").read_text("utf-8")
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", page, flags=re.MULTILINE))
    names = {s.name for s in SETTINGS}
    assert not names - rows, f"docs/settings.md has no row for: {sorted(names - rows)}"
    assert not rows - names, f"docs/settings.md documents unknown settings: {sorted(rows - names)}"


# Where the environment may be read other than through webapp/config.py, and why.
ENVIRONMENT_READERS = {
    "webapp/config.py": "the one place settings are read",
    "deploy/healthcheck.py": "the container's HEALTHCHECK: standard library only, so it "
                             "starts in milliseconds without importing the app",
}


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read ``os.environ`` / ``os.getenv`` (writing a variable, or passing the
    whole environment on to a child process with ``{**os.environ, ...}``, is not
    reading a setting)."""
    def is_environ(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ"
                and isinstance(node.value, ast.Name) and node.value.id == "os")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                (node.func.attr == "getenv" and isinstance(node.func.value, ast.Name)
                 and node.func.value.id == "os")
                or (node.func.attr in ("get", "setdefault", "pop", "copy")
                    and is_environ(node.func.value))):
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and is_environ(node.value) \
                and isinstance(node.ctx, ast.Load):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            lines.append(node.lineno)
    return lines


def test_settings_are_read_in_one_place_and_all_of_them_are_in_the_table():
    """The app, its children, its command lines, gunicorn.conf.py and the container's
    tools read the environment only through webapp/config.py (``Config.from_env`` or
    ``config.setting``/``config.given``), and only settings of the table (documented in
    docs/settings.md: test_every_setting_is_documented_in_docs_settings)."""
    names = {s.name for s in SETTINGS}
    files = [*ROOT.glob("webapp/**/*.py"), *ROOT.glob("deploy/*.py"),
             ROOT / "model_loader.py", ROOT / "app.py", ROOT / "gunicorn.conf.py"]
    reads, unknown = [], []
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text("utf-8"))
        if relative not in ENVIRONMENT_READERS:
            reads += [f"{relative}:{line}" for line in _environment_reads(tree)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(
                    node.func, "attr", None)) in ("setting", "given") and node.args \
                    and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value not in names:
                unknown.append(f"{relative}:{node.lineno}: {node.args[0].value}")
    assert not reads, f"the environment read outside webapp/config.py: {reads}"
    assert not unknown, f"settings read that the table does not have: {unknown}"


def test_a_setting_read_outside_the_app_is_checked_like_the_app_checks_it():
    assert setting("JOB_SLOTS", {}) == 0 and setting("JOB_SLOTS", {"JOB_SLOTS": "2"}) == 2
    with pytest.raises(ConfigError, match="JOB_SLOTS"):
        setting("JOB_SLOTS", {"JOB_SLOTS": "99"})
    with pytest.raises(KeyError):  # only the table's settings are read
        setting("NOT_A_SETTING", {})


def _imports_in_functions(tree: ast.AST) -> list[ast.stmt]:
    """The imports of the project's own modules (``webapp``, ``webapp.*``, ``model_loader``,
    relative ones) inside a function body, at any depth; not those at module level or under
    ``if TYPE_CHECKING:``."""
    def own(node) -> bool:
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if not node.level else ["webapp"]
        else:
            names = [alias.name for alias in node.names]
        return any(n == "webapp" or n.startswith("webapp.") or n == "model_loader"
                   for n in names)

    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if in_function and own(child):
                    found.append(child)
                continue
            visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                           ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def test_an_import_of_our_own_modules_inside_a_function_says_why():
    """webapp/ imports its own modules at the top of a module.  One imported inside a
    function -- to keep torch out of the web workers, the app out of gunicorn's master, a
    process small, or to break a loop at import -- says why in a comment on its (first)
    line or on the line directly above it (above a run of imports, for all of them)."""
    imports, silent = 0, []
    for path in sorted(ROOT.glob("webapp/**/*.py")):
        relative = path.relative_to(ROOT).as_posix()
        source = path.read_text("utf-8")
        trailing, alone = set(), set()  # lines with a comment; lines that are only one
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                trailing.add(token.start[0])
                if not token.line[:token.start[1]].strip():
                    alone.add(token.start[0])
        explained_to = 0  # the last line of an explained run of imports
        for node in sorted(_imports_in_functions(ast.parse(source)), key=lambda n: n.lineno):
            imports += 1
            if node.lineno in trailing or node.lineno - 1 in alone \
                    or node.lineno - 1 == explained_to:
                explained_to = node.end_lineno
            else:
                silent.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
    assert imports, "no import inside a function found: the walk above is broken"
    assert not silent, ("imports inside a function with no comment saying why (move them "
                        f"to the top, or say why not): {silent}")

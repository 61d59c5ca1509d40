"""The container image, checked statically: Docker cannot run on these machines.

The Dockerfile is parsed into stages; the project's wheel is built the way the image's builder stage
builds it (hatchling, from the folders the Dockerfile copies) and its entry points are checked.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return lines


def _parse() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text()):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest.strip(),
                                 re.IGNORECASE)
            assert match, f"unparsed FROM line: {line}"
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), match.group(1))
            stages.append(Stage(base=base, name=match.group(2)))
        elif not stages and word == "ARG":
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            assert stages, f"{word} before the first FROM"
            stages[-1].instructions.append((word, rest.strip()))
    return global_args, stages


GLOBAL_ARGS, STAGES = _parse()
RUNTIME = STAGES[-1]


def test_image_is_built_in_two_stages_and_the_runtime_copies_only_the_virtualenv() -> None:
    assert len(STAGES) >= 2
    builder_names = {s.name for s in STAGES[:-1]}
    copies = RUNTIME.args("COPY")
    assert copies, "the runtime stage copies nothing"
    for copy in copies:
        source = re.match(r"--from=(\S+)", copy)
        assert source and source.group(1) in builder_names, f"runtime COPY not from a builder stage: {copy}"
    assert not RUNTIME.args("ADD")


def test_runtime_runs_as_a_non_root_numeric_user() -> None:
    users = RUNTIME.args("USER")
    assert users, "the runtime stage never sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) >= 10000, f"USER {users[-1]} is not a high numeric uid"
    assert not group or (group.isdigit() and int(group) != 0)


def test_runtime_has_no_build_tools_and_no_entrypoint() -> None:
    runs = " ".join(RUNTIME.args("RUN"))
    for tool in ("apt-get install", "apk add", "gcc", "build-essential", "pip install", "python -m build"):
        assert tool not in runs, f"runtime stage installs or runs {tool!r}"
    assert not RUNTIME.args("ENTRYPOINT")
    assert RUNTIME.args("CMD")[-1] == '["clarion-operator"]'
    env = " ".join(RUNTIME.args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    # the virtualenv the runtime copies is created without pip and filled from the builder's pip
    builder = next(s for s in STAGES if s.name == "builder")
    assert any("venv --without-pip /opt/venv" in run for run in builder.args("RUN"))


def test_base_images_are_pinned_to_a_version_never_latest() -> None:
    stage_names = {s.name for s in STAGES}
    for stage in STAGES:
        if stage.base in stage_names or "@sha256:" in stage.base:
            continue
        assert "$" not in stage.base, f"unresolved base image {stage.base}"
        _, _, tag = stage.base.rpartition(":")
        assert "/" not in tag and tag != "latest", f"base image {stage.base} is not pinned"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"base image {stage.base}: tag is not a full version"


def test_no_secret_is_baked_into_the_image() -> None:
    text = DOCKERFILE.read_text()
    for word, rest in ((w, r) for stage in STAGES for w, r in stage.instructions):
        if word in ("ENV", "ARG", "LABEL"):
            secret = re.search(r"(TOKEN|PASSWORD|SECRET|API_KEY|DATABASE_URL|REDIS_URL)", rest, re.IGNORECASE)
            assert not secret, f"{word} {rest} looks like a secret"
    assert ".env" not in text and "id_rsa" not in text
    ignore = DOCKERIGNORE.read_text().splitlines()
    assert ignore[[line.strip() for line in ignore].index("**")] == "**", \
        ".dockerignore must exclude everything by default"


def _context_files() -> set[str]:
    """Files of the repository the Docker build context would hold, per .dockerignore (last match wins)."""
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    kept: set[str] = set()
    for path in tracked.stdout.split():
        included = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or (
                    pattern.startswith("**/") and fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern[3:])):
                included = negate
        if included:
            kept.add(path)
    return kept


def test_build_context_holds_every_package_of_the_wheel_and_nothing_else() -> None:
    context = _context_files()
    packages = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for package in packages:
        assert any(p.startswith(package + "/") for p in context), f"{package} is not in the build context"
        top = package.split("/")[0]
        assert any(copy.split()[0] in (top, f"./{top}") for copy in STAGES[0].args("COPY")), \
            f"the builder never copies {top}/"
    assert {"pyproject.toml", "README.md"} <= context
    assert not any(p.startswith(("tests/", "bench/", "charts/", ".git")) for p in context)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("clarion-*.whl")
    return built


def test_wheel_provides_every_console_script_declared_in_pyproject(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = archive.read(entry_points).decode()
    declared = PYPROJECT["project"]["scripts"]
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    shipped = dict(line.replace(" ", "").split("=", 1) for line in section.strip().splitlines())
    assert shipped == declared
    for script, target in declared.items():
        module = target.split(":")[0].replace(".", "/")
        assert f"{module}.py" in names or f"{module}/__init__.py" in names, \
            f"{script} -> {target}: {module}.py is not in the wheel"

"""The release: one version everywhere; a wheel and an sdist, built from what the Docker build
sees, that carry the Lua scripts, the SQL and the page assets; that wheel installed into a
fresh venv from the locked requirements runs a whole sale; docker-compose.yml as the Compose
specification describes it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import flashsale
from flashsale.settings import Settings
from tests.helpers import Service, flashsale_env, whole_machine

# one pytest-xdist worker builds the module's wheel once; its fresh venv keeps both cores busy
pytestmark = whole_machine

REPO = Path(__file__).resolve().parent.parent
VERSION = flashsale.__version__

# Files the package reads at run time, as globs under flashsale/: the wheel and the sdist must
# carry every file of the source tree that one of them matches.
PACKAGE_DATA = (
    "py.typed",
    "engine/lua/*.lua",
    "store/*.sql",
    "store/migrations/*.sql",
    "http/static/**/*",
)


def run(
    *cmd: str | Path,
    timeout_s: float = 60,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command; on failure the assertion shows its output."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    out: str = proc.stdout
    return out


# --- one version ----------------------------------------------------------------------------


def test_version_is_defined_once() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "flashsale.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)


def test_changelog_names_this_version() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(VERSION)}\]", changelog, re.MULTILINE), VERSION


def test_cli_prints_the_version() -> None:
    out = run(sys.executable, "-m", "flashsale", "--version")
    assert out.strip() == f"flashsale {VERSION}"


async def test_healthz_reports_the_version(service: Service) -> None:
    reply = await service.call("GET", "/healthz")
    assert reply.status == 200, reply.body
    assert reply.body["version"] == VERSION


# --- what the Docker build sees -------------------------------------------------------------


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is an exception "!", pattern) in file order."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[" and "]" in pattern[i:]:
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern decides; a pattern matching a folder takes
    what is inside it along."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def docker_context() -> list[str]:
    """The files `docker build .` sends (paths relative to the repository). A folder that is
    ignored is not looked into: an exception can't bring back a file inside it here."""
    rules = _dockerignore()
    files = []
    for root, dirs, names in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        rel = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(d for d in dirs if not _ignored(rel + d, rules))
        files += [rel + n for n in sorted(names) if not _ignored(rel + n, rules)]
    return files


def test_dockerfile_copies_only_what_the_build_sees() -> None:
    context = set(docker_context())
    assert {"pyproject.toml", "requirements/build.txt", "requirements/runtime.txt"} <= context
    assert not any(f.startswith(("tests/", ".venv/", ".git/")) for f in context)
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        for source in words[1:-1]:
            if source == ".":
                continue
            source = source.rstrip("/")
            assert source in context or any(f.startswith(source + "/") for f in context), (
                f"the Dockerfile copies {source}, which .dockerignore keeps out of the build"
            )


# --- the release ----------------------------------------------------------------------------


@dataclass
class Release:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """`python -m build` on a copy of the Docker build context: the sdist, then the wheel built
    from that sdist (so a file the sdist forgot is missing from the wheel too)."""
    src = tmp_path_factory.mktemp("src")
    for rel in docker_context():
        if "__pycache__" in rel:
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    # --no-isolation: the locked setuptools of requirements/build.txt, no download
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src, timeout_s=120)
    (wheel,) = dist.glob("flashsale-*.whl")
    (sdist,) = dist.glob("flashsale-*.tar.gz")
    assert wheel.name == f"flashsale-{VERSION}-py3-none-any.whl"
    assert sdist.name == f"flashsale-{VERSION}.tar.gz"
    return Release(wheel, sdist)


def _package_data() -> set[str]:
    found = {
        path.relative_to(REPO).as_posix()
        for pattern in PACKAGE_DATA
        for path in (REPO / "flashsale").glob(pattern)
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert any(f.endswith(".lua") for f in found)
    assert any(f.endswith(".sql") for f in found)
    return found


def test_wheel_and_sdist_carry_the_package_data(release: Release) -> None:
    with zipfile.ZipFile(release.wheel) as wheel:
        in_wheel = set(wheel.namelist())
        metadata = wheel.read(f"flashsale-{VERSION}.dist-info/METADATA").decode()
    with tarfile.open(release.sdist) as sdist:
        top = f"flashsale-{VERSION}/"
        in_sdist = {name.removeprefix(top) for name in sdist.getnames()}
    wanted = _package_data()
    assert wanted - in_wheel == set(), "missing from the wheel"
    assert wanted - in_sdist == set(), "missing from the sdist"
    assert "flashsale/cli/main.py" in in_wheel
    assert "CHANGELOG.md" in in_sdist
    assert not any(name.startswith("tests/") for name in in_wheel | in_sdist)
    # the wheel keeps pyproject's ranges: `pip install flashsale` resolves for itself
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    pinned = [line for line in requires if "==" in line.partition(";")[0]]
    assert requires
    assert not pinned, pinned
    assert f"\nVersion: {VERSION}\n" in metadata


@pytest.fixture
def own_database(database_url: str) -> Iterator[str]:
    """The URL of a database that does not exist yet (flashsale creates and migrates it);
    dropped afterwards."""
    name = f"flashsale_release_{uuid.uuid4().hex[:12]}"

    async def drop() -> None:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    yield urlunsplit(urlsplit(database_url)._replace(path="/" + name))
    asyncio.run(drop())


def test_wheel_runs_a_sale_from_a_fresh_venv(
    release: Release, settings: Settings, own_database: str, tmp_path: Path
) -> None:
    """The wheel alone, on the locked runtime dependencies (from PyPI, or pip's cache), in a
    venv that has never seen the source tree: the Docker image's install, then `flashsale demo`
    on a database it has to create and migrate from nothing."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # this venv's pip installs into the new one (no pip bootstrapped there: seconds saved)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python)
    runtime = REPO / "requirements" / "runtime.txt"
    run(*pip, "install", "--require-hashes", "--only-binary", ":all:", "-r", runtime,
        timeout_s=180)  # fmt: skip
    run(*pip, "install", "--no-deps", "--no-index", release.wheel)
    run(*pip, "check")  # the locked versions satisfy the wheel's own ranges

    env = flashsale_env(replace(settings, database_url=own_database))
    env.pop("PYTHONPATH", None)  # nothing from the source tree
    where = run(python, "-c", "import flashsale; print(flashsale.__file__)", cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    flashsale_bin = venv / "bin" / "flashsale"
    assert run(flashsale_bin, "--version", cwd=tmp_path, env=env).strip() == f"flashsale {VERSION}"
    out = run(flashsale_bin, "demo", "--stock", "20", "--shoppers", "60", "--concurrency", "10",
              cwd=tmp_path, env=env, timeout_s=60)  # fmt: skip
    assert "verdict: all invariants hold" in out, out


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    check = Path(sys.executable).parent / "check-jsonschema"
    run(check, "--builtin-schema", "vendor.compose-spec", REPO / "docker-compose.yml")


def test_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client here; the schema check above still runs")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker has no compose plugin here; the schema check above still runs")
    env = dict(os.environ, FLASHSALE_TOKEN_SECRET="x" * 48, FLASHSALE_ADMIN_TOKEN="y" * 32)
    run(docker, "compose", "--file", REPO / "docker-compose.yml", "config", "--quiet", env=env)

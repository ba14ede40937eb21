"""The install is what was tested: every version requirement in pyproject.toml admits the locked
version and nothing newer (so `pip install crosslmm` without the lock cannot resolve an untested
release), and the environment the tests run in holds exactly the locked versions."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPOSITORY = Path(__file__).resolve().parents[1]


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalised(name)] = version.strip()
    return pins


def requirements(extras: bool = True) -> list[Requirement]:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra if extras]
    return [Requirement(r) for r in listed if not r.startswith("crosslmm")]


def newer(version: str) -> list[Version]:
    """Releases just after ``version``: its next patch, minor and major."""
    parts = (list(Version(version).release) + [0, 0, 0])[:3]
    return [Version(".".join(map(str, bumped))) for bumped in
            ([parts[0], parts[1], parts[2] + 1], [parts[0], parts[1] + 1, 0], [parts[0] + 1, 0, 0])] + \
        [Version(version + ".post1")]


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-oldest.lock"])
def test_every_requirement_admits_its_locked_version(lock):
    pins = locked(REPOSITORY / lock)
    for requirement in requirements(extras=lock == "requirements.lock"):  # the oldest lane installs no extra
        name = normalised(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name], prereleases=True), (lock, str(requirement), pins[name])


def test_no_requirement_admits_anything_newer_than_what_was_tested():
    pins = locked(REPOSITORY / "requirements.lock")
    for requirement in requirements():
        name = normalised(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: install it in the test venv and lock it"
        admitted = [str(v) for v in newer(pins[name]) if requirement.specifier.contains(v, prereleases=True)]
        assert not admitted, f"{requirement} admits {admitted}, newer than the tested {pins[name]}"


def test_the_tests_run_on_the_locked_versions():
    """The README's test command installs with -c requirements.lock; a venv made otherwise is not
    the tested set (``pip install -c requirements.lock -e ".[test]"`` makes it so)."""
    wrong = {}
    for name, version in locked(REPOSITORY / "requirements.lock").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong[name] = (version, None)
            continue
        if Version(installed).public != Version(version).public:  # torch's +cpu tag aside
            wrong[name] = (version, installed)
    assert not wrong, f"(locked, installed): {wrong}"

"""The install is what was tested: every version requirement in pyproject.toml admits the locked
version and nothing newer than a set the tests passed on (so `pip install crosslmm` without the lock
cannot resolve an untested release), and the environment the tests run in holds exactly one of
those sets: requirements.lock (CI's), or requirements-torch-newest.lock (the newest torch, run once
in a side venv)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPOSITORY = Path(__file__).resolve().parents[1]
TESTED_SETS = ["requirements.lock", "requirements-torch-newest.lock"]


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


def newest_tested() -> dict[str, str]:
    """Each package's newest version in a set the tests passed on."""
    newest: dict[str, str] = {}
    for lock in TESTED_SETS:
        for name, version in locked(REPOSITORY / lock).items():
            if name not in newest or Version(version) > Version(newest[name]):
                newest[name] = version
    return newest


def test_no_requirement_admits_anything_newer_than_what_was_tested():
    pins = newest_tested()
    for requirement in requirements():
        name = normalised(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: install it in the test venv and lock it"
        admitted = [str(v) for v in newer(pins[name]) if requirement.specifier.contains(v, prereleases=True)]
        assert not admitted, f"{requirement} admits {admitted}, newer than the tested {pins[name]}"


def test_the_newest_torch_set_is_the_lock_with_another_torch():
    """requirements-torch-newest.lock differs from requirements.lock only in torch and what torch
    alone brings (its CUDA libraries and triton): it tested torch, not other releases."""
    ours, newest = locked(REPOSITORY / "requirements.lock"), locked(REPOSITORY / "requirements-torch-newest.lock")
    torch_only = re.compile(r"torch|triton|nvidia-.*|cuda-.*")
    assert {n: v for n, v in newest.items() if not torch_only.fullmatch(n)} == \
        {n: v for n, v in ours.items() if not torch_only.fullmatch(n)}
    assert Version(newest["torch"]) > Version(ours["torch"])


def mismatches(lock: str) -> dict[str, tuple[str, str | None]]:
    """(locked, installed) for each package of ``lock`` that this environment does not hold."""
    wrong = {}
    for name, version in locked(REPOSITORY / lock).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong[name] = (version, None)
            continue
        if Version(installed).public != Version(version).public:  # torch's +cpu tag aside
            wrong[name] = (version, installed)
    return wrong


def test_the_tests_run_on_the_locked_versions():
    """The README's test command installs with -c requirements.lock; a venv made otherwise is not
    the tested set (``pip install -c requirements.lock -e ".[test]"`` makes it so)."""
    wrong = {lock: mismatches(lock) for lock in TESTED_SETS}
    assert not all(wrong.values()), f"(locked, installed) per tested set: {wrong}"

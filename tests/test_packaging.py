"""The layout works installed: rayft built as a wheel (as cluster/Dockerfile installs it) and put in a
scratch location imports every stage, from any working directory and from this repository's root,
where `python -m rayft.cli` finds the checkout's `rayft/` first (its stage folders are linked in)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data.prepare", "training.trainer", "eval.evaluate", "serving.app", "cluster.submit", "configs")
LOCAL_ONLY = (".git", ".venv", ".rayft", "build", "*.egg-info", "__pycache__", ".pytest_cache")
IMPORT_EVERY_STAGE = (
    "import rayft, rayft.cli; " + "; ".join(f"import rayft.{s}" for s in STAGES) + "; print(rayft.__file__)"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The built wheel installed (not editable) into a scratch folder; returns that folder."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*LOCAL_ONLY))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(scratch / "dist")],
        check=True,
        timeout=240,
        cwd=scratch,
        capture_output=True,
    )
    wheel = next((scratch / "dist").glob("rayft-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(scratch / "site"), str(wheel)],
        check=True,
        timeout=240,
        capture_output=True,
    )
    return scratch / "site"


def python_in(cwd: Path, site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_wheel_holds_every_stage_and_runs_from_any_folder(installed, tmp_path):
    done = python_in(tmp_path, installed, "-c", IMPORT_EVERY_STAGE)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(installed)  # the wheel's copy, not the checkout
    assert (installed / "rayft" / "configs" / "quickstart.yaml").is_file()
    assert not any(p.is_symlink() for p in (installed / "rayft").iterdir())  # files, not links to a checkout


def test_from_the_repository_root_the_checkout_imports_every_stage(installed):
    done = python_in(ROOT, installed, "-c", IMPORT_EVERY_STAGE)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == ROOT / "rayft" / "__init__.py"
    cli = python_in(ROOT, installed, "-m", "rayft.cli", "submit", "--help")
    assert cli.returncode == 0 and "STAGE" in cli.stdout.upper(), cli.stderr

"""The package: a wheel built from the checkout, installed into a fresh venv, runs ``moco`` outside a
checkout with the recipes it ships."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from moco_core.config import load_config

from .conftest import REPO

WHEEL_SOURCES = ("pyproject.toml", "README.md", "moco_core", "service", "experiments")


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the checkout's sources, built by this venv's setuptools (no build isolation,
    no index: nothing is downloaded, and the checkout gets no build/ folder)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*pip_wheel, "-q", "-w", str(dist), str(src)], tmp_path)
    (wheel,) = dist.glob("moco_service-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv holding the wheel (installed with --no-deps). Its dependencies (the torch of
    constraints.txt, Ray, MLflow: gigabytes) are this venv's, put on its path by a .pth file rather than
    downloaded again; this venv's editable install of the project is not (a .pth file's folder is not
    scanned for .pth files)."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib.strip()) / "moco-test-deps.pth").write_text("".join(f"{d}\n" for d in deps))
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    _run([*pip_install, "-q", str(wheel)], tmp_path)
    return venv


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_wheel_in_a_fresh_venv_runs_moco_outside_a_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        p.relative_to(REPO).as_posix()
        for pkg in ("moco_core", "service")
        for p in (REPO / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules - names == set(), "modules missing from the wheel (pyproject.toml lists the packages)"
    recipes = sorted(p.name for p in (REPO / "experiments").glob("*.yaml"))
    assert {f"service/experiments/{r}" for r in recipes} <= names

    venv = _fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"  # no checkout here, nor above
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    moco = str(venv / "bin" / "moco")
    imported = _run(
        [str(venv / "bin" / "python"), "-c", "import service; print(service.__file__)"], elsewhere, env
    )
    assert Path(imported.strip()).is_relative_to(venv)

    assert _run([moco, "quickstart", "--help"], elsewhere, env).startswith("usage: moco quickstart")
    for name in ("digits.yaml", "digits_tune.yaml"):  # digits_tune.yaml extends digits.yaml (base:)
        shown = yaml.safe_load(_run([moco, "config", "show", name], elsewhere, env))
        assert shown == load_config(REPO / "experiments" / name).model_dump(mode="json"), name
    version = wheel.name.split("-")[1]
    assert _run([moco, "--version"], elsewhere, env).strip() == f"moco {version}"

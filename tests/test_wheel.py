"""The built distributions: the wheel holds the compiled core and no build input, installs where there is
no compiler, and runs; the sdist holds what building the core needs.

Run by `make test-wheel` (it builds them first with `make dist`), and by CI. They test the files in dist/,
so without KEYVAULT_TEST_WHEEL=1 they are skipped (a wheel left from an older tree would say nothing
about this one); with it, a missing wheel fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from keyvault._fast import env_flag

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
BUILD_INPUTS = (".c", ".pyx", ".pxi", ".h")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not env_flag("KEYVAULT_TEST_WHEEL"),
                       reason="tests dist/: run `make test-wheel` (builds it, then sets KEYVAULT_TEST_WHEEL=1)"),
]


def only(pattern: str) -> Path:
    """The one file in dist/ matching ``pattern``."""
    found = sorted(DIST.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {DIST}, found {[p.name for p in found]}: run `make dist`"
    return found[0]


@pytest.fixture(scope="module")
def wheel() -> Path:
    return only("keyvault-*.whl")


def test_the_wheel_holds_the_compiled_core_and_no_build_input(wheel: Path) -> None:
    assert "manylinux" in wheel.name, f"{wheel.name} was not tagged by auditwheel"
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("keyvault/_fast/_core.") and n.endswith(".so")], names
    assert [n for n in names if n.endswith(BUILD_INPUTS)] == []
    assert {"keyvault/py.typed", "keyvault/aio.py", "keyvault/cli/main.py", "keyvault/_fast/_pure.py"} <= set(names)


def test_the_sdist_holds_the_cores_sources() -> None:
    sdist = only("keyvault-*.tar.gz")
    names = {Path(n).relative_to(Path(n).parts[0]).as_posix() for n in tarfile.open(sdist).getnames()
             if len(Path(n).parts) > 1}
    sources = {p.relative_to(ROOT).as_posix() for pattern in ("_core.pyx", "*.pxi", "kv_*.h")
               for p in (ROOT / "keyvault" / "_fast").glob(pattern)}
    assert sources and sources <= names, sorted(sources - names)
    assert {"setup.py", "pyproject.toml", "keyvault/aio.py"} <= names
    assert "keyvault/_fast/_core.c" not in names  # generated at build time


def test_the_wheel_installs_and_runs_without_a_compiler(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    # No compiler to fall back on: only the venv on PATH, and CC, CXX, LDSHARED fail.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KEYVAULT_", "PYTHON", "VIRTUAL_ENV")) and k not in ("CC", "CXX", "LDSHARED")}
    env.update(PATH=str(bin_dir), CC="/bin/false", CXX="/bin/false", LDSHARED="/bin/false", HOME=str(tmp_path))
    for compiler in ("gcc", "cc", "clang", "g++", "c++"):
        assert shutil.which(compiler, path=env["PATH"]) is None

    def run(*argv: str, isolated: bool = False) -> str:
        run_env = dict(env)
        if isolated:  # no pip configuration at all: no index, no extra find-links
            run_env = {k: v for k, v in run_env.items() if not k.startswith("PIP_")}
            run_env["PIP_CONFIG_FILE"] = os.devnull
        done = subprocess.run(argv, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    # The dependencies from the package index, as wheels; keyvault itself only from dist/.
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(
        next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))).decode())
    requires = [r.split(";")[0].strip() for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert requires, "the wheel names no dependencies"
    run(str(bin_dir / "pip"), "install", "--quiet", "--only-binary", ":all:", *requires)
    run(str(bin_dir / "pip"), "install", "--quiet", "--only-binary", ":all:", "--no-index", "--find-links",
        str(DIST), "keyvault", isolated=True)

    probe = ("import keyvault, keyvault._fast as fast, keyvault.aio; "
             "print(fast.COMPILED, keyvault.__file__, sep='\\n')")
    compiled, location = run(str(bin_dir / "python"), "-c", probe).split()
    assert compiled == "True", "the installed wheel runs on the pure-Python path"
    assert Path(location).is_relative_to(venv), f"keyvault was imported from {location}, not the wheel"
    installed_wheel = next((venv / "lib").glob("python*/site-packages/keyvault-*.dist-info/WHEEL")).read_text()
    assert "manylinux" in installed_wheel, installed_wheel

    out = run(str(bin_dir / "keyvault"), "demo")
    assert out.strip(), "keyvault demo printed nothing"
    print(f"\n{wheel.name}: installed with no compiler; `keyvault demo` ran ({len(out.splitlines())} lines)")

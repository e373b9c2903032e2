"""Build keyvault: the Cython core is compiled here; without it the package runs pure.

Set KEYVAULT_REQUIRE_EXTENSIONS=1 (the Makefile and CI do) to make a failed
compile fail the install instead of falling back silently.
"""

import os
import sys
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def env_flag(name: str) -> bool:
    """keyvault._fast.env_flag, repeated: the build runs before the package exists to import (its
    __init__ imports the modules being built), so the one parser cannot be shared with it."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


REQUIRE = env_flag("KEYVAULT_REQUIRE_EXTENSIONS")
SKIP = env_flag("KEYVAULT_NO_EXTENSIONS")


class OptionalBuildExt(build_ext):
    """Compile the core, but let the pure-Python path stand in if that fails (unless required)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, Cython error, ...
            self._fallback(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if REQUIRE:
            raise
        print(f"WARNING: keyvault's compiled core was not built ({exc}); the pure-Python path will be used",
              file=sys.stderr)


def extensions() -> list:
    if SKIP:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("WARNING: Cython is not installed; keyvault will run on its pure-Python path", file=sys.stderr)
        return []
    # _core.pyx includes its parts (*.pxi) and their C (kv_*.h) from its own directory: both are
    # build inputs only (the installed package needs neither), listed so a change to one rebuilds.
    core = Extension(
        "keyvault._fast._core",
        ["keyvault/_fast/_core.pyx"],
        include_dirs=["keyvault/_fast"],
        depends=sorted(glob("keyvault/_fast/*.pxi") + glob("keyvault/_fast/kv_*.h")),
    )
    return cythonize(
        [core],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    )


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)

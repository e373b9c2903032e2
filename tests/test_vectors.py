"""The bundle tampering vectors (tests/vectors/bundles/): ``keyvault verify-bundle``, the CLI itself, on each.

Each vector is a bundle, the options to check it with, and ``expect``: ``pass``
(exit 0, every line PASS) or ``fail`` (exit 3, and the first FAIL line names the
rule the vector breaks). The vectors are what ``tests/vectors/make_vectors.py``
writes, byte for byte: a change to the generator without regenerating fails here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from cli_support import EXIT_OK, EXIT_REFUSED, kv
from keyvault.formats.bundle import RULES

VECTORS = Path(__file__).resolve().parent / "vectors"
BUNDLES = VECTORS / "bundles"
SPECS = sorted(BUNDLES.glob("*.json"))


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_vectors_are_what_the_generator_writes(tmp_path: Path) -> None:
    written = _generator().write(tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in written)
    stored = sorted(str(p.relative_to(BUNDLES)) for p in BUNDLES.rglob("*") if p.is_file())
    assert names == stored
    for name in names:
        assert (tmp_path / name).read_bytes() == (BUNDLES / name).read_bytes(), name


def test_the_vectors_cover_every_rule_and_both_outcomes() -> None:
    specs = [json.loads(p.read_text("utf-8")) for p in SPECS]
    assert len(specs) >= 70
    named = {s["rule"] for s in specs if s["expect"] == "fail"}
    # Every rule is broken by some vector; the history rule names its finer rules (index-proof) on its lines, and
    # the command line its key files (trusted keys).
    assert {rule.name for rule in RULES} <= named <= {rule.name for rule in RULES} | {"index-proof", "history-order",
                                                                                   "trusted keys"}
    assert sum(s["expect"] == "pass" for s in specs) >= 8


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_verify_bundle_on_a_vector(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text("utf-8"))
    args = [str(BUNDLES / a) if a.startswith("keys/") else a for a in spec["args"]]
    result = kv("verify-bundle", BUNDLES / spec["bundle"], *args)
    lines = result.output.strip().splitlines()
    fails = [line for line in lines if line.startswith("FAIL ")]
    if spec["expect"] == "pass":
        assert result.exit_code == EXIT_OK, result.output
        assert not fails and lines[-1] == "ALL CHECKS PASSED"
    else:
        assert result.exit_code == EXIT_REFUSED, result.output
        assert fails and fails[0].startswith(f"FAIL {spec['rule']}: "), result.output
        assert lines[-1] == "VERIFICATION FAILED"
        assert "malformed input" not in fails[0]  # each failure says what is wrong

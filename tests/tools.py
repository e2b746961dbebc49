"""The Kubernetes tools the tests run: kubectl and kustomize at the versions setup/kubernetes/go.mod pins,
built from their Go modules by `make setup` into `.tools/bin` (never whatever `kubectl` is on the PATH)."""

from __future__ import annotations

from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / ".tools" / "bin"


def pinned_tool(name: str) -> str:
    """The path of the tool `name` the set-up built; the test fails, never skips, without it."""
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(f"{name} is not built: `make setup` builds it into {TOOLS} (setup/kubernetes/go.mod)")
    return str(path)


def kubectl() -> str:
    return pinned_tool("kubectl")


def kustomize() -> str:
    return pinned_tool("kustomize")

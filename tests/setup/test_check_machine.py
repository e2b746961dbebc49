"""`setup/check-machine.sh`, which `make setup` runs first: on a machine without one of the toolchains the
set-up needs, or with one too old, it stops at once with a message that names it (here the machine's
programs are offered on a PATH of the test's own, one taken away or replaced by an older one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "setup" / "check-machine.sh"
#: What the script runs, as the machine has it.
PROGRAMS = ("bash", "dirname", "sed", "sort", "head", "python3", "go", "java", "mvn", "apt-get", "dpkg")

OLD_GO = '#!/bin/sh\n[ "$1 $2" = "env GOVERSION" ] && echo go1.22.1\n'
OLD_JAVA = '#!/bin/sh\necho "    java.specification.version = 11" >&2\n'
OLD_PYTHON = '#!/bin/sh\ncase "$2" in *version_info*) exit 1;; *) echo 3.9.2;; esac\n'

#: (program taken away, or replaced by a script; what the one error line must say)
CASES = [
    ("go", None, "Go 1.26.0 or later is needed to build kubectl and kustomize: 'go' is not on the PATH"),
    ("go", OLD_GO, "Go 1.26.0 or later is needed to build kubectl and kustomize (setup/kubernetes/go.mod): "
                   "this is Go 1.22.1"),
    ("java", None, "Java 17 or later is needed (Apache Kafka's server runs on it): 'java' is not on the PATH"),
    ("java", OLD_JAVA, "Java 17 or later is needed (Apache Kafka's server runs on it): this is Java 11"),
    ("mvn", None, "Maven is needed (it fetches Apache Kafka's server from Maven Central): 'mvn' is not on the PATH"),
    ("python3", None, "Python 3.11 or later is needed: 'python3' is not on the PATH"),
    ("python3", OLD_PYTHON, "Python 3.11 or later is needed: 'python3' is 3.9.2"),
    ("apt-get", None, "this set-up runs on Debian (12 or later): /etc/debian_version, apt-get and dpkg are needed"),
]


def machine(folder: Path, without: str = "", replacement: str | None = None) -> dict[str, str]:
    """An environment whose PATH has only the machine's `PROGRAMS`, less `without` (or with it replaced)."""
    folder.mkdir()
    for name in PROGRAMS:
        found = str(Path(sys.executable).resolve()) if name == "python3" else shutil.which(name)
        assert found, f"this machine has no {name}, which the set-up needs"
        if name != without:
            (folder / name).symlink_to(found)
        elif replacement is not None:
            (folder / name).write_text(replacement)
            (folder / name).chmod(0o755)
    return {**os.environ, "PATH": str(folder)}


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SCRIPT), "python3"], env=env, capture_output=True, text=True, timeout=60)


def test_this_machine_has_what_the_set_up_needs(tmp_path: Path) -> None:
    result = check(machine(tmp_path / "bin"))
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(("program", "replacement", "message"), CASES,
                         ids=[f"{p}-{'old' if r else 'missing'}" for p, r, _ in CASES])
def test_what_is_missing_is_named_and_the_set_up_stops(
    tmp_path: Path, program: str, replacement: str | None, message: str
) -> None:
    result = check(machine(tmp_path / "bin", without=program, replacement=replacement))
    assert result.returncode == 1
    assert result.stderr.startswith(f"make setup: {message}"), result.stderr
    assert result.stderr.count("\n") == 1

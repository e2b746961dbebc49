"""The guest-data alerts (deploy/kubernetes/base/alerts.yaml), unit-tested with `promtool test rules`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from schemas.vmi_events import PSEUDO_FILESYSTEM_PREFIXES, PSEUDO_FILESYSTEM_TYPES, SYSTEM_RESERVED
from sinks.guest_metrics import GuestSeries
from sinks.metrics import REGISTRY as SINK_REGISTRY

ROOT = Path(__file__).parents[2]
RULE = ROOT / "deploy" / "kubernetes" / "base" / "alerts.yaml"
CASES = Path(__file__).parent / "data" / "alerts.yaml"
#: Series the alerts may use that guestinfo does not export: KubeVirt's own (virt-controller).
UPSTREAM_ONLY = {"kubevirt_vmi_info"}
COLLECTOR_SERIES = {"guestinfo_collector_last_round_timestamp_seconds"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make setup` installs Debian's prometheus package, which has it"
    return path


def groups() -> list[dict[str, object]]:
    rule = yaml.safe_load(RULE.read_text())
    assert rule["kind"] == "PrometheusRule"
    return list(rule["spec"]["groups"])


def expressions() -> list[str]:
    return [str(rule["expr"]) for group in groups() for rule in group["rules"]]  # type: ignore[index]


def test_the_rules_pass_their_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups()}))
    shutil.copy(CASES, tmp_path / "alerts.yaml")
    checked = subprocess.run([promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", "alerts.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_test_cases() -> None:
    alerts = {rule["alert"] for group in groups() for rule in group["rules"]}  # type: ignore[index]
    cases = yaml.safe_load(CASES.read_text())
    tested = {check["alertname"] for test in cases["tests"] for check in test["alert_rule_test"]
              if check["exp_alerts"]}
    assert alerts == tested, "every alert has a case where it fires"


def test_the_alerts_use_only_series_that_are_exported() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GuestSeries({}))
    registry.register(SINK_REGISTRY)  # type: ignore[arg-type]  # a registry is a collector too
    exported = {line.split()[2] for line in generate_latest(registry).decode().splitlines()
                if line.startswith("# TYPE")}
    used = {name for expr in expressions() for name in re.findall(r"\b((?:kubevirt|guestinfo)_[a-z_]+)\b", expr)}
    assert used <= exported | UPSTREAM_ONLY | COLLECTOR_SERIES, used - exported


def test_the_filesystem_alert_leaves_out_what_the_change_events_leave_out() -> None:
    for expr in expressions():
        if "kubevirt_vmi_filesystem_used_bytes" not in expr:
            continue
        assert f'mount_point!="{SYSTEM_RESERVED}"' in expr
        pattern = re.search(r'file_system_type!~"([^"]+)"', expr)
        assert pattern is not None
        types = pattern[1].split("|")
        prefixes = [re.escape(prefix).replace("\\.", "\\\\.") + ".*" for prefix in PSEUDO_FILESYSTEM_PREFIXES]
        assert sorted(types) == sorted([*PSEUDO_FILESYSTEM_TYPES, *prefixes])


def test_the_exposition_passes_promtools_lint() -> None:
    from sinks.guest_metrics import vmi_series
    from tests.sinks.test_guest_metrics import CASES as SERIES_CASES

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GuestSeries({str(n): vmi_series(case["record"], "ns", f"vm-{n}")
                                   for n, case in enumerate(SERIES_CASES)}))
    checked = subprocess.run([promtool(), "check", "metrics"], input=generate_latest(registry), capture_output=True,
                             timeout=60)
    problems = set((checked.stdout + checked.stderr).decode().splitlines())
    # Upstream's name, kept as it is (the point is to be a drop-in for its dashboards and alerts).
    assert problems <= {'kubevirt_vmi_guest_user_count non-histogram and non-summary metrics should not have '
                        '"_count" suffix'}, problems
    assert checked.returncode in (0, 3), "3: lint problems only, the text parses"

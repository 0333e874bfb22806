"""The alert rules (deploy/prometheus/alerts.yml): valid, and each doing what its unit test in
alerts_test.yml says, checked by promtool (Debian's ``prometheus`` package; .ci/run installs
it). Without promtool the tests skip on a laptop and fail under CI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CI

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (apt-get install -y prometheus): alert rules untested"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def _run(*args: str) -> str:
    out = subprocess.run(args, cwd=RULES, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_rules_are_valid(promtool: str) -> None:
    assert "SUCCESS" in _run(promtool, "check", "rules", "alerts.yml")


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    assert "SUCCESS" in _run(promtool, "test", "rules", "alerts_test.yml")


def test_every_rule_is_tested_firing_and_quiet() -> None:
    rules = re.findall(r"^\s*- alert: (\w+)", (RULES / "alerts.yml").read_text(), re.M)
    assert len(rules) == len(set(rules)) >= 10
    cases = re.split(r"^\s*- alertname: ", (RULES / "alerts_test.yml").read_text(), flags=re.M)
    firing, quiet = set(), set()
    for case in cases[1:]:
        name = case.split()[0]
        (firing if re.search(r"^\s*exp_alerts:", case, re.M) else quiet).add(name)
    assert firing == set(rules), "rules without a case where they fire"
    assert quiet >= set(rules), "rules without a case where they stay quiet"


def test_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml, with the container's paths made this machine's."""
    token = tmp_path / "token"
    token.write_text("x" * 32)
    config = (RULES / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in config
    assert "/run/secrets/flashsale_admin_token" in config
    config = config.replace("/etc/prometheus/alerts.yml", str(RULES / "alerts.yml"))
    config = config.replace("/run/secrets/flashsale_admin_token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    assert "SUCCESS" in _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))


def test_compose_mounts_the_monitoring_files() -> None:
    compose = (RULES.parent.parent / "docker-compose.yml").read_text()
    mounted = re.findall(r"^\s*- \./(deploy/\S+?):", compose, re.M)
    assert {
        "deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml",
        "deploy/grafana/provisioning", "deploy/grafana/flashsale.json",
    } <= set(mounted)  # fmt: skip
    for path in mounted:
        assert (RULES.parent.parent / path).exists(), path
    assert compose.count('profiles: ["monitoring"]') == 2

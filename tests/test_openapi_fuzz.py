"""The service against its own OpenAPI description (schemathesis): whatever is generated from
it, valid or not, gets no 5xx, a JSON answer, and for every error ``{"error", "message"}``.
FLASHSALE_FUZZ_EXAMPLES (default 25) sets how many cases each operation gets."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from flashsale.auth import issue_token
from flashsale.http.openapi import openapi_spec
from tests.helpers import PAYMENT_SECRET
from tests.servers import free_port

EXAMPLES = int(os.environ.get("FLASHSALE_FUZZ_EXAMPLES", "25"))
schema = schemathesis.openapi.from_dict(openapi_spec())
# every case on one pytest-xdist worker: the module's service starts once
pytestmark = pytest.mark.xdist_group("openapi_fuzz")


@schemathesis.check
def errors_are_well_formed(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), f"error body is not an object: {response.text[:200]}"
        assert isinstance(body.get("error"), str), f"no 'error' code: {body}"
        assert isinstance(body.get("message"), str), f"no 'message': {body}"
    return None


@pytest.fixture(scope="module")
def live(redis_url: str, database_url: str) -> Iterator[dict[str, str]]:
    """``flashsale serve`` on a free port, with its own key prefix, and the tokens to use."""
    port = free_port()
    secret, admin = secrets.token_urlsafe(40), secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update(
        FLASHSALE_REDIS_URL=redis_url,
        FLASHSALE_DATABASE_URL=database_url,
        FLASHSALE_KEY_PREFIX=f"fuzz-{secrets.token_hex(4)}",
        FLASHSALE_TOKEN_SECRET=secret,
        FLASHSALE_ADMIN_TOKEN=admin,
        FLASHSALE_PAYMENT_SECRET=PAYMENT_SECRET,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashsale", "serve", "--single-process", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
    try:
        yield {"base": base, "shopper": issue_token(secret, "fuzzer"), "admin": admin}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        # the service logged no crash while being fuzzed
        assert b"Traceback" not in err, err.decode()[-3000:]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: a failure replays
)
def test_the_api_keeps_its_description(case: Any, live: dict[str, str]) -> None:
    token = live["admin"] if case.path.startswith("/v1/admin") else live["shopper"]
    case.call_and_validate(
        base_url=live["base"],
        headers={"Authorization": f"Bearer {token}"},
        checks=[
            not_a_server_error,
            content_type_conformance,
            response_schema_conformance,
            errors_are_well_formed,
        ],
    )

"""flashsale/webhooks/signing.py against the Standard Webhooks specification's example and the
reference library (PyPI ``standardwebhooks``): the same signatures both ways, and stricter
where a service facing the internet must be."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest

from flashsale.payments.simulator import signed_notification
from flashsale.webhooks import signing

standardwebhooks = pytest.importorskip("standardwebhooks")

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(signature: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": signature,
    }


def test_the_specifications_example_signs_and_verifies() -> None:
    key = signing.parse_secret(SPEC_SECRET)
    assert signing.sign(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    verified = signing.verify([key], spec_headers(), SPEC_BODY, now_s=SPEC_TIMESTAMP + 299)
    assert (verified.msg_id, verified.timestamp) == (SPEC_ID, SPEC_TIMESTAMP)
    for now_s in (SPEC_TIMESTAMP + 301, SPEC_TIMESTAMP - 301):
        with pytest.raises(signing.SignatureError, match="5 minutes"):
            signing.verify([key], spec_headers(), SPEC_BODY, now_s=now_s)
    with pytest.raises(signing.SignatureError, match="no valid signature"):
        signing.verify([key], spec_headers(), SPEC_BODY + b" ", now_s=SPEC_TIMESTAMP)


def test_the_reference_library_signs_the_specifications_example_alike() -> None:
    reference = standardwebhooks.Webhook(SPEC_SECRET)
    when = datetime.fromtimestamp(SPEC_TIMESTAMP, tz=UTC)
    assert reference.sign(SPEC_ID, when, SPEC_BODY.decode()) == SPEC_SIGNATURE


@pytest.mark.parametrize("seed", range(20))
def test_signatures_agree_with_the_reference_library_both_ways(seed: int) -> None:
    rng = random.Random(seed)
    secret = signing.new_secret()
    key = signing.parse_secret(secret)
    reference = standardwebhooks.Webhook(secret)
    order_id = "".join(rng.choice("abcdefghjk0123456789-") for _ in range(rng.randint(1, 60)))
    amount = rng.randint(0, 10**12)
    now = int(time.time()) + rng.randint(-250, 250)
    body, headers = signed_notification(key, order_id, amount, "EUR", timestamp=now)
    # ours -> theirs
    assert reference.verify(body, headers)["data"]["order_id"] == order_id
    # theirs -> ours
    msg_id = headers["webhook-id"]
    theirs = reference.sign(msg_id, datetime.fromtimestamp(now, tz=UTC), body.decode())
    assert theirs == headers["webhook-signature"]
    verified = signing.verify([key], {**headers, "webhook-signature": theirs}, body, time.time())
    assert verified.msg_id == msg_id


def test_during_a_rotation_either_key_verifies_and_any_listed_signature_may_match() -> None:
    old, new = signing.parse_secret(signing.new_secret()), signing.parse_secret(SPEC_SECRET)
    stranger = signing.parse_secret(signing.new_secret())
    for signer in (old, new):
        signature = signing.sign(signer, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
        signing.verify([new, old], spec_headers(signature), SPEC_BODY, SPEC_TIMESTAMP)
    foreign = signing.sign(stranger, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    listed = f"v1a,c29tZQ== {foreign} {SPEC_SIGNATURE}"
    signing.verify([old, new], spec_headers(listed), SPEC_BODY, SPEC_TIMESTAMP)
    with pytest.raises(signing.SignatureError):
        signing.verify([old], spec_headers(listed), SPEC_BODY, SPEC_TIMESTAMP)


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("webhook-timestamp", "1.614265330e9"),  # the reference library reads this as a time
        ("webhook-timestamp", " 1614265330"),
        ("webhook-signature", SPEC_SIGNATURE.rstrip("=")),  # unpadded base64
        ("webhook-signature", "v1," + SPEC_SIGNATURE[3:].replace("/", "_")),  # base64url
        ("webhook-signature", "v1,,"),
        ("webhook-id", "msg with spaces"),
    ],
)
def test_stricter_than_the_reference_library(change: str, value: str) -> None:
    key = signing.parse_secret(SPEC_SECRET)
    with pytest.raises(signing.SignatureError):
        signing.verify([key], {**spec_headers(), change: value}, SPEC_BODY, SPEC_TIMESTAMP)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_c2hvcnQ=", "whsec_not base64!"])
def test_a_secret_that_is_not_one_is_refused(secret: str) -> None:
    with pytest.raises(signing.SecretError):
        signing.parse_secret(secret)

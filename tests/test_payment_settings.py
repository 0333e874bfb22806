"""FLASHSALE_DEFAULT_CURRENCY and FLASHSALE_PAYMENT_SECRET, as Settings reads them."""

from __future__ import annotations

import pytest

from flashsale.settings import Settings, SettingsError
from flashsale.webhooks.signing import new_secret, parse_secret


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLASHSALE_DEFAULT_CURRENCY", "FLASHSALE_PAYMENT_SECRET"):
        monkeypatch.delenv(name, raising=False)


def test_unset_the_currency_is_usd_and_no_payment_secret_is_held() -> None:
    settings = Settings.from_env()
    assert (settings.default_currency, settings.payment_secrets) == ("USD", ())
    assert settings.payment_keys == []


@pytest.mark.parametrize("value", ["EUR", "JPY"])
def test_a_default_currency_is_taken(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLASHSALE_DEFAULT_CURRENCY", value)
    assert Settings.from_env().default_currency == value


@pytest.mark.parametrize("value", ["eur", "EURO", "EU", "E1R", "ÉUR", " EUR"])
def test_a_default_currency_that_is_no_code_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FLASHSALE_DEFAULT_CURRENCY", value)
    with pytest.raises(SettingsError, match="FLASHSALE_DEFAULT_CURRENCY"):
        Settings.from_env()


def test_one_or_several_payment_secrets_during_a_rotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new, old = new_secret(), new_secret()
    monkeypatch.setenv("FLASHSALE_PAYMENT_SECRET", new)
    assert Settings.from_env().payment_keys == [parse_secret(new)]
    monkeypatch.setenv("FLASHSALE_PAYMENT_SECRET", f" {new} ,{old},")
    settings = Settings.from_env()
    assert settings.payment_secrets == (new, old)
    assert settings.payment_keys == [parse_secret(new), parse_secret(old)]


@pytest.mark.parametrize("value", ["whsec_c2hvcnQ=", "whsec_!!!!", "not-a-secret-at-all-$$$"])
def test_a_payment_secret_that_is_none_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FLASHSALE_PAYMENT_SECRET", f"{new_secret()},{value}")
    with pytest.raises(SettingsError, match="FLASHSALE_PAYMENT_SECRET"):
        Settings.from_env()

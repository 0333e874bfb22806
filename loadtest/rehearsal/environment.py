"""Which servers the rehearsal uses, from the usual ``FLASHSALE_*`` variables, and what it made
for itself (and so removes afterwards): a key prefix and a database when none were named,
secrets when it starts the service itself (the payment service's signing secret included: the
crowd plays the payment service too; and the order events' secret, for the rehearsal's own
receiver)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from flashsale.webhooks.signing import new_secret

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Environment:
    env: dict[str, str]  # for every process the rehearsal starts
    redis_url: str
    database_url: str
    key_prefix: str
    own_prefix: bool  # chosen here: its keys are deleted at the end
    own_database: bool  # named here: dropped at the end (the service creates it)

    @property
    def admin_token(self) -> str:
        return self.env["FLASHSALE_ADMIN_TOKEN"]

    @property
    def token_secret(self) -> str:
        return self.env["FLASHSALE_TOKEN_SECRET"]

    @property
    def payment_secret(self) -> str:
        """The secret the crowd signs payment notifications with (the first one listed)."""
        return self.env["FLASHSALE_PAYMENT_SECRET"].split(",")[0].strip()

    @property
    def webhook_secret(self) -> str:
        """The secret order events are signed with, for the rehearsal's receiver (made up for a
        service started here)."""
        return self.env["FLASHSALE_WEBHOOK_SECRET"]

    @property
    def database_name(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/")


class ConfigError(RuntimeError):
    pass


def resolve(external_service: bool) -> Environment:
    env = dict(os.environ)
    run_id = secrets.token_hex(4)
    own_prefix = not env.get("FLASHSALE_KEY_PREFIX")
    if own_prefix:
        env["FLASHSALE_KEY_PREFIX"] = f"rehearsal-{run_id}"
    own_database = not env.get("FLASHSALE_DATABASE_URL")
    if own_database:
        # a throwaway database, never the deployment's default one
        server = urlsplit(DEFAULT_PG_SERVER)
        env["FLASHSALE_DATABASE_URL"] = server._replace(
            path=f"/flashsale_rehearsal_{run_id}"
        ).geturl()
    env.setdefault("FLASHSALE_REDIS_URL", DEFAULT_REDIS_URL)
    for name in ("FLASHSALE_TOKEN_SECRET", "FLASHSALE_ADMIN_TOKEN"):
        if not env.get(name):
            if external_service:
                raise ConfigError(f"{name} must be set to the running service's value (--service)")
            env[name] = secrets.token_urlsafe(48)
    if not env.get("FLASHSALE_PAYMENT_SECRET"):
        if external_service:
            raise ConfigError(
                "FLASHSALE_PAYMENT_SECRET must be set to the running service's value (--service):"
                " the crowd's winners pay through signed payment notifications"
            )
        env["FLASHSALE_PAYMENT_SECRET"] = new_secret()
    if not external_service:
        # the service started here delivers its order events to the rehearsal's receiver
        # (the driver sets FLASHSALE_WEBHOOK_URLS once it listens), and to nowhere else
        env.pop("FLASHSALE_WEBHOOK_URLS", None)
        if not env.get("FLASHSALE_WEBHOOK_SECRET"):
            env["FLASHSALE_WEBHOOK_SECRET"] = new_secret()
    if external_service and (own_database or own_prefix):
        raise ConfigError(
            "with --service, set FLASHSALE_DATABASE_URL and FLASHSALE_KEY_PREFIX to the "
            "service's: the rehearsal imports bookings and issues F-codes into its stores"
        )
    return Environment(
        env=env,
        redis_url=env["FLASHSALE_REDIS_URL"],
        database_url=env["FLASHSALE_DATABASE_URL"],
        key_prefix=env["FLASHSALE_KEY_PREFIX"],
        own_prefix=own_prefix,
        own_database=own_database,
    )

"""All configuration, read from the environment in one place."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/flashsale"


class ConfirmMode(StrEnum):
    """When a buy is answered 201.

    ``redis``: once the reservation and its order event are in Redis (the writer carries the
    order to PostgreSQL shortly after). ``postgres``: only after the order row is committed in
    PostgreSQL; if PostgreSQL is away the buy is undone and answered 503.
    """

    REDIS = "redis"
    POSTGRES = "postgres"


class SettingsError(ValueError):
    """An environment variable holds a value flashsale cannot use."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _default_relay_processes() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _bounded_int(name: str, default: int, low: int, high: int) -> int:
    value = _env_int(name, default)
    if not low <= value <= high:
        raise SettingsError(f"{name} must be {low} to {high}, got {value}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _secret(name: str, default: str) -> str:
    """A secret from the environment: at least 32 bytes, and nothing a copy and paste (or a
    trailing newline of a secrets file) could have added around it, since a client would
    send the token without it and be refused with no clue why."""
    value = os.environ.get(name) or default
    if value != value.strip():
        raise SettingsError(f"{name} has spaces or line breaks at its start or end: remove them")
    if len(value.encode()) < 32:
        raise SettingsError(
            f"{name} must be at least 32 bytes long, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


def _payment_secrets(raw: str) -> tuple[str, ...]:
    """FLASHSALE_PAYMENT_SECRET: one ``whsec_`` secret, or several separated by commas while a
    key is rotated (base64 has no comma)."""
    from flashsale.webhooks.signing import SecretError, parse_secret

    secrets_ = tuple(part.strip() for part in raw.split(",") if part.strip())
    for secret in secrets_:
        try:
            parse_secret(secret)
        except SecretError as exc:
            raise SettingsError(f"FLASHSALE_PAYMENT_SECRET: {exc}") from None
    return secrets_


def _webhook_urls(raw: str) -> tuple[str, ...]:
    """FLASHSALE_WEBHOOK_URLS: http(s) URLs separated by commas, each once."""
    from urllib.parse import urlsplit

    urls: list[str] = []
    for part in raw.split(","):
        url = part.strip()
        if not url:
            continue
        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises on a port that is not a number
        except ValueError:
            valid = False
        if not valid or any(c.isspace() for c in url):
            raise SettingsError(f"FLASHSALE_WEBHOOK_URLS: not an http(s) URL: {url!r}")
        if url not in urls:
            urls.append(url)
    return tuple(urls)


def _webhook_secret(raw: str, urls: tuple[str, ...]) -> str:
    """FLASHSALE_WEBHOOK_SECRET: the ``whsec_`` secret order events are signed with; required
    when there are receivers."""
    from flashsale.webhooks.signing import SecretError, parse_secret

    secret = raw.strip()
    if not secret:
        if urls:
            raise SettingsError(
                "FLASHSALE_WEBHOOK_URLS needs FLASHSALE_WEBHOOK_SECRET (whsec_...), e.g. from "
                "python3 -c 'from flashsale.webhooks import signing; print(signing.new_secret())'"
            )
        return ""
    try:
        parse_secret(secret)
    except SecretError as exc:
        raise SettingsError(f"FLASHSALE_WEBHOOK_SECRET: {exc}") from None
    return secret


@dataclass(frozen=True, slots=True)
class Settings:
    """Service settings. Build with :meth:`from_env`; every field has a ``FLASHSALE_*`` twin."""

    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    # Shared secret for shoppers' HS256 tokens. A random one is fine for a demo, but tokens then
    # die with the process, so deployments set it.
    token_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # Prefix of every Redis key, so several deployments and test runs can share one Redis.
    key_prefix: str = "fs"
    confirm_mode: ConfirmMode = ConfirmMode.REDIS
    # Shopper request bodies are tiny; anything bigger is refused before it is parsed.
    max_body_bytes: int = 4096
    admin_max_body_bytes: int = 1_048_576
    idempotency_ttl_s: int = 86_400
    redis_max_connections: int = 64
    pg_min_connections: int = 1
    pg_max_connections: int = 8
    writer_batch_size: int = 500
    writer_block_ms: int = 1000
    # A stream entry pending this long belongs to a writer that died: another one takes it over.
    writer_reclaim_idle_ms: int = 30_000
    sweeper_interval_s: float = 0.25
    sweeper_batch_size: int = 500
    # How long a process trusts its own "sold out" verdict before asking Redis again.
    sold_out_recheck_s: float = 0.1
    # In confirm mode "postgres": how long a buy waits for its commit before giving up with 503.
    pg_confirm_timeout_s: float = 5.0
    # F-codes are stored as HMAC digests under this key. Unset, it is derived from the token
    # secret; set it explicitly to rotate the two independently.
    fcode_secret: str = ""
    # F-code guesses (codes that are not the shopper's to use) allowed per window; 0 is no
    # limit. The address limit is off by default: many shoppers share one address (carrier
    # NAT, a campus), and one guesser behind it would lock them all out.
    fcode_failures_per_user: int = 5
    fcode_failures_per_address: int = 0
    fcode_failure_window_s: int = 60
    run_writer: bool = True
    run_sweeper: bool = True
    # a request body must arrive within this long (408 after); a connection that sends no
    # complete request for this long is closed (slow clients cannot hold connections)
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    # a Redis call not answered within this long fails (503 for a shopper) instead of hanging
    redis_timeout_s: float = 5.0
    # a PostgreSQL query unanswered this long fails (the writer retries; a shopper gets 503)
    pg_timeout_s: float = 30.0
    # how long `serve` waits before starting a crashed worker or writer again
    restart_delay_s: float = 1.0
    # The hot path's Redis connection: "lean" (flashsale/engine/wire.py, asyncio + hiredis) or
    # "redis-py" (its pooled connections); everything else always uses redis-py.
    redis_client: str = "lean"
    # ISO 4217 currency of a sale created without one, and of the sales made before sales had
    # a currency (in PostgreSQL by migration 0004, in Redis when a sale hash has none).
    default_currency: str = "USD"
    # Standard Webhooks secrets ("whsec_<base64>") the payment service signs its notifications
    # with: any of them is accepted, so during a key rotation both the new and the old are
    # given. None: the payment route answers 503 (nobody can be told an order is paid).
    payment_secrets: tuple[str, ...] = ()

    @property
    def payment_keys(self) -> list[bytes]:
        """The HMAC keys of the payment service's notifications."""
        from flashsale.webhooks.signing import parse_secret

        return [parse_secret(secret) for secret in self.payment_secrets]

    # Order events (flashsale/outbox): the receivers the relay POSTs them to, the Standard
    # Webhooks secret they are signed with, and the relay's patience: an answer within
    # webhook_timeout_s, retries after webhook_retry_base_s doubling up to webhook_retry_cap_s,
    # given up webhook_give_up_s after the first attempt; a relay claims webhook_batch_size
    # orders' events at a time.
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = ""
    webhook_timeout_s: float = 10.0
    webhook_retry_base_s: float = 1.0
    webhook_retry_cap_s: float = 3600.0
    webhook_give_up_s: float = 86_400.0
    webhook_batch_size: int = 200
    webhook_poll_s: float = 0.25
    # how many relay processes `serve` runs (they share the receivers' work, each order with
    # one of them at a time): one a core, up to four, so that delivery uses every core the
    # sale leaves free
    relay_processes: int = field(default_factory=_default_relay_processes)
    # GET /metrics and the counting behind it (flashsale/metrics); the endpoint takes the admin
    # token unless metrics_public (for a scraper inside a private network)
    metrics: bool = True
    metrics_public: bool = False

    @property
    def webhook_key(self) -> bytes:
        """The HMAC key order events are signed with."""
        from flashsale.webhooks.signing import parse_secret

        return parse_secret(self.webhook_secret)

    @property
    def fcode_key(self) -> bytes:
        """The HMAC key of F-code digests."""
        from flashsale.fcodes.codes import derive_secret

        return self.fcode_secret.encode() if self.fcode_secret else derive_secret(self.token_secret)

    @classmethod
    def from_env(cls) -> Settings:
        """Read every ``FLASHSALE_*`` variable; unset ones keep their defaults."""
        env = os.environ.get
        defaults = cls()
        mode_raw = env("FLASHSALE_CONFIRM_MODE", ConfirmMode.REDIS.value)
        try:
            confirm_mode = ConfirmMode(mode_raw)
        except ValueError:
            raise SettingsError(
                f"FLASHSALE_CONFIRM_MODE must be 'redis' or 'postgres', got {mode_raw!r}"
            ) from None
        prefix = env("FLASHSALE_KEY_PREFIX", defaults.key_prefix)
        if not prefix or any(c in prefix for c in "{}: \t\n"):
            raise SettingsError(
                "FLASHSALE_KEY_PREFIX must be non-empty, without braces, colons or spaces"
            )
        client = env("FLASHSALE_REDIS_CLIENT", defaults.redis_client)
        if client not in ("lean", "redis-py"):
            raise SettingsError(
                f"FLASHSALE_REDIS_CLIENT must be 'lean' or 'redis-py', got {client!r}"
            )
        # RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits); the
        # admin token guards every operator action, so it gets the same floor
        secret = _secret("FLASHSALE_TOKEN_SECRET", defaults.token_secret)
        admin_token = _secret("FLASHSALE_ADMIN_TOKEN", defaults.admin_token)
        currency = env("FLASHSALE_DEFAULT_CURRENCY", "") or defaults.default_currency
        if not (
            len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
        ):
            raise SettingsError(
                f"FLASHSALE_DEFAULT_CURRENCY must be an ISO 4217 code such as USD, got {currency!r}"
            )
        payment_secrets = _payment_secrets(env("FLASHSALE_PAYMENT_SECRET", ""))
        webhook_urls = _webhook_urls(env("FLASHSALE_WEBHOOK_URLS", ""))
        webhook_secret = _webhook_secret(env("FLASHSALE_WEBHOOK_SECRET", ""), webhook_urls)
        return cls(
            redis_url=env("FLASHSALE_REDIS_URL", DEFAULT_REDIS_URL),
            database_url=env("FLASHSALE_DATABASE_URL", DEFAULT_DATABASE_URL),
            token_secret=secret,
            admin_token=admin_token,
            key_prefix=prefix,
            confirm_mode=confirm_mode,
            max_body_bytes=_env_int("FLASHSALE_MAX_BODY_BYTES", defaults.max_body_bytes),
            idempotency_ttl_s=_env_int("FLASHSALE_IDEMPOTENCY_TTL_S", defaults.idempotency_ttl_s),
            redis_max_connections=_env_int(
                "FLASHSALE_REDIS_MAX_CONNECTIONS", defaults.redis_max_connections
            ),
            pg_max_connections=_env_int(
                "FLASHSALE_PG_MAX_CONNECTIONS", defaults.pg_max_connections
            ),
            writer_batch_size=_env_int("FLASHSALE_WRITER_BATCH_SIZE", defaults.writer_batch_size),
            writer_reclaim_idle_ms=_env_int(
                "FLASHSALE_WRITER_RECLAIM_IDLE_MS", defaults.writer_reclaim_idle_ms
            ),
            sweeper_interval_s=_env_float(
                "FLASHSALE_SWEEPER_INTERVAL_S", defaults.sweeper_interval_s
            ),
            restart_delay_s=_env_float("FLASHSALE_RESTART_DELAY_S", defaults.restart_delay_s),
            body_timeout_s=_env_float("FLASHSALE_BODY_TIMEOUT_S", defaults.body_timeout_s),
            keepalive_timeout_s=_env_float(
                "FLASHSALE_KEEPALIVE_TIMEOUT_S", defaults.keepalive_timeout_s
            ),
            redis_timeout_s=_env_float("FLASHSALE_REDIS_TIMEOUT_S", defaults.redis_timeout_s),
            pg_timeout_s=_env_float("FLASHSALE_PG_TIMEOUT_S", defaults.pg_timeout_s),
            sold_out_recheck_s=_env_float(
                "FLASHSALE_SOLD_OUT_RECHECK_S", defaults.sold_out_recheck_s
            ),
            pg_confirm_timeout_s=_env_float(
                "FLASHSALE_PG_CONFIRM_TIMEOUT_S", defaults.pg_confirm_timeout_s
            ),
            fcode_secret=env("FLASHSALE_FCODE_SECRET", ""),
            fcode_failures_per_user=_env_int(
                "FLASHSALE_FCODE_FAILURES_PER_USER", defaults.fcode_failures_per_user
            ),
            fcode_failures_per_address=_env_int(
                "FLASHSALE_FCODE_FAILURES_PER_ADDRESS", defaults.fcode_failures_per_address
            ),
            fcode_failure_window_s=_env_int(
                "FLASHSALE_FCODE_FAILURE_WINDOW_S", defaults.fcode_failure_window_s
            ),
            run_writer=env("FLASHSALE_RUN_WRITER", "1") not in ("0", "false", "no"),
            run_sweeper=env("FLASHSALE_RUN_SWEEPER", "1") not in ("0", "false", "no"),
            redis_client=client,
            default_currency=currency,
            payment_secrets=payment_secrets,
            webhook_urls=webhook_urls,
            webhook_secret=webhook_secret,
            webhook_timeout_s=_env_float("FLASHSALE_WEBHOOK_TIMEOUT_S", defaults.webhook_timeout_s),
            webhook_retry_base_s=_env_float(
                "FLASHSALE_WEBHOOK_RETRY_BASE_S", defaults.webhook_retry_base_s
            ),
            webhook_retry_cap_s=_env_float(
                "FLASHSALE_WEBHOOK_RETRY_CAP_S", defaults.webhook_retry_cap_s
            ),
            webhook_give_up_s=_env_float("FLASHSALE_WEBHOOK_GIVE_UP_S", defaults.webhook_give_up_s),
            webhook_batch_size=_bounded_int(
                "FLASHSALE_WEBHOOK_BATCH_SIZE", defaults.webhook_batch_size, 1, 10_000
            ),
            relay_processes=_bounded_int(
                "FLASHSALE_RELAY_PROCESSES", defaults.relay_processes, 1, 64
            ),
            metrics=env("FLASHSALE_METRICS", "1") not in ("0", "false", "no"),
            metrics_public=env("FLASHSALE_METRICS_PUBLIC", "0") in ("1", "true", "yes"),
        )

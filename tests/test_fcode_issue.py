"""Issuing F-codes (CLI and admin API), revoking, counting, checking and reloading them."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from flashsale.fcodes import codes
from flashsale.settings import Settings
from tests.helpers import Service, run_flashsale

N = 2000


async def fcodes_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    return await run_flashsale(settings, "fcodes", *args)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def fcode_sale(service: Service) -> str:
    sale = await service.create_sale(stock=10, fcode_stock=5, per_user_limit=1)
    sale_id: str = sale["sale_id"]
    return sale_id


def hash_key(settings: Settings, sale_id: str) -> str:
    return f"{settings.key_prefix}:{{{sale_id}}}:fcodes"


async def api_issue(service: Service, sale_id: str, body: dict[str, Any]) -> list[str]:
    reply = await service.call(
        "POST", f"/v1/admin/sales/{sale_id}/fcodes", json=body, headers=service.admin_headers
    )
    assert reply.status == 201, reply.body
    return [c["code"] for c in reply.body["codes"]]


async def redis_state(redis: Redis, settings: Settings, sale_id: str, code: str) -> str | None:
    d = codes.digest(settings.fcode_key, codes.normalize(code))
    record = await redis.hget(hash_key(settings, sale_id), d)
    return None if record is None else str(record)[0]


async def pg_state(pg: asyncpg.Pool, settings: Settings, code: str) -> str:
    d = codes.digest(settings.fcode_key, codes.normalize(code))
    state: str = await pg.fetchval("SELECT state FROM fcodes WHERE digest = $1", d)
    return state


async def wait_pg_state(pg: asyncpg.Pool, settings: Settings, code: str, state: str) -> None:
    deadline = time.monotonic() + 15
    while await pg_state(pg, settings, code) != state:
        assert time.monotonic() < deadline, f"PostgreSQL never showed {state}"
        await asyncio.sleep(0.05)


async def test_cli_issue_stores_only_digests_and_refuses_a_rerun(
    service: Service, settings: Settings, pg: asyncpg.Pool, redis: Redis, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service)
    out = tmp_path / "spring.csv"
    rc, _, err = await fcodes_cli(
        settings, "issue", sale_id, "--count", str(N), "--campaign", "spring", "--out", str(out)
    )
    assert rc == 0, err
    assert not (tmp_path / "spring.csv.partial").exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().splitlines()[0] == "code,code_ref,user,campaign,sale_id"
    rows = read_csv(out)
    assert len(rows) == N
    plain = [r["code"] for r in rows]
    assert len(set(plain)) == N
    assert all(len(c) == 20 and len(codes.normalize(c)) == 18 for c in plain)
    assert {(r["user"], r["campaign"], r["sale_id"]) for r in rows} == {("", "spring", sale_id)}

    key = settings.fcode_key
    for r in rows:  # the reference exports show: the digest's first 16 hex characters
        assert r["code_ref"] == codes.digest(key, codes.normalize(r["code"]))[:16]
    digests = {codes.digest(key, codes.normalize(c)) for c in plain}
    db_rows = await pg.fetch(
        "SELECT f::text AS t, digest FROM fcodes f WHERE sale_id = $1", sale_id
    )
    assert {r["digest"] for r in db_rows} == digests
    campaign = await pg.fetchrow("SELECT * FROM fcode_campaigns WHERE sale_id = $1", sale_id)
    assert campaign["issued"] == N
    assert campaign["loaded_at"] is not None
    fields = await redis.hgetall(hash_key(settings, sale_id))
    assert set(fields) == digests
    assert set(fields.values()) == {"a|spring||"}

    # no store holds a code in any plain form, nor its unkeyed hash
    stored = (
        " ".join(r["t"] for r in db_rows) + " " + " ".join(f"{k} {v}" for k, v in fields.items())
    )
    tokens = set(re.split(r"[^A-Za-z0-9-]+", stored)) | set(re.split(r"[^A-Za-z0-9]+", stored))
    for c in plain:
        n = codes.normalize(c)
        for form in (c, n, n.lower(), c.lower()):
            sha = hashlib.sha256(form.encode()).hexdigest()
            assert not {form, sha, sha[:24]} & tokens

    # the same campaign again: refused, and nothing changes
    again = tmp_path / "again.csv"
    rc, _, err = await fcodes_cli(
        settings, "issue", sale_id, "--count", "5", "--campaign", "spring", "--out", str(again)
    )
    assert rc == 1
    assert "issued already" in err
    assert not again.exists()
    assert not (tmp_path / "again.csv.partial").exists()
    assert await pg.fetchval("SELECT count(*) FROM fcodes WHERE sale_id = $1", sale_id) == N
    assert await redis.hlen(hash_key(settings, sale_id)) == N
    # an existing output file is never overwritten; a bad campaign name is a usage error
    for args in (
        ["--campaign", "other", "--out", str(out)],
        ["--campaign", "Bad!", "--out", str(again)],
    ):
        rc, _, err = await fcodes_cli(settings, "issue", sale_id, "--count", "5", *args)
        assert rc == 2, err
    assert read_csv(out) == rows
    rc, _, err = await fcodes_cli(
        settings, "issue", "no-such-sale", "--count", "5", "--campaign", "x", "--out", str(again)
    )
    assert rc == 1
    assert "no sale" in err


async def test_cli_bind_users_binds_one_code_per_user(
    service: Service, settings: Settings, pg: asyncpg.Pool, redis: Redis, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service)
    users = tmp_path / "users.txt"
    users.write_text("alice\nbob\n\ncarol\n")
    out = tmp_path / "vip.csv"
    rc, _, err = await fcodes_cli(
        settings, "issue", sale_id, "--campaign", "vip", "--bind-users", str(users),
        "--out", str(out),
    )  # fmt: skip
    assert rc == 0, err
    rows = read_csv(out)
    assert [r["user"] for r in rows] == ["alice", "bob", "carol"]
    bound = {
        r["digest"]: r["bound_user"]
        for r in await pg.fetch("SELECT digest, bound_user FROM fcodes WHERE sale_id = $1", sale_id)
    }
    fields = await redis.hgetall(hash_key(settings, sale_id))
    for r in rows:
        d = codes.digest(settings.fcode_key, codes.normalize(r["code"]))
        assert bound[d] == r["user"]
        assert fields[d] == f"a|vip||{r['user']}"
    # someone else's code does not work; one's own does
    alice = rows[0]["code"]
    assert (await service.buy(sale_id, "bob", {"fcode": alice})).body["error"] == "fcode_invalid"
    assert (await service.buy(sale_id, "alice", {"fcode": alice})).status == 201
    rc, _, _ = await fcodes_cli(
        settings, "issue", sale_id, "--campaign", "vip2", "--bind-users", str(users),
        "--count", "2", "--out", str(tmp_path / "vip2.csv"),
    )  # fmt: skip
    assert rc == 2
    assert (
        await pg.fetchval("SELECT count(*) FROM fcode_campaigns WHERE sale_id = $1", sale_id) == 1
    )


async def test_revoke_by_code_file_and_campaign_and_stats(
    service: Service, settings: Settings, pg: asyncpg.Pool, redis: Redis, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service)
    c1 = await api_issue(service, sale_id, {"campaign": "c1", "count": 20})
    c2 = await api_issue(service, sale_id, {"campaign": "c2", "count": 5})
    assert (await service.buy(sale_id, "buyer", {"fcode": c1[19]})).status == 201

    rc, out, err = await fcodes_cli(settings, "revoke", sale_id, "--code", c1[0].lower())
    assert rc == 0, err
    assert "revoked now: 1; revoked before: 0; unknown to the sale: 0" in out
    typo = c1[1][:-1] + ("X" if c1[1][-1] != "X" else "Y")  # one character off: check fails
    rc, _, err = await fcodes_cli(settings, "revoke", sale_id, "--code", typo)
    assert rc == 2
    assert "nothing revoked" in err
    assert await redis_state(redis, settings, sale_id, c1[1]) == "a"

    as_csv = tmp_path / "some.csv"
    as_csv.write_text(
        "code,user,campaign,sale_id\n" + "".join(f"{c},,c1,{sale_id}\n" for c in [c1[0], *c1[1:4]])
    )
    rc, out, err = await fcodes_cli(settings, "revoke", sale_id, "--file", str(as_csv))
    assert rc == 0, err
    assert "revoked now: 3; revoked before: 1; unknown to the sale: 0" in out
    lines = tmp_path / "lines.txt"
    lines.write_text(f"# to revoke\n{c1[4]}\n\n{codes.new_code()}\n")
    rc, out, err = await fcodes_cli(settings, "revoke", sale_id, "--file", str(lines))
    assert rc == 1, err  # done in part: a code the sale does not know
    assert "revoked now: 1; revoked before: 0; unknown to the sale: 1" in out
    assert "1 code(s) are not in sale" in err
    rc, out, err = await fcodes_cli(settings, "revoke", sale_id, "--campaign", "c2")
    assert rc == 0, err
    assert "revoked now: 5; revoked before: 0" in out
    rc, _, err = await fcodes_cli(settings, "revoke", sale_id, "--campaign", "nope")
    assert rc == 1

    for code in [*c1[:5], *c2]:
        assert await redis_state(redis, settings, sale_id, code) == "r"
        assert await pg_state(pg, settings, code) == "revoked"
    for code in c1[5:19]:
        assert await redis_state(redis, settings, sale_id, code) == "a"
    assert (await service.buy(sale_id, "late", {"fcode": c2[0]})).body["error"] == "fcode_revoked"
    await wait_pg_state(pg, settings, c1[19], "redeemed")

    rc, out, err = await fcodes_cli(settings, "stats", sale_id, "--json")
    assert rc == 0, err
    s = json.loads(out)
    counts = {
        c["campaign"]: (
            c["issued"], c["redeemed"], c["redeemed_paid"], c["redeemed_unpaid"], c["revoked"],
            c["available"],
        )
        for c in s["campaigns"]
    }  # fmt: skip
    assert counts == {"c1": (20, 1, 0, 1, 5, 14), "c2": (5, 0, 0, 0, 5, 0)}
    assert s["fcode_failures"] == 0  # the revoked code tried above is a real code, not a guess
    rc, out, _ = await fcodes_cli(settings, "stats", sale_id)
    assert rc == 0
    # issued, redeemed (its order paid, unpaid), revoked, available
    assert re.search(r"^c1\s+20\s+1\s+0\s+1\s+5\s+14\s", out, re.M), out
    assert "F-code guesses refused (Redis): 0" in out


async def test_check_reports_states_and_rejects_malformed_codes(
    service: Service, settings: Settings, pg: asyncpg.Pool
) -> None:
    sale_id = await fcode_sale(service)
    code, other = await api_issue(service, sale_id, {"campaign": "help", "count": 2})
    rc, out, err = await fcodes_cli(settings, "check", code.replace("-", " ").lower(), "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert (info["result"], info["code"], info["sale_id"], info["campaign"]) == (
        "found", code, sale_id, "help",
    )  # fmt: skip
    assert (info["state"], info["redis"]["state"]) == ("issued", "available")
    assert other not in out
    assert codes.digest(settings.fcode_key, codes.normalize(other)) not in out

    order = (await service.buy(sale_id, "shopper", {"fcode": code})).body["order"]
    await wait_pg_state(pg, settings, code, "redeemed")
    rc, out, _ = await fcodes_cli(settings, "check", code)
    assert rc == 0
    assert re.search(r"^state:\s+redeemed$", out, re.M), out
    assert re.search(r"^redeemed_by:\s+shopper$", out, re.M)
    assert f"redis:        used (order {order['order_id']})" in out

    rc, out, _ = await fcodes_cli(settings, "check", code[:-1] + ("0" if code[-1] != "0" else "1"))
    assert rc == 1
    assert "not an F-code" in out
    rc, out, _ = await fcodes_cli(settings, "check", codes.new_code(), "--json")
    assert rc == 1
    assert json.loads(out)["result"] == "unknown"


async def test_admin_endpoint_issues_codes_that_buy(service: Service, pg: asyncpg.Pool) -> None:
    sale_id = await fcode_sale(service)
    path = f"/v1/admin/sales/{sale_id}/fcodes"
    reply = await service.call(
        "POST", path, json={"campaign": "web", "count": 3}, headers=service.admin_headers
    )
    assert reply.status == 201
    assert (reply.body["campaign"], reply.body["sale_id"]) == ("web", sale_id)
    issued = reply.body["codes"]
    assert [c["user"] for c in issued] == ["", "", ""]
    first = await service.buy(sale_id, "u1", {"fcode": issued[0]["code"]})
    assert first.status == 201, first.body
    assert first.body["order"]["campaign"] == "web"
    used = await service.buy(sale_id, "u2", {"fcode": issued[0]["code"]})
    assert used.body["error"] == "fcode_used"
    assert (await service.buy(sale_id, "u2", {"fcode": issued[1]["code"]})).status == 201

    bound = await service.call(
        "POST", path, json={"campaign": "vip", "bind_users": ["u7", "u8"]},
        headers=service.admin_headers,
    )  # fmt: skip
    assert bound.status == 201
    assert [c["user"] for c in bound.body["codes"]] == ["u7", "u8"]

    bad_bodies: list[Any] = [
        {"campaign": "x", "count": 0}, {"campaign": "x", "count": 10_001},
        {"campaign": "x", "count": "3"}, {"campaign": "x"}, {"count": 3},
        {"campaign": "Not OK", "count": 3}, {"campaign": "x", "count": 3, "extra": 1},
        {"campaign": "x", "bind_users": "u1"}, {"campaign": "x", "bind_users": []},
        {"campaign": "x", "bind_users": ["a", "a"]}, {"campaign": "x", "bind_users": [1]},
        {"campaign": "x", "bind_users": ["a", "b"], "count": 3}, [1],
    ]  # fmt: skip
    for body in bad_bodies:
        r = await service.call("POST", path, json=body, headers=service.admin_headers)
        assert (r.status, r.body["error"]) == (400, "invalid_request"), body
    dup = await service.call(
        "POST", path, json={"campaign": "web", "count": 1}, headers=service.admin_headers
    )
    assert (dup.status, dup.body["error"]) == (409, "campaign_exists")
    missing = await service.call(
        "POST", "/v1/admin/sales/nope/fcodes", json={"campaign": "web", "count": 1},
        headers=service.admin_headers,
    )  # fmt: skip
    assert (missing.status, missing.body["error"]) == (404, "sale_not_found")
    anon = await service.call("POST", path, json={"campaign": "z", "count": 1})
    assert anon.status == 401
    campaigns = await pg.fetch("SELECT campaign FROM fcode_campaigns WHERE sale_id = $1", sale_id)
    assert sorted(r["campaign"] for r in campaigns) == ["vip", "web"]
    assert await pg.fetchval("SELECT count(*) FROM fcodes WHERE sale_id = $1", sale_id) == 5


async def test_load_restores_codes_without_reviving_used_or_revoked_ones(
    service: Service, settings: Settings, pg: asyncpg.Pool, redis: Redis, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service)
    used, revoked, lost, kept = await api_issue(service, sale_id, {"campaign": "c", "count": 4})
    assert (await service.buy(sale_id, "u1", {"fcode": used})).status == 201
    rc, _, err = await fcodes_cli(settings, "revoke", sale_id, "--code", revoked)
    assert rc == 0, err
    key = hash_key(settings, sale_id)

    # partly lost: the used code's field survived (and PostgreSQL may not know it is used yet)
    digest_of = {c: codes.digest(settings.fcode_key, codes.normalize(c)) for c in (revoked, lost)}
    await redis.hdel(key, *digest_of.values())
    rc, out, err = await fcodes_cli(settings, "load", sale_id, "--campaign", "c")
    assert rc == 0, err
    assert "2 code(s) added" in out
    states = [await redis_state(redis, settings, sale_id, c) for c in (used, revoked, lost, kept)]
    assert states == ["u", "r", "a", "a"]

    # wholly lost: every code comes back in its PostgreSQL state
    await wait_pg_state(pg, settings, used, "redeemed")
    await redis.delete(key)
    rc, out, err = await fcodes_cli(settings, "load", sale_id, "--campaign", "c")
    assert rc == 0, err
    states = [await redis_state(redis, settings, sale_id, c) for c in (used, revoked, lost, kept)]
    assert states == ["u", "r", "a", "a"]
    assert (await service.buy(sale_id, "u2", {"fcode": used})).body["error"] == "fcode_used"
    assert (await service.buy(sale_id, "u3", {"fcode": lost})).status == 201

    # a crash between the commit and the Redis load: a re-issue says how to finish
    await pg.execute("UPDATE fcode_campaigns SET loaded_at = NULL WHERE sale_id = $1", sale_id)
    rc, _, err = await fcodes_cli(
        settings, "issue", sale_id, "--count", "4", "--campaign", "c",
        "--out", str(tmp_path / "c.csv"),
    )  # fmt: skip
    assert rc == 1
    assert f"flashsale fcodes load {sale_id} --campaign c" in err
    rc, _, err = await fcodes_cli(settings, "load", sale_id, "--campaign", "nope")
    assert rc == 1
    assert "no F-code campaign" in err

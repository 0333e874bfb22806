"""The campaign tools as marketing scripts them: lists as spreadsheets and CRMs export them,
codes that could never buy refused, an export of who used which code and whether it was paid,
results on stdout (``--json``), and help that says what is true."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import stat
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from flashsale.csv_input import ListError, read_layout, read_user_ids
from flashsale.fcodes import codes
from flashsale.fcodes.export import COLUMNS
from flashsale.settings import Settings
from tests.booking_helpers import at
from tests.helpers import Service, flashsale_env, run_flashsale

CRM = "user_id,email\r\nalice,a@x\r\nbob,b@y\r\n"
BOM = b"\xef\xbb\xbf"


async def fcodes(settings: Settings, *args: str) -> tuple[int, str, str]:
    return await run_flashsale(settings, "fcodes", *args)


async def fcode_sale(service: Service, **fields: Any) -> str:
    spec: dict[str, Any] = {"stock": 10, "fcode_stock": 5}
    spec.update(fields)
    sale_id: str = (await service.create_sale(**spec))["sale_id"]
    return sale_id


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def bound_users(pg: asyncpg.Pool, sale_id: str) -> list[str]:
    rows = await pg.fetch(
        "SELECT bound_user FROM fcodes WHERE sale_id = $1 ORDER BY bound_user", sale_id
    )
    return [r["bound_user"] for r in rows]


async def campaigns(pg: asyncpg.Pool, sale_id: str) -> list[str]:
    rows = await pg.fetch("SELECT campaign FROM fcode_campaigns WHERE sale_id = $1", sale_id)
    return sorted(r["campaign"] for r in rows)


async def issue(
    settings: Settings, sale_id: str, tmp_path: Path, campaign: str, *args: str
) -> tuple[int, str, str, Path]:
    out = tmp_path / f"{campaign}.csv"
    rc, stdout, err = await fcodes(
        settings, "issue", sale_id, "--campaign", campaign, "--out", str(out), *args
    )
    return rc, stdout, err, out


# -- lists: the reader shared by F-code binding, revoke files and booking imports -----------


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "column", "users", "taken"),
    [
        (CRM, None, ["alice", "bob"],
         "column 1 'user_id' of 2 (comma-separated), header on line 1"),
        (CRM, "email", ["a@x", "b@y"], "column 2 'email' of 2"),
        (CRM, "2", ["a@x", "b@y"], "column 2 'email' of 2"),
        ("email,Customer ID\na@x,c1\n", None, ["c1"], "column 2 'Customer ID' of 2"),
        (BOM + b"User ID;E-Mail\r\nalice;a@x\r\n\r\nbob;b@y\r\n", None, ["alice", "bob"],
         "(semicolon-separated), header on line 1"),
        ("sep=;\nname;user\nA;alice\n", None, ["alice"], "column 2 'user' of 2"),
        ("user_id\tname\r\nalice\tA\r\n".encode("utf-16"), None, ["alice"], "(tab-separated)"),
        ('alice\n"comma,user"\n"quote""user"\n\nbob\n', None,
         ["alice", "comma,user", 'quote"user', "bob"], "one value a line"),
        ("user_id\n alice \n", None, ["alice"], "column 1 'user_id' of 1, header on line 1"),
        ("id,user_id,email\n1,alice,a@x\n", None, ["alice"], "column 2 'user_id' of 3"),
    ],
)  # fmt: skip
def test_a_list_is_read_as_exported_and_says_what_it_took(
    tmp_path: Path, data: str | bytes, column: str | None, users: list[str], taken: str
) -> None:
    listed = read_user_ids(write(tmp_path / "l.csv", data), column)
    assert listed.users == users
    assert taken in listed.describe()


@pytest.mark.parametrize(
    ("data", "column", "message"),
    [
        ("a@x,alice\nb@y,bob\n", None, "has 2 columns and no header line naming the column"),
        ("id,customer_id\n1,2\n", None, "which column holds the user ids?"),
        ("email,phone\na@x,1\n", None, "which column holds the user ids?"),
        (CRM, "3", "there is no column 3: the file has 2"),
        (CRM, "mail", "no column named 'mail' on line 1"),
        ("user_id\nalice,a@x\n", None, "l.csv:2: 2 cells where the file has 1"),
        ("user_id,email\nalice,a@x\nbob,b@y,extra\n", None, "l.csv:3: 3 cells"),
        ("user_id,email\nalice,a@x\n,b@y\n", None, "l.csv:3: no user id in column 1"),
        ("user_id\nalice\nevil\x07user\n", None, "l.csv:3: a user id is 1 to 128 printable"),
        ("alice\n" + "x" * 129 + "\n", None, "l.csv:2: a user id is 1 to 128"),
        (b"alice\nbob\n\xe9ve\n", None, 'l.csv:3: not UTF-8 text (byte 1 of the line is 0xe9)'),
        ("user_id\n\n", None, "lists no user ids"),
        ("", None, "lists no user ids"),
    ],
)  # fmt: skip
def test_a_list_that_cannot_be_read_as_meant_is_refused(
    tmp_path: Path, data: str | bytes, column: str | None, message: str
) -> None:
    with pytest.raises(ListError, match=re.escape(message)):
        read_user_ids(write(tmp_path / "l.csv", data), column)


def test_a_user_listed_twice_is_named_with_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "user_id\nalice\nbob\nalice\n")
    assert read_user_ids(path).users == ["alice", "bob", "alice"]  # bookings: booked once
    with pytest.raises(ListError, match=r"l.csv:4: user 'alice' is listed twice \(lines 2 and 4"):
        read_user_ids(path, unique=True)


def test_a_code_list_takes_the_code_column_and_skips_comments(tmp_path: Path) -> None:
    from flashsale.csv_input import CODE_NAMES, rows

    path = write(tmp_path / "c.csv", "# to revoke\r\ncode_ref;Code\r\nab;X\r\n")
    layout = read_layout(path, wanted=CODE_NAMES, what="codes", comments=True)
    assert (layout.column, layout.header_line, layout.index("code_ref")) == (1, 2, 0)
    assert list(rows(layout)) == [(3, ["ab", "X"])]


# -- issue --bind-users: a CRM export ---------------------------------------------------------


async def test_bind_users_reads_a_crm_export_by_its_header(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service)
    vips = write(tmp_path / "vips.csv", CRM)
    rc, _, err, out = await issue(settings, sale_id, tmp_path, "vip", "--bind-users", str(vips))
    assert rc == 0, err
    assert [r["user"] for r in read_csv(out)] == ["alice", "bob"]
    assert await bound_users(pg, sale_id) == ["alice", "bob"]
    assert "vips.csv: 2 user ids, column 1 'user_id' of 2" in err

    rc, _, err, out = await issue(
        settings, sale_id, tmp_path, "by-mail", "--bind-users", str(vips), "--column", "email"
    )
    assert rc == 0, err
    assert [r["user"] for r in read_csv(out)] == ["a@x", "b@y"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("a@x,alice\nb@y,bob\n", "vips.csv has 2 columns and no header line"),
        ("user_id\nalice\nevil\x07user\n", "vips.csv:3: a user id is 1 to 128 printable"),
        ("user_id\nalice\nbob\nalice\n", "vips.csv:4: user 'alice' is listed twice (lines 2 "),
    ],
)
async def test_bind_users_refuses_a_list_it_cannot_read_as_meant(
    service: Service,
    settings: Settings,
    pg: asyncpg.Pool,
    tmp_path: Path,
    data: str,
    message: str,
) -> None:
    sale_id = await fcode_sale(service)
    vips = write(tmp_path / "vips.csv", data)
    rc, stdout, err, out = await issue(
        settings, sale_id, tmp_path, "vip", "--bind-users", str(vips)
    )
    assert (rc, stdout) == (2, ""), err
    assert message in err
    assert "nothing was issued" in err
    assert not out.exists()
    assert await campaigns(pg, sale_id) == []


async def test_bad_arguments_are_usage_errors_before_any_code_is_made(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service)
    rc, _, err, _ = await issue(settings, sale_id, tmp_path, "x", "--count", "1", "--column", "2")
    assert rc == 2
    assert "--column names a column of --bind-users" in err
    nowhere = tmp_path / "no-such-dir" / "x.csv"
    rc, _, err = await fcodes(
        settings, "issue", sale_id, "--campaign", "x", "--count", "1", "--out", str(nowhere)
    )
    assert (rc, f"there is no directory {nowhere.parent}" in err) == (2, True), err
    rc, _, err = await fcodes(settings, "export", sale_id, "--out", str(nowhere))
    assert (rc, f"there is no directory {nowhere.parent}" in err) == (2, True), err
    assert await campaigns(pg, sale_id) == []

    # over HTTP, a bad user names its place in the list
    path = f"/v1/admin/sales/{sale_id}/fcodes"
    for users, message in (
        (["a", "b", " c"], "bind_users[2]: a user id is 1 to 128"),
        (["a", "b", "a"], "bind_users[2]: user 'a' is listed twice (first at [0])"),
    ):
        reply = await service.call(
            "POST", path, json={"campaign": "x", "bind_users": users},
            headers=service.admin_headers,
        )  # fmt: skip
        assert (reply.status, reply.body["error"]) == (400, "invalid_request")
        assert message in reply.body["message"]


# -- revoke --file: Excel's "CSV UTF-8" -------------------------------------------------------


async def test_revoke_reads_an_excel_csv_with_bom_and_crlf(
    service: Service, settings: Settings, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service)
    rc, _, err, out = await issue(settings, sale_id, tmp_path, "c", "--count", "4", "--json")
    assert rc == 0, err
    rows = read_csv(out)
    # opened in Excel and saved as "CSV UTF-8": a byte-order mark, CRLF, the codes kept
    excel = tmp_path / "excel.csv"
    lines = [",".join(rows[0].keys())] + [",".join(r.values()) for r in rows[:3]]
    excel.write_bytes(BOM + "\r\n".join(lines).encode() + b"\r\n")
    rc, stdout, err = await fcodes(settings, "revoke", sale_id, "--file", str(excel), "--json")
    assert rc == 0, err
    assert json.loads(stdout) == {
        "sale_id": sale_id, "campaign": None, "revoked_now": 3, "revoked_before": 0,
        "unknown": 0,
    }  # fmt: skip
    assert "excel.csv: 3 codes, column 1 'code' of 5" in err

    # a list of one code a line naming the file and line of a typo; nothing revoked then
    typo = rows[3]["code"][:-1] + ("X" if rows[3]["code"][-1] != "X" else "Y")
    listed = write(tmp_path / "l.txt", f"{rows[3]['code']}\r\n{typo}\r\n")
    rc, stdout, err = await fcodes(settings, "revoke", sale_id, "--file", str(listed))
    assert (rc, stdout) == (2, "")
    assert "l.txt:2: the check character does not match" in err
    assert "nothing revoked" in err
    # codes of another sale
    other = write(tmp_path / "o.csv", f"code,sale_id\n{rows[3]['code']},other-sale\n")
    rc, _, err = await fcodes(settings, "revoke", sale_id, "--file", str(other))
    assert rc == 2
    assert "holds codes of sale(s) other-sale" in err


# -- codes that could never buy ----------------------------------------------------------------


async def test_codes_that_could_never_buy_are_refused(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    no_units = await fcode_sale(service, fcode_stock=0)
    closed = await fcode_sale(service)
    reply = await service.call(
        "POST", f"/v1/admin/sales/{closed}/close", headers=service.admin_headers
    )
    assert reply.status == 200, reply.body
    # a sale may not be created over already: this one ends a moment after its creation
    ends = datetime.now(UTC) + timedelta(seconds=0.5)
    ended = await fcode_sale(service, ends_at=ends.isoformat())
    await asyncio.sleep(max(0.0, ends.timestamp() - time.time()) + 0.05)
    for sale_id, message in (
        (no_units, "sets no units aside for F-codes (its fcode_stock is 0)"),
        (closed, "is closed: its codes could never buy anything; nothing was issued"),
        (ended, "ended at"),
    ):
        rc, stdout, err, out = await issue(settings, sale_id, tmp_path, "spring", "--count", "5")
        assert (rc, stdout) == (1, ""), err
        assert message in err
        assert not out.exists()
        assert not (tmp_path / "spring.csv.partial").exists()
        assert await campaigns(pg, sale_id) == []

    path = f"/v1/admin/sales/{no_units}/fcodes"
    reply = await service.call(
        "POST", path, json={"campaign": "web", "count": 1}, headers=service.admin_headers
    )
    assert (reply.status, reply.body["error"]) == (409, "conflict")
    reply = await service.call(
        "POST", f"/v1/admin/sales/{closed}/fcodes", json={"campaign": "web", "count": 1},
        headers=service.admin_headers,
    )  # fmt: skip
    assert (reply.status, reply.body["error"]) == (410, "sale_ended")


async def test_codes_that_may_not_buy_are_issued_with_a_warning(
    service: Service, settings: Settings, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service, fcode_stock=3)
    rc, stdout, err, _ = await issue(settings, sale_id, tmp_path, "a", "--count", "2", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["warnings"] == []
    assert "warning" not in err

    vips = write(tmp_path / "vips.txt", "alice\nbob\ncarol\n")
    await issue(settings, sale_id, tmp_path, "b", "--bind-users", str(vips))
    more = write(tmp_path / "more.txt", "carol\ndave\n")
    reply = await service.call(
        "POST", f"/v1/admin/sales/{sale_id}/pause", headers=service.admin_headers
    )
    assert reply.status == 200
    rc, stdout, err, out = await issue(
        settings, sale_id, tmp_path, "c", "--bind-users", str(more), "--json"
    )
    assert rc == 0, err
    warnings = json.loads(stdout)["warnings"]
    assert len(warnings) == 3, warnings
    assert "is paused" in warnings[0]
    assert "2 codes and 5 unused from earlier campaigns for 3 F-code unit(s) left" in warnings[1]
    assert "1 of the users already hold a code" in warnings[2]
    assert "'carol' (b)" in warnings[2]
    for warning in warnings:
        assert f"flashsale fcodes: warning: {warning}" in err
    assert len(read_csv(out)) == 2

    reply = await service.call(
        "POST", f"/v1/admin/sales/{sale_id}/fcodes", json={"campaign": "web", "count": 1},
        headers=service.admin_headers,
    )  # fmt: skip
    assert reply.status == 201, reply.body
    assert len(reply.body["warnings"]) == 2
    code = reply.body["codes"][0]
    digest = codes.digest(settings.fcode_key, codes.normalize(code["code"]))
    assert code["code_ref"] == digest[:16]


# -- output for scripts --------------------------------------------------------------------------


async def test_every_command_prints_its_result_on_stdout_and_json_on_request(
    service: Service, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service, fcode_stock=5)
    rc, stdout, err, out = await issue(settings, sale_id, tmp_path, "spring", "--count", "3")
    assert rc == 0, err
    assert stdout.startswith(f"issued 3 codes of campaign spring for sale {sale_id}")
    assert str(out) in stdout

    vips = write(tmp_path / "vips.csv", CRM)
    rc, stdout, err, out = await issue(
        settings, sale_id, tmp_path, "vip", "--bind-users", str(vips), "--json"
    )
    assert rc == 0, err
    doc = json.loads(stdout)
    assert {k: doc[k] for k in ("sale_id", "campaign", "codes", "bound_users", "out")} == {
        "sale_id": sale_id, "campaign": "vip", "codes": 2, "bound_users": 2, "out": str(out),
    }  # fmt: skip
    assert (doc["loaded_into_redis"], doc["added_to_redis"]) == (True, 2)
    assert doc["columns"] == ["code", "code_ref", "user", "campaign", "sale_id"]
    assert doc["input"]["column_name"] == "user_id"

    await redis.delete(f"{settings.key_prefix}:{{{sale_id}}}:fcodes")
    rc, stdout, err = await fcodes(settings, "load", sale_id, "--campaign", "vip", "--json")
    assert rc == 0, err
    assert json.loads(stdout) == {"sale_id": sale_id, "campaign": "vip", "added": 2}
    rc, stdout, err = await fcodes(settings, "revoke", sale_id, "--campaign", "vip", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["revoked_now"] == 2
    rc, stdout, err = await fcodes(settings, "stats", sale_id, "--json")
    assert rc == 0, err
    assert [c["campaign"] for c in json.loads(stdout)["campaigns"]] == ["spring", "vip"]
    code = read_csv(out)[0]["code"]
    rc, stdout, err = await fcodes(settings, "check", code, "--json")
    assert rc == 0, err
    assert json.loads(stdout)["code_ref"] == read_csv(out)[0]["code_ref"]


async def test_redis_count_is_every_code_loaded(
    service: Service, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """Loading runs batches of 3,000 four at a time: the count was the last batch's view."""
    sale_id = await fcode_sale(service, stock=10, fcode_stock=10)
    rc, _, err, _ = await issue(settings, sale_id, tmp_path, "big", "--count", "13000")
    assert rc == 0, err
    assert "campaign big: redis (13000 added)" in err
    await redis.delete(f"{settings.key_prefix}:{{{sale_id}}}:fcodes")
    rc, stdout, err = await fcodes(settings, "load", sale_id, "--campaign", "big")
    assert rc == 0, err
    assert "13,000 code(s) added to Redis" in stdout
    await redis.delete(f"{settings.key_prefix}:{{{sale_id}}}:fcodes")
    rc, stdout, err = await fcodes(settings, "load", sale_id, "--campaign", "big", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["added"] == 13000


async def test_an_interrupt_after_the_commit_keeps_the_codes_file(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    """Ctrl-C while a big campaign loads into Redis: the codes are stored, so their only copy
    must stay (it was deleted: its check looked up the digest of the code with hyphens)."""
    sale_id = await fcode_sale(service, stock=10, fcode_stock=10)
    out = tmp_path / "big.csv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "fcodes", "issue", sale_id, "--campaign", "big",
        "--count", "150000", "--out", str(out),
        env=flashsale_env(settings), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    err = b""
    while b"campaign big: postgres" not in err:  # committed; the Redis load starts now
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert line, err.decode()
        err += line
    proc.send_signal(signal.SIGINT)
    _, rest = await proc.communicate()
    err += rest
    stored = await pg.fetchval("SELECT count(*) FROM fcodes WHERE sale_id = $1", sale_id)
    assert stored == 150000
    if proc.returncode == 0:
        pytest.skip("the load finished before the interrupt arrived")
    assert out.exists(), err.decode()[-2000:]
    assert not (tmp_path / "big.csv.partial").exists()
    assert b"interrupted after the codes were stored" in err
    assert f"flashsale fcodes load {sale_id} --campaign big".encode() in err
    rows = read_csv(out)
    assert len(rows) == 150000
    digest = codes.digest(settings.fcode_key, codes.normalize(rows[0]["code"]))
    assert await pg.fetchval("SELECT 1 FROM fcodes WHERE digest = $1", digest) == 1


# -- export --------------------------------------------------------------------------------------


async def wait_exported(
    settings: Settings, sale_id: str, want: dict[str, tuple[str, str | None, bool | None]]
) -> dict[str, dict[str, Any]]:
    """The JSON export once every code_ref in ``want`` shows (state, order_status, paid)."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        rc, stdout, err = await fcodes(settings, "export", sale_id, "--json")
        assert rc == 0, err
        by_ref = {c["code_ref"]: c for c in json.loads(stdout)["codes"]}
        seen = {r: (by_ref[r]["state"], by_ref[r]["order_status"], by_ref[r]["paid"]) for r in want}
        if seen == want:
            return by_ref
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.1)


async def mark_paid(pg: asyncpg.Pool, order_id: str) -> None:
    """The order paid, as PostgreSQL (what the export reads) learns it from the writer."""
    deadline = asyncio.get_running_loop().time() + 15
    while not await pg.fetchval(
        "UPDATE orders SET status = 'paid', version = version + 1 WHERE order_id = $1 RETURNING 1",
        order_id,
    ):
        assert asyncio.get_running_loop().time() < deadline, "the order never reached PostgreSQL"
        await asyncio.sleep(0.05)


async def test_export_lists_who_used_which_code_and_whether_it_was_paid(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await fcode_sale(service, stock=10, fcode_stock=5)
    vips = write(tmp_path / "vips.txt", "alice\nbob\n")
    rc, _, err, vip_out = await issue(settings, sale_id, tmp_path, "vip", "--bind-users", str(vips))
    assert rc == 0, err
    rc, _, err, open_out = await issue(settings, sale_id, tmp_path, "open", "--count", "3")
    assert rc == 0, err
    vip, bearer = read_csv(vip_out), read_csv(open_out)

    paid = await service.buy(sale_id, "alice", {"fcode": vip[0]["code"]})
    assert paid.status == 201, paid.body
    order_id = paid.body["order"]["order_id"]
    await mark_paid(pg, order_id)
    unpaid = await service.buy(sale_id, "walk-in", {"fcode": bearer[0]["code"]})
    assert unpaid.status == 201, unpaid.body
    rc, _, err = await fcodes(settings, "revoke", sale_id, "--code", bearer[1]["code"])
    assert rc == 0, err

    refs = {r["code"]: r["code_ref"] for r in (*vip, *bearer)}
    by_ref = await wait_exported(settings, sale_id, {
        refs[vip[0]["code"]]: ("redeemed", "paid", True),
        refs[bearer[0]["code"]]: ("redeemed", "reserved", False),
        refs[bearer[1]["code"]]: ("revoked", None, None),
        refs[vip[1]["code"]]: ("issued", None, None),
    })  # fmt: skip
    assert set(by_ref) == set(refs.values())  # every code, joined to the issue files by code_ref
    alice = by_ref[refs[vip[0]["code"]]]
    assert alice | {"issued_at": "", "redeemed_at": ""} == {
        "code_ref": refs[vip[0]["code"]], "campaign": "vip", "bound_user": "alice",
        "state": "redeemed", "issued_at": "", "order_id": order_id, "order_status": "paid",
        "paid": True, "redeemed_by": "alice", "redeemed_at": "", "revoked_at": None,
    }  # fmt: skip
    assert alice["issued_at"].endswith("Z")
    assert alice["redeemed_at"].endswith("Z")
    assert by_ref[refs[bearer[1]["code"]]]["revoked_at"].endswith("Z")
    assert by_ref[refs[bearer[0]["code"]]]["redeemed_by"] == "walk-in"

    # CSV, filtered, to a file that is never overwritten
    out = tmp_path / "redeemed.csv"
    rc, stdout, err = await fcodes(
        settings, "export", sale_id, "--state", "redeemed", "--out", str(out)
    )
    assert (rc, stdout) == (0, ""), err
    assert "exported 2 codes" in err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    rows = read_csv(out)
    assert sorted((r["campaign"], r["bound_user"], r["paid"]) for r in rows) == [
        ("open", "", "false"), ("vip", "alice", "true"),
    ]  # fmt: skip
    rc, _, err = await fcodes(settings, "export", sale_id, "--out", str(out))
    assert rc == 2
    assert "never overwritten" in err
    rc, stdout, err = await fcodes(settings, "export", sale_id, "--campaign", "vip")
    assert rc == 0, err
    assert [r["campaign"] for r in csv.DictReader(io.StringIO(stdout))] == ["vip", "vip"]
    rc, stdout, _ = await fcodes(settings, "export", sale_id, "--campaign", "nope")
    assert (rc, stdout) == (1, "")
    rc, _, _ = await fcodes(settings, "export", "no-such-sale", "--out", str(tmp_path / "x"))
    assert rc == 1
    assert not (tmp_path / "x").exists()

    # the stats tell paid from unpaid redemptions
    rc, stdout, err = await fcodes(settings, "stats", sale_id, "--json")
    assert rc == 0, err
    numbers = {
        c["campaign"]: (c["redeemed"], c["redeemed_paid"], c["redeemed_unpaid"])
        for c in json.loads(stdout)["campaigns"]
    }
    assert numbers == {"vip": (1, 1, 0), "open": (1, 0, 1)}


# -- help that says what is true -------------------------------------------------------------


async def test_help_names_the_commands_there_are_and_the_exit_codes(settings: Settings) -> None:
    rc, stdout, _ = await run_flashsale(settings, "--help")
    assert rc == 0
    fcodes_line = next(line for line in stdout.splitlines() if line.strip().startswith("fcodes"))
    assert "count" not in fcodes_line
    for command in ("issue", "export", "load", "revoke", "check"):
        assert command in stdout
    rc, stdout, _ = await fcodes(settings, "--help")
    for command in ("issue", "export", "load", "revoke", "stats", "check"):
        assert re.search(rf"^\s+{command}\s", stdout, re.M), command
    rc, stdout, _ = await fcodes(settings, "issue", "--help")
    assert "cannot be shown" in " ".join(stdout.split())
    assert "only copy" in stdout
    assert "code_ref" in stdout
    for command in ("issue", "export", "load", "revoke", "stats", "check"):
        rc, stdout, _ = await fcodes(settings, command, "--help")
        assert rc == 0
        assert "--json" in stdout, command
        assert re.search(r"^exit codes:\n  0  done\n  1  failed", stdout, re.M), command
    rc, stdout, _ = await fcodes(settings, "export", "--help")
    assert ", ".join(COLUMNS) in " ".join(stdout.split())
    for command in ("import", "export"):
        rc, stdout, _ = await run_flashsale(settings, "bookings", command, "--help")
        assert re.search(r"^exit codes:\n  0  done", stdout, re.M), command


# -- bookings import: the same reader ------------------------------------------------------------


async def test_bookings_import_reads_a_list_as_fcodes_do(
    service: Service, settings: Settings, tmp_path: Path
) -> None:
    sale_id: str = (
        await service.create_sale(booking_opens_at=at(-60), booking_closes_at=at(1800))
    )["sale_id"]
    headerless = write(tmp_path / "partner.csv", "a@x,alice\nb@y,bob\n")
    rc, stdout, err = await run_flashsale(settings, "bookings", "import", sale_id, str(headerless))
    assert (rc, stdout) == (2, "")
    assert "partner.csv has 2 columns and no header line" in err
    assert "nothing was imported" in err
    rc, stdout, err = await run_flashsale(
        settings, "bookings", "import", sale_id, str(headerless), "--column", "2", "--json"
    )
    assert rc == 0, err
    assert json.loads(stdout)["new"] == 2
    assert "partner.csv: 2 user ids, column 2 of 2" in err
    crm = write(tmp_path / "crm.csv", BOM + b"email;user_id\r\nc@z;carol\r\n")
    rc, stdout, err = await run_flashsale(
        settings, "bookings", "import", sale_id, str(crm), "--json"
    )
    assert rc == 0, err
    assert (json.loads(stdout)["new"], json.loads(stdout)["bookings"]) == (1, 3)
    assert "crm.csv: 1 user id, column 2 'user_id' of 2 (semicolon-separated)" in err
    rc, stdout, _ = await run_flashsale(settings, "bookings", "export", sale_id)
    assert [r["user_id"] for r in csv.DictReader(io.StringIO(stdout))] == ["alice", "bob", "carol"]

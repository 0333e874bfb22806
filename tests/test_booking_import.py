"""`flashsale bookings import` and `export`: a partner's list booked in Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from flashsale import errors
from flashsale.booking.lottery import Draw
from flashsale.settings import Settings
from flashsale.store.bookings import BookingRow, insert_bookings
from flashsale.store.writer import OrderWriter
from tests.booking_helpers import at
from tests.conftest import ServiceFactory
from tests.helpers import Service, gather_limited, run_flashsale

EXPORT_HEADER = "booking_no,user_id,booked_at,source,queue_rank"


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    return await run_flashsale(settings, "bookings", *args)


async def import_json(settings: Settings, sale_id: str, path: Path, *extra: str) -> dict[str, Any]:
    rc, out, err = await cli(settings, "import", sale_id, str(path), "--json", *extra)
    assert rc == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


async def booking_sale(service: Service, **fields: Any) -> str:
    """An open sale whose booking (arrival admission unless given) is open now."""
    spec: dict[str, Any] = {"booking_opens_at": at(-60), "booking_closes_at": at(1800)}
    spec.update(fields)
    sale = await service.create_sale(**spec)
    sale_id: str = sale["sale_id"]
    return sale_id


async def queued_sale(service: Service, starts_in_s: float, **fields: Any) -> str:
    """A booking_order (or lottery) sale starting ``starts_in_s`` from now; booking open."""
    starts = at(starts_in_s)
    spec: dict[str, Any] = {"starts_at": starts, "booking_closes_at": starts,
                            "admission": "booking_order"}  # fmt: skip
    spec.update(fields)
    return await booking_sale(service, **spec)


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


async def pg_rows(pg: asyncpg.Pool, sale_id: str) -> list[tuple[int, str, str]]:
    rows = await pg.fetch(
        "SELECT booking_no, user_id, source FROM bookings WHERE sale_id = $1 ORDER BY booking_no",
        sale_id,
    )
    return [(r["booking_no"], r["user_id"], r["source"]) for r in rows]


async def redis_numbers(service: Service, sale_id: str, users: list[str]) -> list[int]:
    bookings = service.services.bookings
    statuses = await gather_limited(50, *(bookings.status(sale_id, u) for u in users))
    return [s.booking_no for s in statuses]


async def redis_count(service: Service, sale_id: str) -> int:
    return (await service.services.engine.get_sale(sale_id)).counters.bookings


async def web_book(service: Service, sale_id: str, user: str) -> int:
    reply = await service.call("POST", f"/v1/sales/{sale_id}/bookings", headers=service.auth(user))
    assert reply.status in (200, 201), reply.body
    no: int = reply.body["booking"]["booking_no"]
    return no


async def wait_pg_count(pg: asyncpg.Pool, sale_id: str, count: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while (
        n := await pg.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", sale_id)
    ) < count:
        assert time.monotonic() < deadline, f"PostgreSQL holds {n} bookings, not {count}"
        await asyncio.sleep(0.05)


async def test_import_numbers_a_list_densely_in_its_order(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await booking_sale(service)
    users = [f"partner-{i:05d}" for i in range(3000)]
    lines = ["user_id,name"]
    for i, user in enumerate(users):
        lines.append(f"{user},Shopper {i}")
        if i % 400 == 0:
            lines += ["", "  "]
    report = await import_json(settings, sale_id, write_list(tmp_path / "l.csv", lines),
                               "--batch", "500")  # fmt: skip
    assert report == {
        "total": 3000, "new": 3000, "existing": 0, "refused_full": 0,
        "first_new_no": 1, "last_new_no": 3000, "bookings": 3000,
    }  # fmt: skip
    expected = [(i + 1, user, "import") for i, user in enumerate(users)]
    assert await pg_rows(pg, sale_id) == expected
    assert await redis_numbers(service, sale_id, users) == list(range(1, 3001))
    # the shop's own booking call knows them: the same number again, nothing new
    for i in (0, 1234, 2999):
        reply = await service.call(
            "POST", f"/v1/sales/{sale_id}/bookings", headers=service.auth(users[i])
        )
        assert (reply.status, reply.body["booking"]["booking_no"]) == (200, i + 1)
    assert await redis_count(service, sale_id) == 3000


async def test_import_is_idempotent_and_keeps_numbers_already_given(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await booking_sale(service)
    first = [f"a{i}" for i in range(1000)]
    path = write_list(tmp_path / "a.txt", first)
    await import_json(settings, sale_id, path, "--batch", "300")
    rc, out, err = await cli(settings, "import", sale_id, str(path), "--batch", "300")
    assert rc == 0, err
    assert out.strip() == (
        "imported 0 new bookings, 1,000 already booked, 0 refused (capacity reached); "
        "the sale now has 1,000 bookings"
    )
    web_no = await web_book(service, sale_id, "web-1")
    assert web_no == 1001
    await wait_pg_count(pg, sale_id, 1001)

    # old ids, the shopper booked online, and new ids each listed twice
    new = [f"b{i}" for i in range(300)]
    mixed = first[::2] + ["web-1"] + [u for u in new for _ in (0, 1)]
    report = await import_json(settings, sale_id, write_list(tmp_path / "b.txt", mixed),
                               "--batch", "128")  # fmt: skip
    assert report == {
        "total": 500 + 1 + 600, "new": 300, "existing": 500 + 1 + 300, "refused_full": 0,
        "first_new_no": 1002, "last_new_no": 1301, "bookings": 1301,
    }  # fmt: skip
    numbers = await redis_numbers(service, sale_id, [*first, "web-1", *new])
    assert numbers == list(range(1, 1302))
    expected = [(i + 1, u, "import") for i, u in enumerate(first)]
    expected += [(1001, "web-1", "web")]
    expected += [(1002 + i, u, "import") for i, u in enumerate(new)]
    assert await pg_rows(pg, sale_id) == expected


async def test_import_interleaved_with_live_bookings(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await booking_sale(service)
    users = [f"list-{i}" for i in range(4000)]
    path = write_list(tmp_path / "l.txt", users)
    proc = asyncio.create_task(cli(settings, "import", sale_id, str(path), "--json",
                                   "--batch", "50"))  # fmt: skip
    web: dict[str, int] = {}

    async def shopper(worker: int) -> None:
        i = 0
        while not proc.done() or i < 20:
            user = f"web-{worker}-{i}"
            web[user] = await web_book(service, sale_id, user)
            i += 1

    await asyncio.gather(*(shopper(w) for w in range(8)))
    rc, out, err = await proc
    assert rc == 0, err
    report = json.loads(out)
    assert (report["new"], report["existing"], report["refused_full"]) == (4000, 0, 0)
    total = 4000 + len(web)
    assert await redis_count(service, sale_id) == total
    assert 4000 < report["bookings"] <= total
    # the import really ran while shoppers booked: its numbers are spread among theirs
    assert report["last_new_no"] - report["first_new_no"] + 1 > 4000
    listed = await redis_numbers(service, sale_id, users)
    assert listed == sorted(listed)  # in list order
    assert sorted([*listed, *web.values()]) == list(range(1, total + 1))

    await wait_pg_count(pg, sale_id, total)  # the writer carries the live ones
    expected = {**dict(zip(users, listed, strict=True)), **web}
    rows = await pg_rows(pg, sale_id)
    assert {u: no for no, u, _ in rows} == expected
    assert {u for _, u, src in rows if src == "web"} == set(web)


async def test_import_beyond_the_capacity_books_exactly_the_capacity(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await booking_sale(service, booking_capacity=1000)
    users = [f"u{i}" for i in range(1200)]
    path = write_list(tmp_path / "l.txt", users)
    rc, out, err = await cli(settings, "import", sale_id, str(path), "--batch", "256", "--json")
    assert rc == 1
    assert "200 user(s) of the list were NOT booked" in err
    assert "1,000 booking places are taken" in err
    report = json.loads(out)
    assert (report["new"], report["refused_full"], report["bookings"]) == (1000, 200, 1000)
    assert await redis_count(service, sale_id) == 1000
    assert [u for _, u, _ in await pg_rows(pg, sale_id)] == users[:1000]
    with pytest.raises(errors.BookingNotFound):
        await service.services.bookings.status(sale_id, users[1000])
    rc, out, _ = await cli(settings, "import", sale_id, str(path))
    assert rc == 1
    assert "0 new bookings, 1,000 already booked, 200 refused" in out


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("evil\x07user", "printable characters"),
        ("x" * 129, "1 to 128"),
        ("nul\x00user", "printable characters"),
    ],
)
async def test_a_bad_line_imports_nothing(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path, bad: str,
    message: str,
) -> None:  # fmt: skip
    sale_id = await booking_sale(service)
    lines = [f"u{i}" for i in range(100)]
    lines[56] = bad
    path = write_list(tmp_path / "l.txt", lines)
    rc, out, err = await cli(settings, "import", sale_id, str(path))
    assert rc == 2
    assert out == ""
    assert f"{path}:57" in err
    assert message in err
    assert "nothing was imported" in err
    assert await redis_count(service, sale_id) == 0
    assert await pg_rows(pg, sale_id) == []


async def test_import_refused_without_a_sale_taking_bookings(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    path = write_list(tmp_path / "l.txt", ["u1", "u2"])
    rc, _, err = await cli(settings, "import", "no-such-sale", str(path))
    assert (rc, "there is no sale no-such-sale" in err) == (1, True), err
    plain = (await service.create_sale())["sale_id"]
    rc, _, err = await cli(settings, "import", plain, str(path))
    assert (rc, "this sale takes no bookings" in err) == (1, True), err
    rc, _, err = await cli(settings, "export", plain)
    assert (rc, "this sale takes no bookings" in err) == (1, True), err

    opened = at(-5)  # one instant: booking closes as the sale opens, not a microsecond after
    started = await booking_sale(
        service, starts_at=opened, booking_opens_at=at(-60), booking_closes_at=opened,
        admission="booking_order",
    )  # fmt: skip
    rc, out, err = await cli(settings, "import", started, str(path))
    assert (rc, out) == (1, "")
    assert "booking closed" in err
    assert "the queue is fixed when the sale starts" in err
    assert await redis_count(service, started) == 0
    assert await pg_rows(pg, started) == []


def parse_export(text: str) -> list[dict[str, str]]:
    assert text.splitlines()[0] == EXPORT_HEADER
    return list(csv.DictReader(io.StringIO(text)))


async def test_export_follows_postgres_in_booking_order(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    sale_id = await booking_sale(service)
    users = ["comma,user", 'quote"user', *(f"p{i}" for i in range(300))]
    listed = tmp_path / "l.csv"
    with listed.open("w", newline="") as f:
        csv.writer(f).writerows([u] for u in users)
    await import_json(settings, sale_id, listed)
    await web_book(service, sale_id, "web-1")
    await wait_pg_count(pg, sale_id, len(users) + 1)

    rc, out, err = await cli(settings, "export", sale_id)
    assert (rc, err) == (0, "")
    rows = parse_export(out)
    db = await pg.fetch("SELECT * FROM bookings WHERE sale_id = $1 ORDER BY booking_no", sale_id)
    assert [(int(r["booking_no"]), r["user_id"], r["source"]) for r in rows] == [
        (d["booking_no"], d["user_id"], d["source"]) for d in db
    ]
    assert [r["user_id"] for r in rows] == [*users, "web-1"]
    assert [r["source"] for r in rows] == ["import"] * len(users) + ["web"]
    for r, d in zip(rows, db, strict=True):
        assert r["booked_at"].endswith("Z")
        booked_at = d["booked_at"]
        assert datetime.fromisoformat(r["booked_at"]) == booked_at.replace(
            microsecond=booked_at.microsecond // 1000 * 1000
        )
        assert r["queue_rank"] == ""  # arrival: no queue

    out_file = tmp_path / "export.csv"
    rc, _, err = await cli(settings, "export", sale_id, "--out", str(out_file))
    assert rc == 0, err
    assert out_file.read_text() == out
    rc, _, err = await cli(settings, "export", sale_id, "--out", str(out_file))
    assert rc == 2
    assert "never overwritten" in err
    assert out_file.read_text() == out
    rc, _, err = await cli(settings, "export", "no-such-sale", "--out", str(tmp_path / "x.csv"))
    assert (rc, "there is no sale no-such-sale" in err) == (1, True), err
    assert not (tmp_path / "x.csv").exists()


async def test_export_warns_of_bookings_not_yet_in_postgres(
    make_service: ServiceFactory, settings: Settings, tmp_path: Path
) -> None:
    service = await make_service(run_writer=False)
    sale_id = await booking_sale(service)
    await import_json(settings, sale_id, write_list(tmp_path / "l.txt", ["a", "b"]))
    for user in ("w1", "w2", "w3"):
        await web_book(service, sale_id, user)
    rc, out, err = await cli(settings, "export", sale_id)
    assert rc == 0, err
    assert "3 bookings are still on their way to PostgreSQL" in err
    assert [r["user_id"] for r in parse_export(out)] == ["a", "b"]


async def test_export_queue_ranks_of_booking_order_and_lottery(
    service: Service, settings: Settings, tmp_path: Path
) -> None:
    users = [f"u{i}" for i in range(500)]
    path = write_list(tmp_path / "l.txt", users)
    ordered = await queued_sale(service, 60)
    await import_json(settings, ordered, path)
    rc, out, err = await cli(settings, "export", ordered)
    assert rc == 0, err
    assert [r["queue_rank"] for r in parse_export(out)] == [str(i) for i in range(1, 501)]

    seed = "test-seed-" + settings.key_prefix
    # an import and an export (two commands) before the opening, on a machine the suite's
    # two workers keep busy
    starts_in_s = 6.0
    starts = time.monotonic() + starts_in_s
    lucky = await queued_sale(service, starts_in_s, admission="lottery", lottery_seed=seed)
    await import_json(settings, lucky, path)
    rc, out, err = await cli(settings, "export", lucky)
    assert rc == 0, err
    assert {r["queue_rank"] for r in parse_export(out)} == {""}  # the draw is secret still

    await asyncio.sleep(max(0.0, starts - time.monotonic()) + 0.1)
    rc, out, err = await cli(settings, "export", lucky)
    assert rc == 0, err
    rows = parse_export(out)
    draw = Draw(seed, 500)
    assert [int(r["booking_no"]) for r in rows] == list(range(1, 501))
    ranks = [int(r["queue_rank"]) for r in rows]
    assert ranks == [draw.rank(no) for no in range(1, 501)]
    assert sorted(ranks) == list(range(1, 501))
    assert ranks != list(range(1, 501))
    status = await service.services.bookings.status(lucky, "u7")
    assert status.queue_rank == ranks[7]


async def test_an_online_booking_listed_by_a_partner_stays_online(
    make_service: ServiceFactory, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    # the import reaches PostgreSQL before the writer carries the online booking
    quiet = await make_service(run_writer=False)
    sale_id = await booking_sale(quiet)
    online = await web_book(quiet, sale_id, "fan")
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf\n\nuser_id\r\nfan\r\nnewcomer\r\n")  # Excel: BOM, CRLF
    report = await import_json(settings, sale_id, path)
    assert (report["new"], report["existing"]) == (1, 1)
    assert await pg_rows(pg, sale_id) == [(1, "fan", "import"), (2, "newcomer", "import")]
    # now the writer carries the online booking, which is the authority on it
    engine = quiet.services.engine
    writer = OrderWriter(engine.redis, quiet.services.pool, engine.keys, block_ms=50)
    assert await writer.drain() == 1
    assert await pg_rows(pg, sale_id) == [(online, "fan", "web"), (2, "newcomer", "import")]


async def test_the_kept_count_matches_the_rows(
    service: Service, settings: Settings, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    """The stats read a kept count, not a scan: repeats, replays and online bookings must
    leave it equal to the rows."""
    sale_id = await booking_sale(service)
    path = write_list(tmp_path / "l.txt", [f"k{i}" for i in range(700)])
    await import_json(settings, sale_id, path, "--batch", "300")
    await import_json(settings, sale_id, path)  # a repeat adds no row
    for user in ("online-1", "online-2", "k5"):
        await web_book(service, sale_id, user)
    await wait_pg_count(pg, sale_id, 702)
    rows = await pg.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", sale_id)
    assert rows == 702
    assert (await service.stats(sale_id))["bookings_in_postgres"] == 702
    # a replayed event changes nothing
    await insert_bookings(pg, [BookingRow(sale_id, 701, "online-1", 0)])
    assert (await service.stats(sale_id))["bookings_in_postgres"] == 702

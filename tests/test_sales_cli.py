"""``flashsale sales``: a sale run from the command line, over the admin HTTP API, with its exit
codes (0 done, 1 refused or failed, 2 usage)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from flashsale.cli.sales import parse_time, read_file
from tests.booking_helpers import at
from tests.helpers import Service, flashsale_env


async def sales(service: Service, *args: str, stdin: bytes | None = None,
                **env: str) -> tuple[int, str, str]:  # fmt: skip
    """``flashsale sales ARGS`` against the test's service: (exit code, stdout, stderr)."""
    url = str(service.client.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "sales", *args,
        env=flashsale_env(service.settings, FLASHSALE_SERVICE_URL=url, COLUMNS="120", **env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def common_flags(**over: str) -> list[str]:
    flags = {"--sku": "mi-1", "--name": "Mi 1", "--price-cents": "19900", "--stock": "10",
             "--starts-at": at(-5), "--ends-at": at(3600), **over}  # fmt: skip
    return [x for pair in flags.items() for x in pair]


async def test_create_from_flags_then_list_show_pause_resume(service: Service) -> None:
    rc, out, err = await sales(service, "create", "--sale-id", "cli-flags", *common_flags(),
                               "--fcode-stock", "4")  # fmt: skip
    assert rc == 0, err
    assert out.startswith("created sale cli-flags (open): 10 unit(s) (4 for F-codes) of mi-1 at "
                          "199.00 USD")  # fmt: skip
    sale = await service.services.engine.get_sale("cli-flags")
    assert (sale.definition.stock, sale.definition.fcode_stock) == (10, 4)

    rc, out, _ = await sales(service, "list")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["SALE_ID", "STATUS", "CONTROL"]
    assert any(r.split()[:3] == ["cli-flags", "open", "active"] for r in rows), out
    rc, out, _ = await sales(service, "list", "--status", "paused", "--json")
    assert (rc, json.loads(out)["sales"]) == (0, [])

    assert (await service.buy("cli-flags", "alice")).status == 201
    rc, out, _ = await sales(service, "show", "cli-flags", "--json")
    shown = json.loads(out)
    assert rc == 0
    assert {k: shown["stats"][k] for k in ("available", "fcode_available", "reserved")} == {
        "available": 5, "fcode_available": 4, "reserved": 1,
    }  # fmt: skip
    rc, out, _ = await sales(service, "show", "cli-flags")
    for words in ("fcode_available", "units_add_up", "orders in PostgreSQL"):
        assert words in out, out

    rc, out, _ = await sales(service, "pause", "cli-flags")
    assert rc == 0
    assert "sale cli-flags: paused (control paused)" in out
    assert "409 sale_paused" in out
    assert (await service.buy("cli-flags", "bob")).body["error"] == "sale_paused"
    rc, out, _ = await sales(service, "resume", "cli-flags")
    assert (rc, out.splitlines()[0]) == (0, "sale cli-flags: open (control active)")


async def test_create_from_a_toml_or_json_file(service: Service, tmp_path: Path) -> None:
    toml = tmp_path / "sale.toml"
    toml.write_text(
        'sale_id = "cli-toml"\nsku = "redmi-13"\nname = "Redmi 13"\nprice_cents = 19900\n'
        "stock = 100\nfcode_stock = 40\nstarts_at = 2030-11-22T10:00:00+08:00\n"
        'ends_at = "2030-11-22T12:00:00+08:00"\n'
    )
    rc, out, err = await sales(service, "create", "--file", str(toml), "--stock", "200")
    assert rc == 0, err
    view = await service.services.engine.get_sale("cli-toml")
    assert view.definition.stock == 200  # the flag wins over the file
    assert out.startswith("created sale cli-toml (scheduled)")

    js = tmp_path / "sale.json"
    js.write_text(json.dumps({"sale_id": "cli-json", "sku": "s", "name": "n", "price_cents": 1,
                              "stock": 3, "starts_at": at(-5), "ends_at": at(60)}))  # fmt: skip
    rc, out, _ = await sales(service, "create", "--file", str(js), "--json")
    assert (rc, json.loads(out)["sale"]["stock"]) == (0, 3)

    naive = tmp_path / "naive.toml"
    naive.write_text('sku = "s"\nstarts_at = 2030-11-22T10:00:00\n')
    rc, _, err = await sales(service, "create", "--file", str(naive))
    assert rc == 2
    assert "has no UTC offset" in err
    rc, _, err = await sales(service, "create", "--file", str(tmp_path / "sale.yaml"))
    assert rc == 2


async def test_refusals_and_usage_have_their_exit_codes(service: Service) -> None:
    rc, _, err = await sales(
        service, "create", *common_flags(**{"--ends-at": at(-60), "--starts-at": at(-120)})
    )
    assert rc == 1
    assert "refused (400 invalid_request)" in err
    assert "in the past" in err
    rc, _, err = await sales(service, "create", *common_flags(**{"--starts-at": "1795000000"}))
    assert rc == 1
    assert "epoch numbers are not accepted" in err
    rc, _, err = await sales(service, "create", *common_flags(), FLASHSALE_ADMIN_TOKEN="")
    assert rc == 2
    assert "no admin token" in err
    rc, _, err = await sales(service, "create", "--stock", "many")
    assert rc == 2  # argparse
    rc, _, err = await sales(service, "show", "no-such-sale")
    assert (rc, "404 sale_not_found" in err) == (1, True)
    rc, _, err = await sales(service, "list", "--url", "http://127.0.0.1:9")
    assert rc == 1
    assert "cannot reach the service at http://127.0.0.1:9" in err
    rc, _, err = await sales(service, "list", "--token", "x" * 40)
    assert (rc, "401 unauthorized" in err) == (1, True)


async def test_warnings_go_to_stderr(service: Service) -> None:
    rc, out, err = await sales(
        service, "create", *common_flags(**{"--starts-at": "+400d", "--ends-at": "+401d"})
    )
    assert rc == 0
    assert "warning: starts_at" in err
    assert "more than a year ahead" in err
    assert "warning" not in out


async def test_edit_before_the_opening_and_not_after(service: Service) -> None:
    await sales(service, "create", "--sale-id", "cli-edit", *common_flags(
        **{"--starts-at": "+1h", "--ends-at": "+2h"}))  # fmt: skip
    rc, out, err = await sales(service, "edit", "cli-edit", "--stock", "500", "--starts-at",
                               "+30m", "--unset", "fcode_opens_at")  # fmt: skip
    assert rc == 0, err
    assert out.startswith("edited sale cli-edit (scheduled): 500 unit(s)")
    assert (await service.services.engine.get_sale("cli-edit")).definition.stock == 500
    rc, _, err = await sales(service, "edit", "cli-edit")
    assert (rc, "nothing to change" in err) == (2, True)

    await sales(service, "create", "--sale-id", "cli-open", *common_flags())
    rc, _, err = await sales(service, "edit", "cli-open", "--stock", "5")
    assert rc == 1
    assert "409 sale_not_editable" in err
    assert "the sale opened at" in err


async def test_close_asks_first_and_says_what_happens_to_unpaid_orders(service: Service) -> None:
    await sales(service, "create", "--sale-id", "cli-close", *common_flags())
    order = (await service.buy("cli-close", "alice")).body["order"]
    rc, _, err = await sales(service, "close", "cli-close")  # no terminal to ask on
    assert rc == 2
    assert "1 reserved unit(s) can still be paid or cancelled" in err
    assert order["expires_at"] in err
    assert "--yes" in err
    assert (await service.stats("cli-close"))["control"] == "active"

    rc, out, _ = await sales(service, "close", "cli-close", "--yes")
    assert rc == 0
    assert "sale cli-close: ended (control closed)" in out
    assert "1 unit(s) reserved and unpaid can still be paid or cancelled" in out
    rc, _, err = await sales(service, "pause", "cli-close")
    assert (rc, "410 sale_ended" in err) == (1, True)


async def test_delete_a_sale_that_never_opened(service: Service) -> None:
    await sales(service, "create", "--sale-id", "cli-delete", *common_flags(
        **{"--starts-at": "+1h", "--ends-at": "+2h"}))  # fmt: skip
    rc, _, err = await sales(service, "delete", "cli-delete")
    assert (rc, "--yes" in err) == (2, True)
    rc, out, _ = await sales(service, "delete", "cli-delete", "--yes")
    assert (rc, out.strip()) == (0, "deleted sale cli-delete")
    rc, _, err = await sales(service, "delete", "cli-delete", "--yes")
    assert (rc, "404 sale_not_found" in err) == (1, True)


async def test_watch_shows_the_numbers_until_the_sale_ends(service: Service) -> None:
    ends_in = 5.0
    ends = time.monotonic() + ends_in
    # made over HTTP, not by `sales create` (tested above): every second of a command's start
    # on a busy machine would come off the five the watch has
    await service.create_sale(sale_id="cli-watch", ends_at=at(ends_in), fcode_stock=3)
    for user in ("a", "b"):
        assert (await service.buy("cli-watch", user)).status == 201
    rc, out, err = await sales(service, "watch", "cli-watch", "--once")
    assert rc == 0, err
    shown = ("sale cli-watch", "open (control active)", "stock", "10", "left 5", "F-code left 3",
             "reserved 2", "sold so far", "postgresql", "dead letters")  # fmt: skip
    for words in shown:
        assert words in out, (words, out)

    watching = asyncio.create_task(sales(service, "watch", "cli-watch", "--interval", "0.2"))
    await asyncio.sleep(1.5)
    assert not watching.done()
    assert (await service.buy("cli-watch", "c")).status == 201  # seen by a later poll
    rc, out, err = await watching
    assert rc == 0, err
    assert time.monotonic() >= ends  # it watched until the end...
    assert "ended (control active)" in out  # ...and shows the last numbers
    assert "3 reserved; the last expires at" in out
    assert re.search(r"\d+\.\d/s \(last 10 s\); 3 sold so far", out), out


def test_command_line_times_and_files(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert parse_time("now", now) == "2026-11-22T10:00:00+00:00"
    assert parse_time("+90s", now) == "2026-11-22T10:01:30+00:00"
    assert parse_time("+2h", now) == "2026-11-22T12:00:00+00:00"
    assert parse_time("+1d", now) == "2026-11-23T10:00:00+00:00"
    assert parse_time("2026-11-22T10:00:00+08:00", now) == "2026-11-22T10:00:00+08:00"
    toml = tmp_path / "s.toml"
    toml.write_text("starts_at = 2026-11-22T10:00:00+08:00\nstock = 5\n")
    fields: dict[str, Any] = read_file(toml)
    assert fields == {"starts_at": "2026-11-22T10:00:00+08:00", "stock": 5}


def test_help_has_an_example_and_the_exit_codes() -> None:
    import subprocess

    run = [sys.executable, "-m", "flashsale", "sales"]
    create = subprocess.run([*run, "create", "--help"], capture_output=True, text=True)
    assert create.returncode == 0
    for words in ('--starts-at 2026-11-22T10:00:00+08:00', "price_cents = 19900",
                  "ISO 8601 with a UTC offset", "+10m"):  # fmt: skip
        assert words in create.stdout, words
    top = subprocess.run([*run, "--help"], capture_output=True, text=True)
    assert "Exit codes: 0 done; 1 refused or failed" in " ".join(top.stdout.split())

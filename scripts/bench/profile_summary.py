"""Where the time goes, from a py-spy ``--format raw`` profile (collapsed stacks).

    .venv/bin/python scripts/bench/profile_summary.py PROFILE.raw [--top N]

Prints the share of samples by area (inclusive: a sample counts for every area on its stack,
so the shares add up to more than 100 %) and the functions with the most samples of their own.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

# frame text: "function (path/to/file.py:123)"
_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

# areas by the file a frame is in, first match wins; the flashsale ones name our own modules
_AREAS = [
    ("flashsale: buy handler", "flashsale/http/shop.py"),
    ("flashsale: token check", "flashsale/auth.py"),
    ("flashsale: request body", "flashsale/http/validation.py"),
    ("flashsale: engine (buy, order)", "flashsale/engine/engine.py"),
    ("flashsale: Redis batching", "flashsale/engine/coalescer.py"),
    ("flashsale: Redis connection", "flashsale/engine/wire.py"),
    ("flashsale: order writer", "flashsale/store/writer.py"),
    ("flashsale: models (order JSON)", "flashsale/models.py"),
    ("flashsale: order ids", "flashsale/ids.py"),
    ("flashsale: sweeper", "flashsale/engine/sweeper.py"),
    ("redis-py", "redis/"),
    ("asyncpg", "asyncpg/"),
    ("aiohttp", "aiohttp/"),
    ("asyncio", "asyncio/"),
    ("logging", "logging/"),
]


def area_of(file: str) -> str | None:
    for name, part in _AREAS:
        if part in file:
            return name
    return None


def summarize(path: str, top: int) -> str:
    total = 0
    by_area: Counter[str] = Counter()
    by_own: Counter[str] = Counter()
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_FRAME_RE.match(frame) for frame in stack.split(";")]
            areas = {area_of(m["file"]) for m in frames if m is not None}
            for area in areas - {None}:
                by_area[area] += count  # type: ignore[index]
            last = frames[-1]
            own = f"{last['func']} ({last['file'].rsplit('/', 2)[-1]})" if last else stack
            by_own[own] += count
    if total == 0:
        return "no samples"
    out = [f"profile: {total} samples of the service"]
    out.append("by area (inclusive):")
    out += [f"  {100 * n / total:5.1f} %  {area}" for area, n in by_area.most_common()]
    out.append(f"top {top} functions by own samples:")
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in by_own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarize(args.profile, args.top))


if __name__ == "__main__":
    main()

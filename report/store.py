"""Reports kept in Redis: the newest REPORT_KEEP pages, each under a size cap, and files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.lua import LuaScript
from ringez_worker.report.page import Rendered, charts_from_page

# One script: the page, its place at the head of the list, and the pages trimmed off it
# all change together, so a reader never finds an id whose page is gone.
_SAVE = LuaScript(
    """
redis.call('SET', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[1], ARGV[1])
local old = redis.call('LRANGE', KEYS[1], tonumber(ARGV[3]), -1)
for _, id in ipairs(old) do redis.call('DEL', ARGV[4] .. id) end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]) - 1)
return #old
"""
)


class ReportTooLarge(Exception):
    """The page is over REPORT_MAX_BYTES; it is not kept."""


async def save_report(
    redis: Redis,
    keys: Keys,
    report_id: str,
    meta: dict[str, Any],
    page: str,
    *,
    keep: int,
    max_bytes: int,
) -> None:
    """Keep `page` as the newest report; only the newest `keep` stay."""
    record = orjson.dumps({**meta, "id": report_id, "html": page})
    if len(record) > max_bytes:
        raise ReportTooLarge(f"report is {len(record)} bytes, over REPORT_MAX_BYTES ({max_bytes})")
    await _SAVE(
        redis, [keys.reports, keys.report(report_id)], [report_id, record, keep, keys.report("")]
    )


async def latest_report(redis: Redis, keys: Keys) -> dict[str, Any] | None:
    """The newest kept report ({id, day, ..., html}), or None."""
    ids = await redis.lrange(keys.reports, 0, 0)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    if not ids:
        return None
    raw = await redis.get(keys.report(ids[0].decode()))
    return orjson.loads(raw) if raw else None


def write_files(out: Path, stem: str, rendered: Rendered) -> list[Path]:
    """`<stem>.html` and `<stem>-<chart>.png` per chart in `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / f"{stem}.html"
    page.write_text(rendered.html, encoding="utf-8")
    written = [page]
    for name, png in rendered.charts.items():
        path = out / f"{stem}-{name}.png"
        path.write_bytes(png)
        written.append(path)
    return written


def rendered_from_record(record: dict[str, Any]) -> Rendered:
    page = str(record["html"])
    return Rendered(html=page, charts=charts_from_page(page))

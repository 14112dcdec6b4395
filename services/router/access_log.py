"""The router's access log: one structured line per HTTP request (does I/O: the log, stderr).

The line is basalt's JSON log line with event `access`, written when the response has been
sent (a stream's last chunk, or the client leaving: outcome `cancelled`), refusals included.
Its fields are `core/access.py`'s `access_fields`; `--no-access-log` turns it off.
"""

from __future__ import annotations

import time

from basalt.log import get_logger
from services.router.core.access import ACCESS_EVENT, AccessEntry, access_fields

log = get_logger("services.router.access")


def write_access(entry: AccessEntry) -> None:
    """The request's one access line (a single log call; no await)."""
    log.info(ACCESS_EVENT, **access_fields(entry, (time.perf_counter() - entry.arrived) * 1000))

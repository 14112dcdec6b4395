"""The leader lease in NATS KV, by compare-and-set (does I/O; the rule is core/lease.py)."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from basalt import subjects
from basalt.log import get_logger
from basalt.pb import deploy_pb2

from .core.lease import acting_until, may_take

log = get_logger(__name__)


class Lease:
    def __init__(self, kv: KeyValue, holder: str, ttl_s: float) -> None:
        self.kv = kv
        self.holder = holder
        self.ttl_s = ttl_s
        self.until = 0.0  # acting is allowed while now < until

    def acting(self, now: float) -> bool:
        return now < self.until

    async def renew(self, now: float) -> bool:
        """Take or renew the lease; True while this process holds it."""
        key = subjects.AUTOSCALER_LEASE_KEY
        mine = deploy_pb2.AutoscalerLease(holder=self.holder, expires_ts=now + self.ttl_s)
        try:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                entry = None
            current = None
            if entry is not None and entry.value:
                try:
                    current = deploy_pb2.AutoscalerLease.FromString(entry.value)
                except DecodeError:
                    current = None  # unreadable: treated as expired
            if not may_take(current, self.holder, now):
                self.until = 0.0
                return False
            if entry is None:
                await self.kv.create(key, mine.SerializeToString())
            else:
                await self.kv.update(key, mine.SerializeToString(), last=entry.revision)
        except KeyWrongLastSequenceError:
            self.until = 0.0  # another process wrote first
            return False
        except Exception as e:  # noqa: BLE001 - NATS away: stop acting, try next tick
            if self.until:
                log.warning("lease_renew_failed", error=str(e))
            self.until = 0.0
            return False
        if not self.until:
            log.info("lease_taken", holder=self.holder)
        self.until = acting_until(now, self.ttl_s)
        return True

    async def release(self) -> None:
        """Expire our lease at once, so a standby takes over without waiting (clean stop)."""
        if not self.until:
            return
        self.until = 0.0
        try:
            entry = await self.kv.get(subjects.AUTOSCALER_LEASE_KEY)
            cur = deploy_pb2.AutoscalerLease.FromString(entry.value)
            if cur.holder == self.holder:
                gone = deploy_pb2.AutoscalerLease(holder=self.holder, expires_ts=0.0)
                await self.kv.update(subjects.AUTOSCALER_LEASE_KEY, gone.SerializeToString(),
                                     last=entry.revision)
        except Exception as e:  # noqa: BLE001 - it expires by itself anyway
            log.warning("lease_release_failed", error=str(e))

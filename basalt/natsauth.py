"""Who may publish and subscribe what on NATS: one nkey user per service role, each with an
allow list, and the nats-server configuration that enforces them (no I/O).

Roles:
- `mcm`: the control plane; writes deployments, environments and scale-applied markers,
  publishes and consumes scale commands, reads replica records and API keys; subscribes to
  request records (the dashboard's traffic feed).
- `router`: reads deployments, environments, replica records and API keys; subscribes to
  KV events and load reports; publishes request records. Writes nothing shared.
- `runtime`: publishes KV events and load reports and writes replica records. It cannot
  read any bucket, nor another replica's events. That a record or event comes from the
  replica it names is checked by its consumers (basalt/replicaauth.py): a subject
  permission cannot say it with one static user for every replica.
- `autoscaler`: reads deployments, replica records and applied scale commands; subscribes to
  request records, load reports, demand reports and wakes; publishes scale commands; writes
  only its own buckets (decisions and the leader lease).
- `coldstart`: a node's weight cache; consumes the weights stream, writes the weights bucket,
  publishes progress, reads replica records (a revision a live replica uses is never evicted).
- `admin`: key administration (`basalt keys`, `basalt up`): the only writer of API keys;
  reads replica records (for `basalt up`'s wait).

Every user gets its own reply inbox, `_INBOX.<its public key>.>`, so no one reads another
user's replies (JetStream acks, KV gets). Everything not listed is denied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from basalt import subjects

ROLES = ("mcm", "router", "runtime", "admin", "autoscaler", "coldstart")


def inbox_prefix(public_key: str) -> str:
    return f"_INBOX.{public_key}"


def _stream(name: str) -> list[str]:
    """Publish subjects to look a stream up and create it (idempotent with the same config)."""
    return [f"$JS.API.STREAM.INFO.{name}", f"$JS.API.STREAM.CREATE.{name}"]


def _read_bucket(bucket: str) -> list[str]:
    s = f"KV_{bucket}"
    return [
        *_stream(s),
        f"$JS.API.DIRECT.GET.{s}", f"$JS.API.DIRECT.GET.{s}.>", f"$JS.API.STREAM.MSG.GET.{s}",
        f"$JS.API.CONSUMER.CREATE.{s}", f"$JS.API.CONSUMER.CREATE.{s}.>",
        f"$JS.API.CONSUMER.INFO.{s}.>", f"$JS.API.CONSUMER.DELETE.{s}.>", f"$JS.FC.{s}.>",
    ]


def _write_bucket(bucket: str) -> list[str]:
    return [*_stream(f"KV_{bucket}"), f"$KV.{bucket}.>"]


def _consume_stream(name: str) -> list[str]:
    return [
        *_stream(name), f"$JS.API.CONSUMER.CREATE.{name}", f"$JS.API.CONSUMER.CREATE.{name}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{name}.>", f"$JS.API.CONSUMER.INFO.{name}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{name}.>", f"$JS.ACK.{name}.>", f"$JS.FC.{name}.>",
    ]


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions(role: str, public_key: str) -> Permissions:
    """The allow lists of one role's user."""
    inbox = f"{inbox_prefix(public_key)}.>"
    b = subjects
    if role == "mcm":
        pub = [
            *_read_bucket(b.DEPLOYMENTS_BUCKET), *_write_bucket(b.DEPLOYMENTS_BUCKET),
            *_read_bucket(b.ENVIRONMENTS_BUCKET), *_write_bucket(b.ENVIRONMENTS_BUCKET),
            *_read_bucket(b.SCALE_APPLIED_BUCKET), *_write_bucket(b.SCALE_APPLIED_BUCKET),
            *_read_bucket(b.REPLICAS_BUCKET), *_read_bucket(b.API_KEYS_BUCKET),
            *_consume_stream(b.SCALE_STREAM), b.SCALE_ALL, b.WAKE_ALL,
            *_read_bucket(b.AUTOSCALER_BUCKET), *_read_bucket(b.WEIGHTS_BUCKET),
            *_stream(b.WEIGHTS_STREAM), b.WEIGHTS_FETCH_ALL,
        ]
        sub: list[str] = [b.REQUESTS_ALL]
    elif role == "router":
        pub = [
            *_read_bucket(b.DEPLOYMENTS_BUCKET), *_read_bucket(b.ENVIRONMENTS_BUCKET),
            *_read_bucket(b.REPLICAS_BUCKET), *_read_bucket(b.API_KEYS_BUCKET), b.REQUESTS_ALL,
            b.DEMAND_ALL, b.WAKE_ALL,
        ]
        sub = [b.KV_EVENTS_ALL, b.LOAD_ALL]
    elif role == "runtime":
        pub = [*_write_bucket(b.REPLICAS_BUCKET), "basalt.kv.*", "basalt.load.*"]
        sub = []
    elif role == "autoscaler":
        pub = [
            *_read_bucket(b.DEPLOYMENTS_BUCKET), *_read_bucket(b.REPLICAS_BUCKET),
            *_read_bucket(b.SCALE_APPLIED_BUCKET),
            *_read_bucket(b.AUTOSCALER_BUCKET), *_write_bucket(b.AUTOSCALER_BUCKET),
            *_read_bucket(b.AUTOSCALER_LEASE_BUCKET), *_write_bucket(b.AUTOSCALER_LEASE_BUCKET),
            *_stream(b.SCALE_STREAM), b.SCALE_ALL,
        ]
        sub = [b.REQUESTS_ALL, b.LOAD_ALL, b.DEMAND_ALL, b.WAKE_ALL]
    elif role == "coldstart":
        pub = [
            *_read_bucket(b.WEIGHTS_BUCKET), *_write_bucket(b.WEIGHTS_BUCKET),
            *_read_bucket(b.REPLICAS_BUCKET), *_consume_stream(b.WEIGHTS_STREAM),
            b.WEIGHTS_PROGRESS_ALL,
        ]
        sub = []
    elif role == "admin":
        # Also `basalt weights pull`: asks a node for a revision and watches its progress.
        pub = [*_read_bucket(b.API_KEYS_BUCKET), *_write_bucket(b.API_KEYS_BUCKET),
               *_read_bucket(b.REPLICAS_BUCKET), *_read_bucket(b.WEIGHTS_BUCKET),
               *_stream(b.WEIGHTS_STREAM), b.WEIGHTS_FETCH_ALL]
        sub = [b.WEIGHTS_PROGRESS_ALL]
    else:
        raise ValueError(f"unknown NATS role {role!r}; roles: {', '.join(ROLES)}")
    return Permissions(tuple(dict.fromkeys(pub)), (inbox, *sub))


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Server TLS material; `verify` asks clients for a certificate signed by `ca_file` (mTLS)."""

    cert_file: str
    key_file: str
    ca_file: str
    verify: bool = False


def server_config(
    users: Mapping[str, str], *, host: str, port: int, store_dir: str,
    tls: TlsFiles | None = None, extra: str = "",
) -> str:
    """nats-server configuration: JetStream, and one nkey user per role (role -> public key)
    with its permissions. JSON values are valid in the nats-server config syntax."""
    entries = []
    for role, pub in sorted(users.items()):
        perms = permissions(role, pub)
        entries.append({"nkey": pub, "permissions": {
            "publish": {"allow": list(perms.publish)},
            "subscribe": {"allow": list(perms.subscribe)},
        }})
    lines = [
        f"host: {json.dumps(host)}", f"port: {port}",
        f"jetstream: {{ store_dir: {json.dumps(store_dir)} }}",
        f"authorization: {{ users: {json.dumps(entries)} }}",
    ]
    if tls is not None:
        lines.append("tls: " + json.dumps({
            "cert_file": tls.cert_file, "key_file": tls.key_file, "ca_file": tls.ca_file,
            "verify": tls.verify, "timeout": 2,
        }))
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"

"""What names a weights revision, for the coldstart service and the control plane alike
(no I/O): the cache key of a `WeightsSource` and the normal form of its URI."""

from __future__ import annotations

import hashlib
import os
import re

from basalt.pb import deploy_pb2

SCHEMES = ("file://", "http://", "https://", "hf://", "s3://", "gs://", "memory://")
_NODE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$")


def normal_uri(uri: str) -> str:
    """The URI as the cache keys it: a plain path becomes an absolute file path; a trailing
    slash goes."""
    uri = uri.strip()
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    elif uri.startswith("file://"):
        uri = os.path.abspath(uri[len("file://"):])
    return uri.rstrip("/") or "/"


def local_path(uri: str) -> str:
    """The folder a weights URI names on this host ("" for a remote source)."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return "" if "://" in uri else uri


def uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a weights source (None: it can)."""
    if not uri.strip():
        return "empty"
    if "://" in uri and not uri.startswith(SCHEMES):
        return f"unknown scheme; use a path or one of {', '.join(SCHEMES)}"
    if "@" in uri.split("://", 1)[-1].split("/", 1)[0]:
        return "credentials in a URI are refused: name a secret in token_secret"
    return None


def revision_key(source: deploy_pb2.WeightsSource) -> str:
    """The cache key: sha256 of "<normal uri>@<revision>" (24 hex digits). Patterns are part of
    it: two deployments that take different files of one repo hold different revisions (their
    common files are stored once: the cache is content-addressed)."""
    patterns = ",".join(sorted(source.allow_patterns))
    raw = f"{normal_uri(source.uri)}@{source.revision}#{patterns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def node_of_cluster(cluster: str) -> str:
    """The coldstart node name that serves a cluster: its name with every run of characters
    other than letters, digits, '_' and '-' made one '-' ("aws/us-east-1/a" -> "aws-us-east-1-a")."""
    return _UNSAFE.sub("-", cluster).strip("-")[:63] or "local"


def valid_node(node: str) -> bool:
    """Whether `node` can be a node name (a subject token and a KV key)."""
    return bool(_NODE.match(node))

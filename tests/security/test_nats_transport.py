"""NATS transport rules: TLS with basalt's own CA, credentials required, and a service that
refuses plaintext or no credentials to a server off loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from basalt import bus, subjects
from basalt_tools.natsserver import NatsServer
from basalt_tools.tlsfiles import make_tls_files

pytestmark = pytest.mark.integration


async def test_tls_nats_admits_a_role_with_the_ca_and_no_one_in_plaintext(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    assert (Path(tls.key_file).stat().st_mode & 0o777) == 0o600
    server = NatsServer(store_dir=tmp_path / "nats", creds_dir=tmp_path / "creds", tls=tls).start()
    try:
        assert server.url.startswith("tls://")
        auth = bus.NatsAuth(str(server.creds("admin")), tls.ca_file)
        nc = await bus.connect(server.url, "t", auth)
        try:
            kv = await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET)
            await kv.put("abcdefabcdef", b"x")
            assert (await kv.get("abcdefabcdef")).value == b"x"
        finally:
            await nc.close()
        plain = server.url.replace("tls://", "nats://")
        with pytest.raises(Exception):  # noqa: B017 - TLS required: the handshake fails
            await _connect_once(plain, bus.NatsAuth(str(server.creds("admin"))))
    finally:
        server.stop()


async def _connect_once(url: str, auth: bus.NatsAuth) -> None:
    import nats

    seed = Path(auth.creds).read_text().strip()
    nc = await nats.connect(url, nkeys_seed_str=seed, allow_reconnect=False,
                            max_reconnect_attempts=0, connect_timeout=2)
    await nc.close()


@pytest.mark.parametrize("url, auth, refused", [
    ("nats://10.1.2.3:4222", bus.NatsAuth(), True),
    ("nats://nats.internal:4222", bus.NatsAuth(creds="/x.nk"), True),  # no TLS
    ("tls://nats.internal:4222", bus.NatsAuth(), True),  # no credentials
    ("tls://nats.internal:4222", bus.NatsAuth(creds="/x.nk"), False),
    ("nats://nats.internal:4222", bus.NatsAuth(creds="/x.nk", tls_ca="/ca.pem"), False),
    ("nats://nats.internal:4222", bus.NatsAuth(insecure=True), False),
    ("nats://127.0.0.1:4222,nats://10.0.0.9:4222", bus.NatsAuth(), True),
    ("nats://127.0.0.1:4222", bus.NatsAuth(), False),  # loopback: this host only
])
def test_off_loopback_needs_credentials_and_tls(url: str, auth: bus.NatsAuth, refused: bool) -> None:
    if refused:
        with pytest.raises(bus.InsecureNats):
            bus.check_transport(url, auth)
    else:
        bus.check_transport(url, auth)

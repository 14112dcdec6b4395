"""API keys for scripts, over NATS with the admin role's credentials (does I/O: NATS)."""

from __future__ import annotations

from typing import Any, Self


class KeyAdmin:
    """API keys (`basalt.apikeys`), for scripts: the deployments API has no key routes, since
    keys are written with the NATS admin role's credentials only (a management key must not
    mint more keys). `async with KeyAdmin(url, creds) as keys: await keys.create(...)`."""

    def __init__(self, nats_url: str = "nats://127.0.0.1:4222", creds: str = "",
                 tls_ca: str = "") -> None:
        self.nats_url, self.creds, self.tls_ca = nats_url, creds, tls_ca
        self._nc: Any = None

    async def __aenter__(self) -> Self:
        from basalt import bus

        self._nc = await bus.connect(self.nats_url, name="basalt-sdk",
                                     auth=bus.NatsAuth(self.creds, self.tls_ca))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None

    async def create(self, name: str, scope: str = "inference", **limits: Any) -> str:
        """A new key (shown once); `limits`: models, expires_ts, rate_per_s, max_concurrency."""
        from basalt import apikeys

        return await apikeys.create(self._nc, name, apikeys.SCOPES[scope], **limits)

    async def list(self) -> list[Any]:
        from basalt import apikeys

        return await apikeys.list_keys(self._nc)

    async def revoke(self, key_id: str) -> bool:
        from basalt import apikeys

        return await apikeys.revoke(self._nc, key_id)

"""The management SDK (`basalt.client`): its results read any view (extra fields kept), its
errors carry the error body, and sync and async clients drive a real control plane."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from basalt.client import (
    Applied,
    AsyncClient,
    BasaltError,
    Client,
    Deployment,
    Unreachable,
    calls,
    read_response,
)
from basalt_tools.natsserver import NatsServer, free_port
from tests.mcm_process import FAST_SIM_ARGS, McmProcess, kill_runtimes


def _sim(dep_id: str, replicas: int = 1, **kw: object) -> dict[str, object]:
    return {"id": dep_id, "engine": "sim", "replicas": replicas,
            "engine_args": dict(FAST_SIM_ARGS), **kw}


# -- reading answers (no network) ------------------------------------------------------------


def test_a_view_with_unknown_fields_is_read_and_kept_whole() -> None:
    view = {"id": "d1", "model": "m", "status": "active", "desired_replicas": 2,
            "active_replica_count": 1, "environments": ["production"], "spec": {"engine": "sim"},
            "health": {"state": "rolling", "reason": "1 of 2 replaced", "later_field": 1},
            "spec_revision": "abc", "a_field_from_the_future": [1, 2],
            "replicas": [{"id": "r1", "state": "ready", "spec_revision": "abc", "new": True}]}
    d = Deployment.from_view(view)
    assert (d.id, d.desired_replicas, d.health.state, d.spec_revision) == ("d1", 2, "rolling", "abc")
    assert d.replicas[0].spec_revision == "abc" and d.replicas[0].raw["new"] is True
    assert d.raw["a_field_from_the_future"] == [1, 2]
    assert Deployment.from_view({"id": "d2", "model": "m"}).health.state == ""  # an older server


def test_put_answer_reads_as_applied() -> None:
    a = Applied.from_view({"id": "d1", "model": "m", "created": False, "rollout": True,
                           "changes": [{"field": "routing_policy", "old": "kv",
                                        "new": "round_robin"}]})
    assert not a.created and a.rollout and a.changes[0].field == "routing_policy"
    assert a.changes[0].new == "round_robin" and a.deployment.id == "d1"


def test_an_error_body_becomes_basalt_error() -> None:
    call = calls.deployment("m", "d1")
    body = {"error": {"message": "bad", "type": "invalid_request_error", "param": "replicas",
                      "code": "invalid_field"}}
    with pytest.raises(BasaltError) as e:
        read_response(call, httpx.Response(422, json=body))
    assert (e.value.status, e.value.message, e.value.param, e.value.type) == (
        422, "bad", "replicas", "invalid_request_error")
    with pytest.raises(BasaltError) as e:
        read_response(call, httpx.Response(502, text="bad gateway"))
    assert e.value.status == 502 and e.value.message == "bad gateway" and e.value.param is None


def test_paths_quote_ids_and_keep_model_slashes() -> None:
    assert calls.deployment("org/tiny", "d 1").path == "/v1/models/org/tiny/deployments/d%201"
    assert calls.apply_deployment("m", {"id": "d1", "model": "m"}).body == {"id": "d1"}
    assert calls.chat("m", [{"role": "user", "content": "hi"}], max_tokens=4).inference


def test_nothing_listening_says_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as c, pytest.raises(Unreachable) as e:
        c.models()
    assert e.value.status == 0 and f"no control plane at {url}" in str(e.value)
    assert "basalt up" in str(e.value) and "Errno" not in str(e.value)


# -- against a real control plane ------------------------------------------------------------


@pytest.fixture(scope="module")
def mcm(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McmProcess]:
    proc = McmProcess(nats_server.url, tmp_path_factory.mktemp("sdk-mcm"),
                      extra=["--stop-replicas-on-exit"]).start()
    yield proc
    proc.terminate()
    kill_runtimes(proc.owner)


def _until(probe, timeout: float = 40.0, what: str = ""):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.3)
    return got


@pytest.mark.integration
def test_sync_client_drives_a_deployment_through_its_life(mcm: McmProcess) -> None:
    with Client(mcm.base_url) as c:
        created = c.create_deployment("sdk-sync", _sim("sdk-sync-v1"))
        assert created.id == "sdk-sync-v1" and created.environments == ["production"]
        _until(lambda: c.deployment("sdk-sync", "sdk-sync-v1").active_replica_count == 1,
               what="one replica ready")
        d = c.deployment("sdk-sync", "sdk-sync-v1")
        assert d.replicas and d.replicas[0].state == "ready" and d.spec["engine"] == "sim"
        assert c.find_deployment("sdk-sync-v1").model == "sdk-sync"
        assert any(m.name == "sdk-sync" for m in c.models())
        assert c.model("sdk-sync").production_deployment_id == "sdk-sync-v1"
        assert [e.deployment_id for e in c.environments("sdk-sync")] == ["sdk-sync-v1"]

        assert c.scale("sdk-sync", "sdk-sync-v1", 2).desired_replicas == 2
        off = c.deactivate("sdk-sync", "sdk-sync-v1")
        assert off.status == "inactive" and off.desired_replicas == 0
        on = c.activate("sdk-sync", "sdk-sync-v1")
        assert on.status == "active" and on.desired_replicas >= 1

        c.create_deployment("sdk-sync", _sim("sdk-sync-v2", replicas=0))
        with pytest.raises(BasaltError) as e:  # production serves v1
            c.delete_deployment("sdk-sync", "sdk-sync-v1")
        assert e.value.status == 409 and e.value.code == "deployment_in_environment"
        assert c.delete_deployment("sdk-sync", "sdk-sync-v2")["deleted"] is True
        gone = c.delete_model("sdk-sync")
        assert gone["deployments"] == ["sdk-sync-v1"]
        with pytest.raises(BasaltError) as e:
            c.deployment("sdk-sync", "sdk-sync-v1")
        assert e.value.status == 404


@pytest.mark.integration
def test_a_bad_deployment_names_the_field(mcm: McmProcess) -> None:
    with Client(mcm.base_url) as c:
        with pytest.raises(BasaltError) as e:
            c.create_deployment("sdk-bad", _sim("sdk-bad-v1", replicas=-1))
        assert e.value.status == 422 and e.value.param == "replicas"
        with pytest.raises(BasaltError) as e:
            c.create_deployment("sdk-bad", {**_sim("sdk-bad-v1"), "no_such_field": 1})
        assert e.value.status == 422 and e.value.param == "no_such_field"
        with pytest.raises(BasaltError) as e:
            c.find_deployment("sdk-no-such-deployment")
        assert e.value.status == 404
        assert isinstance(c.clusters(), list)


@pytest.mark.integration
async def test_async_client_has_the_same_calls(mcm: McmProcess) -> None:
    async with AsyncClient(mcm.base_url) as c:
        created = await c.create_deployment("sdk-async", _sim("sdk-async-v1", replicas=0))
        assert created.desired_replicas == 0
        assert (await c.deployment("sdk-async", "sdk-async-v1")).model == "sdk-async"
        assert (await c.scale("sdk-async", "sdk-async-v1", 1)).desired_replicas == 1
        assert (await c.deactivate("sdk-async", "sdk-async-v1")).status == "inactive"
        assert (await c.activate("sdk-async", "sdk-async-v1")).status == "active"
        assert [d.id for d in await c.deployments("sdk-async")] == ["sdk-async-v1"]
        with pytest.raises(BasaltError) as e:
            await c.create_deployment("sdk-async", _sim("sdk-async-v1"))
        assert e.value.status == 409
        assert (await c.delete_model("sdk-async"))["deleted"] is True
        with pytest.raises(BasaltError) as e:
            await c.model("sdk-async")
        assert e.value.status == 404


@pytest.mark.integration
def test_put_creates_then_leaves_alone_then_reports_changes(mcm: McmProcess) -> None:
    with Client(mcm.base_url) as c:
        first = c.apply_deployment("sdk-put", _sim("sdk-put-v1", replicas=0))
        assert first.created and first.deployment.id == "sdk-put-v1"
        again = c.apply_deployment("sdk-put", _sim("sdk-put-v1", replicas=0))
        assert not again.created and again.changes == [] and not again.rollout
        changed = c.apply_deployment("sdk-put", _sim("sdk-put-v1", replicas=0,
                                                     routing_policy="round_robin"))
        assert [(x.field, x.old, x.new) for x in changed.changes] == [
            ("routing_policy", "kv", "round_robin")]
        assert changed.deployment.spec["routing_policy"] == "round_robin"
        assert changed.deployment.spec_revision and changed.deployment.health.state
        with pytest.raises(BasaltError) as e:
            c.apply_deployment("sdk-put", _sim("sdk-put-v1", queue_limit=-5))
        assert e.value.status == 422 and e.value.param == "queue_limit"
        c.delete_model("sdk-put")


@pytest.mark.integration
async def test_key_admin_creates_lists_and_revokes(nats_server: NatsServer) -> None:
    from basalt import apikeys
    from basalt.client import KeyAdmin

    async with KeyAdmin(nats_server.url) as keys:
        key = await keys.create("sdk-test", "management", models=["sdk-keys"])
        key_id = apikeys.key_id_of(key)
        assert key_id and key_id in [r.key_id for r in await keys.list()]
        assert await keys.revoke(key_id)
        assert key_id not in [r.key_id for r in await keys.list()]

"""Two real vLLM (CPU) replicas behind the router: tokens stream, KV events reach NATS, a
repeated long prefix lands on the replica that caches it while load still spreads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

from basalt import subjects
from basalt.kvevents import BlockRemoved, BlockStored, batch_from_proto
from basalt.pb import events_pb2, runtime_pb2, runtime_pb2_grpc
from basalt_tools.natsserver import NatsServer
from basalt_tools.vllm_cpu import CPU_FLAGS
from tests.router_process import RouterProcess, write_deployments
from tests.runtime_process import RuntimeProcess

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
KV_BYTES = 8 * 2**20  # a small cache (a few hundred 32-token blocks) so eviction happens


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("vllm-stack")
    lora = tiny_model / "lora" / "tiny-lora"
    deps = write_deployments(tmp / "d.yaml", [{
        "id": "tiny-v1", "model": "tiny", "engine": "vllm", "model_path": str(tiny_model),
        "loras": [{"name": "tiny-lora", "path": str(lora)}]}])
    replicas = [
        RuntimeProcess(nats_server.url, tmp, engine="vllm", replica_id=rid,
                       extra=["--deployment", "tiny-v1", "--model", str(tiny_model),
                              "--model-name", "tiny", "--kv-cache-bytes", str(KV_BYTES),
                              "--max-model-len", "2048", "--load-report-interval", "0.5", *CPU_FLAGS,
                              *extra]).launch()
        for rid, extra in (("vllm-a", ["--lora-modules", f"tiny-lora={lora}"]), ("vllm-b", []))
    ]
    router = RouterProcess(nats_server.url, tmp, deps, name="router-vllm")
    try:
        for r in replicas:
            r.wait_ready(300)
        router.start()
        yield router, replicas
    finally:
        router.kill()
        for r in replicas:
            r.kill()


def _gen(prompt: list[int], max_tokens: int = 8) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        prompt_token_ids=prompt,
        sampling=runtime_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


async def test_replica_streams_and_publishes_kv_events(stack, nc) -> None:
    _, (a, _) = stack
    batches = []

    async def on_msg(msg) -> None:
        batches.append(batch_from_proto(events_pb2.KvEventBatch.FromString(msg.data)))

    sub = await nc.subscribe(subjects.kv_events("vllm-a"), cb=on_msg)
    prompt = [(i * 7) % 900 + 20 for i in range(5 * 32 + 3)]
    async with a.channel() as ch:
        stub = runtime_pb2_grpc.RuntimeStub(ch)
        first = [r async for r in stub.Generate(_gen(prompt, 12))]
        second = [r async for r in stub.Generate(_gen(prompt[:160] + [5, 6, 7], 4))]
    assert sum(len(r.token_ids) for r in first) == 12 and len(first) > 1
    assert first[-1].usage.cached_prompt_tokens == 0
    assert second[-1].usage.cached_prompt_tokens >= 4 * 32
    await asyncio.sleep(1.0)
    stored = [e for b in batches for e in b.events if isinstance(e, BlockStored)]
    tokens = [t for e in stored for t in e.token_ids]
    assert tokens[: 5 * 32] == prompt[: 5 * 32], "BlockStored carries the prompt's blocks"
    assert all(e.block_size == 32 for e in stored)
    assert [b.seq for b in batches] == list(range(batches[0].seq, batches[0].seq + len(batches)))
    await sub.unsubscribe()


async def test_cache_pressure_publishes_block_removed(stack, nc) -> None:
    _, (a, _) = stack
    removed = []

    async def on_msg(msg) -> None:
        b = batch_from_proto(events_pb2.KvEventBatch.FromString(msg.data))
        removed.extend(e for e in b.events if isinstance(e, BlockRemoved))

    sub = await nc.subscribe(subjects.kv_events("vllm-a"), cb=on_msg)
    async with a.channel() as ch:
        stub = runtime_pb2_grpc.RuntimeStub(ch)
        for k in range(40):
            prompt = [(k * 131 + i * 3) % 900 + 20 for i in range(1024)]
            [r async for r in stub.Generate(_gen(prompt, 1))]
            if removed:
                break
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    assert removed, "filling the cache should evict blocks and publish BlockRemoved"


def test_router_sends_a_repeated_prefix_to_the_replica_that_holds_it(stack) -> None:
    router, _ = stack
    client = openai.OpenAI(base_url=router.base_url + "/v1", api_key="none", max_retries=0)
    systems = [f"{i} You are assistant number {i}. " + "Answer briefly and kindly. " * 25
               for i in range(4)]

    async def first_round():
        async with httpx.AsyncClient(base_url=router.base_url, timeout=120) as c:
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json={
                "model": "tiny", "max_tokens": 24, "messages": [
                    {"role": "system", "content": s}, {"role": "user", "content": "hi"}]})
                for s in systems))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        return [r.headers["x-basalt-replica"] for r in rs]

    first = asyncio.run(first_round())
    assert set(first) == {"vllm-a", "vllm-b"}, f"load should spread: {first}"
    time.sleep(1.0)
    for i, s in enumerate(systems):
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", max_tokens=4,
            messages=[{"role": "system", "content": s}, {"role": "user", "content": "and again?"}])
        out = raw.parse()
        assert raw.headers["x-basalt-replica"] == first[i]
        assert out.usage.prompt_tokens_details.cached_tokens > 0


def test_openai_stream_through_the_router(stack) -> None:
    router, _ = stack
    client = openai.OpenAI(base_url=router.base_url + "/v1", api_key="none", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens >= 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_lora_adapter_is_in_the_record_and_requests_for_it_go_where_it_is_loaded(stack, nc) -> None:
    from basalt import bus

    router, _ = stack
    bucket = await bus.replicas_bucket(nc)
    rec_a = events_pb2.ReplicaRecord.FromString((await bucket.get("vllm-a")).value)
    rec_b = events_pb2.ReplicaRecord.FromString((await bucket.get("vllm-b")).value)
    assert list(rec_a.lora_adapters) == ["tiny-lora"] and not rec_b.lora_adapters
    async with httpx.AsyncClient(base_url=router.base_url, timeout=120) as c:
        for i in range(3):
            r = await c.post("/v1/completions", json={
                "model": "tiny-lora", "prompt": f"adapter request {i}", "max_tokens": 3})
            assert r.status_code == 200, r.text
            assert r.headers["x-basalt-replica"] == "vllm-a"

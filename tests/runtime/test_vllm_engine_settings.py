"""A deployment's vLLM settings reach vLLM: one replica started as the control plane starts it
(deployment -> stored record -> `launch_request` -> LocalProvider's `runtime_args` ->
`python -m services.runtime`), on the CPU build, showing what a user would notice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest

pytest.importorskip("vllm")

from basalt.deployfile import Deployment
from basalt.engine_check import problems
from basalt.ids import ReplicaId
from basalt.pb import runtime_pb2, runtime_pb2_grpc
from basalt_tools.natsserver import NatsServer
from basalt_tools.tinymodel import HEAD_DIM, HIDDEN_SIZE, NUM_HEADS, NUM_KV_HEADS, NUM_LAYERS
from services.mcm.core.inventory import DeploymentId
from services.mcm.core.reconcile import Launch
from services.mcm.providers.local import LOCAL_CLUSTER, LocalProvider
from services.mcm.reconciler import launch_request

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.timeout(300)]

RANK = 16  # above the rank-8 LoRA buffers basalt's engine used to hard-code


def rank16_lora(out: Path) -> Path:
    """A PEFT LoRA of rank 16 on the tiny model's q_proj and v_proj (small random weights)."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(3)
    sizes = {"q_proj": NUM_HEADS * HEAD_DIM, "v_proj": NUM_KV_HEADS * HEAD_DIM}
    tensors = {}
    for layer in range(NUM_LAYERS):
        for proj, size in sizes.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            a = torch.randn(RANK, HIDDEN_SIZE, generator=gen) * 0.05
            b = torch.randn(size, RANK, generator=gen) * 0.05
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16).contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-llama",
        "r": RANK, "lora_alpha": 2 * RANK, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(sizes), "fan_in_fan_out": False, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "inference_mode": True}))
    return out


async def test_a_deployments_vllm_settings_reach_vllm(
        tmp_path: Path, tiny_model: Path, nats_server: NatsServer) -> None:
    lora = rank16_lora(tmp_path / "rank16")
    dep = Deployment.model_validate({
        "id": "tiny-r16", "model": "tiny", "engine": "vllm", "model_path": str(tiny_model),
        "engine_args": {  # YAML-natural: typed values, dashes or underscores
            "max-model-len": 512, "max_num_seqs": 4, "kv_cache_bytes": 8 * 2**20,
            "heartbeat_interval": 0.5, "drain_timeout": 2,
            "enforce_eager": True, "max_lora_rank": RANK, "max-num-batched-tokens": 1000,
            "seed": 7},
        "loras": [{"name": "rank16", "path": str(lora)}]})
    assert problems(dep.engine, dep.model_path, dep.engine_args) == []
    record = dep.to_record()  # engine args stored as text, as the control plane stores them
    launch = Launch(DeploymentId(dep.id), LOCAL_CLUSTER, ReplicaId("tiny-r16-a"))
    req = launch_request(record, launch, owner="engine-settings-test", nats_url=nats_server.url)
    provider = LocalProvider(tmp_path / "state", grace_s=20.0)
    try:
        await provider.launch(req)
        ready = await provider.wait_ready(req.replica_id, timeout=240.0)
        # The rank-16 adapter loaded at start (at the old rank 8 the replica failed here).
        assert ready["loraAdapters"] == ["rank16"], ready
        async with grpc.aio.insecure_channel(str(ready["grpcAddress"])) as ch:
            stub = runtime_pb2_grpc.RuntimeStub(ch)
            out = [r async for r in stub.Generate(runtime_pb2.GenerateRequest(
                prompt_token_ids=[20, 21, 22, 23], lora_name="rank16",
                sampling=runtime_pb2.SamplingParams(max_tokens=3, ignore_eos=True)))]
        assert sum(len(r.token_ids) for r in out) == 3
        # What vLLM made of the settings, logged once at start from its resolved config.
        log = provider.log_tail(req.replica_id, 200_000)
        line = next(x for x in log.splitlines() if "vllm engine settings" in x)
        effective = line[line.index("effective"):]
        for key, value in (("max_num_batched_tokens", "1000"), ("seed", "7"),
                           ("max_lora_rank", "16"), ("enforce_eager", "[Tt]rue")):
            assert re.search(rf"{key}\W+{value}\b", effective), (key, line)
    finally:
        await provider.close()

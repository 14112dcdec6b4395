"""`basalt bench serve`: vLLM's own `vllm bench serve`, unmodified, against `vllm serve` and
against basalt serving the same model with the same engine settings (does I/O: processes, HTTP).

The two sides run one after the other, in this order, never at once:

1. `vllm serve`: vLLM's OpenAI server on the model, in its own process group (stopped with
   its EngineCore children at the end), with the engine arguments basalt's runtime gives
   AsyncLLM for that deployment. Those are built in one place, `served()`: the deployment
   becomes the control plane's runtime flags (`runtime_args`), parsed by the runtime's own
   `RuntimeSettings` and built by its `make_engine`; the resulting `VllmConfig` is turned into
   `vllm serve` flags by `vllm_serve_args` (`services/runtime/engines/vllm.py` maps the same
   fields to `AsyncEngineArgs`). The KV events basalt turns on are on here too, published to
   an ipc socket nobody reads.
2. basalt: `basalt up --deployment-file FILE` (default deploy/local/tiny.yaml, what `basalt up`
   serves), the load sent at the router's OpenAI door with the stack's inference key
   (`OPENAI_API_KEY`, which vLLM's bench sends as a bearer token).

Per side: the server comes up, one warm-up chat request must answer 200, then one
`vllm bench serve` per load (request rate inf = all at once, then each fixed rate), each
with vLLM's own warm-up request, `--temperature 0` and seed 0 (the same prompts on both
sides). The bench's result JSON (`--save-result`) is parsed; its text is only logged.
vLLM's CLI is started through `bench.serve_shim` (see there why). SIGTERM stops the run
and every server it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.report import machine_line, update_section
from bench.serve_shim import VllmCli
from bench.serve_table import Row, kv_cache_tokens, markdown, parse_rates, parse_result, rate_label

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEPLOYMENT = REPO / "deploy" / "local" / "tiny.yaml"
HEADING = "## Serve: basalt vs `vllm serve` (`basalt bench serve`)"
SIDES = ("vllm", "basalt")  # the order they run in
CHAT = "/v1/chat/completions"


# -- what both sides serve (one place) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    """What both sides serve: the deployment as basalt's runtime configures vLLM for it."""

    name: str  # the model name clients send
    model: str  # the model folder
    engine: dict[str, Any]  # the runtime's VllmConfig, field by field
    loras: dict[str, str]  # adapters loaded at start, name -> folder


def served(deployment_file: Path, model: Path | None = None) -> Served:
    """The file's first deployment the way it reaches vLLM in basalt: the control plane's
    `runtime_args` for it, parsed by the runtime's `RuntimeSettings` (BASALT_RUNTIME_* read as
    the runtime reads them) and built by the runtime's `make_engine`."""
    from basalt import deployfile
    from basalt.config import parse
    from basalt.ids import ReplicaId
    from basalt.weights import local_path
    from services.mcm.core.inventory import DeploymentId
    from services.mcm.core.provider import LaunchRequest, runtime_args
    from services.runtime.config import RuntimeSettings
    from services.runtime.factory import make_engine

    dep = deployfile.load(deployment_file, base_dir=deployment_file.parent).deployments[0]
    if dep.engine != "vllm":
        raise ValueError(f"{deployment_file}: {dep.id} runs on {dep.engine}, not vllm")
    folder = model or Path(dep.model_path or local_path(dep.weights.uri if dep.weights else ""))
    req = LaunchRequest(
        replica_id=ReplicaId("bench"), deployment_id=DeploymentId(dep.id), owner="bench",
        engine="vllm", model_path=str(folder.resolve()), model_name=dep.model,
        nats_url="nats://127.0.0.1:4222", cluster="local", engine_args=dict(dep.engine_args),
        loras={} if model is not None else {x.name: x.path for x in dep.loras})
    settings = parse(RuntimeSettings, runtime_args(req), "services.runtime")
    engine: Any = make_engine(settings, tokenizer=None)
    return Served(dep.model, settings.model, asdict(engine.config), settings.lora_map())


def vllm_serve_args(s: Served, port: int | str, kv_endpoint: str) -> list[str]:
    """`vllm serve` argv for the runtime's VllmConfig `s.engine`: every engine argument the
    runtime gives AsyncEngineArgs (`vllm_settings`), flag for flag, through vLLM's own parser
    (imports vLLM), and the adapters loaded at start."""
    from services.runtime.engines.vllm import VllmConfig, vllm_flags

    args = ["serve", s.model, "--host", "127.0.0.1", "--port", str(port),
            *vllm_flags(VllmConfig(**s.engine), kv_endpoint)]
    if s.loras:
        args += ["--lora-modules", *(f"{n}={p}" for n, p in sorted(s.loras.items()))]
    return args


def bench_args(*, base_url: str, model_name: str, tokenizer: str, rate: float,
               num_prompts: int, input_len: int, output_len: int, result_dir: Path,
               result_file: str) -> list[str]:
    """`vllm bench serve` argv: the random dataset on the chat endpoint, JSON saved."""
    return ["bench", "serve", "--backend", "openai-chat", "--base-url", base_url,
            "--endpoint", CHAT, "--model", model_name, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--num-prompts", str(num_prompts),
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--request-rate", "inf" if rate == float("inf") else f"{rate:g}",
            "--seed", "0", "--temperature", "0", "--num-warmups", "1",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--disable-tqdm", "--save-result", "--save-detailed",
            "--result-dir", str(result_dir), "--result-filename", result_file]


# -- the two sides ---------------------------------------------------------------------------


def _warm_up(base_url: str, model_name: str, key: str | None, timeout: float = 120.0) -> float:
    """One small chat request until it answers 200; returns its seconds (the last try's)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model_name, "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 8}
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            r = httpx.post(base_url + CHAT, json=body, headers=headers, timeout=60.0)
            if r.status_code == 200:
                return time.perf_counter() - t0
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(1.0)
    raise RuntimeError(f"warm-up request to {base_url} never answered 200: {last}")


def _bench(cli: VllmCli, side: str, base_url: str, s: Served, rates: list[float],
           ns: argparse.Namespace, workdir: Path, key: str | None) -> list[Row]:
    rows = []
    env = cli.env({"OPENAI_API_KEY": key} if key else {})
    if not key:
        env.pop("OPENAI_API_KEY", None)
    for rate in rates:
        name = f"{side}-{rate_label(rate).replace(' ', '-').replace('/', '')}.json"
        args = bench_args(base_url=base_url, model_name=s.name, tokenizer=s.model,
                          rate=rate, num_prompts=ns.num_prompts, input_len=ns.input_len,
                          output_len=ns.output_len, result_dir=workdir, result_file=name)
        print(f"  {side}: vllm bench serve at {rate_label(rate)} ...", flush=True)
        with open(workdir / f"{name}.log", "w") as log:
            done = subprocess.run(cli.argv(args), check=False, env=env, cwd=workdir, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=ns.timeout)
        if done.returncode != 0:
            raise RuntimeError(f"vllm bench serve failed ({done.returncode}); see "
                               f"{workdir / (name + '.log')}")
        row = parse_result(side, rate, json.loads((workdir / name).read_text()))
        row.notes = _bench_warnings(workdir / f"{name}.log")
        row.load_1m = os.getloadavg()[0]
        rows.append(row)
        print(f"    {row.request_throughput:.2f} req/s, failed {row.failed}, "
              f"TTFT p50 {row.ttft_p50:.1f} ms, ITL p99 {row.itl_p99:.1f} ms", flush=True)
    return rows


def _bench_warnings(log: Path) -> list[str]:
    return sorted({line.strip() for line in log.read_text(errors="replace").splitlines()
                   if line.startswith(("WARNING: tokenizer mismatch", "WARNING: /tokenize"))})


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM the process group (the server and its EngineCore children), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    proc.wait()


def run_vllm(cli: VllmCli, s: Served, rates: list[float], ns: argparse.Namespace,
             workdir: Path) -> list[Row]:
    from basalt_tools.natsserver import free_port

    port = free_port()
    args = vllm_serve_args(s, port, f"ipc://{workdir / 'vllm-kv-events.sock'}")
    log = workdir / "vllm-serve.log"
    print(f"vllm serve on :{port} (log {log}) ...", flush=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cli.argv(args), env=cli.env(), cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({proc.returncode}); see {log}")
            if time.monotonic() - t0 > ns.start_timeout:
                raise RuntimeError(f"vllm serve not healthy in {ns.start_timeout:.0f}s; see {log}")
            try:
                if httpx.get(base + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        print(f"  healthy after {time.monotonic() - t0:.0f}s; warm-up "
              f"{_warm_up(base, s.name, None):.2f}s", flush=True)
        return _bench(cli, "vllm", base, s, rates, ns, workdir, None)
    finally:
        _stop_group(proc)


def run_basalt(cli: VllmCli, s: Served, rates: list[float], ns: argparse.Namespace,
               workdir: Path) -> list[Row]:
    from bench.chaos import Up

    file = ns.deployment_file
    if ns.model is not None:  # the deployment file's first deployment, on this model
        raw = yaml.safe_load(file.read_text())
        dep = raw["deployments"][0]
        dep.pop("model_path", None)
        dep.pop("loras", None)
        dep["weights"] = {"uri": str(Path(s.model).resolve())}
        file = workdir / "deploy.yaml"
        file.write_text(yaml.safe_dump({"deployments": [dep]}))
    up = Up(workdir / "basalt-state", deployment_file=file)
    print(f"basalt up --deployment-file {file} (state {up.state}) ...", flush=True)
    t0 = time.monotonic()
    up.start(timeout=ns.start_timeout)
    try:
        print(f"  up after {time.monotonic() - t0:.0f}s; warm-up "
              f"{_warm_up(up.http, s.name, up.key):.2f}s", flush=True)
        return _bench(cli, "basalt", up.http, s, rates, ns, workdir, up.key)
    finally:
        up.stop()


# -- the command -----------------------------------------------------------------------------


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="basalt bench serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--rates", type=parse_rates, default=parse_rates("inf,8,4"),
                   help="request rates, comma-separated, in req/s (inf: all at once)")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--only", choices=SIDES, help="run one side only")
    p.add_argument("--deployment-file", type=Path, default=DEFAULT_DEPLOYMENT,
                   help="what both sides serve: its first deployment (a vllm one)")
    p.add_argument("--model", type=Path, default=None,
                   help="model folder (default: the deployment's weights; the tiny model)")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per bench run")
    p.add_argument("--workdir", type=Path, help="logs and bench JSON (default: temporary)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"),
                   help="update the Serve section of this file ('' to skip; never with --only)")
    return p.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: every server this run started is stopped


def main(argv: list[str]) -> int:
    ns = _args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from basalt_tools.tinymodel import make_tiny_model

    make_tiny_model(REPO / ".basalt" / "models" / "tiny-llama")  # the default deployment's
    temporary = ns.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="basalt-bench-serve-") if temporary
                   else ns.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    s = served(ns.deployment_file, ns.model)
    cli = VllmCli(workdir)
    rows: list[Row] = []
    shown = vllm_serve_args(s, "PORT", "ipc://WORKDIR/vllm-kv-events.sock")
    serve_args = [a.replace(f"{REPO}/", "") for a in shown]  # paths as the repo names them
    try:
        for side in SIDES:
            if ns.only in (None, side):
                run = run_vllm if side == "vllm" else run_basalt
                rows += run(cli, s, ns.rates, ns, workdir)
        logs = [("vllm", workdir / "vllm-serve.log"),
                *(("basalt", f) for f in (workdir / "basalt-state" / "mcm").glob("*.log"))]
        kv = {side: kv_cache_tokens(log.read_text(errors="replace"))
              for side, log in logs if log.is_file()}
    except BaseException:
        print(f"basalt bench serve: failed; logs and bench output kept in {workdir}",
              file=sys.stderr)
        raise
    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)
    cmd = shlex.join(["basalt", "bench", "serve", *argv])
    text = markdown(rows, cmd=cmd, machine=machine_line(), vllm=cli.describe(),
                    serve_args=serve_args, engine=s.engine, loras=s.loras,
                    num_prompts=ns.num_prompts, input_len=ns.input_len,
                    output_len=ns.output_len, kv_tokens=kv)
    print("\n" + text)
    if ns.out:
        ns.out.write_text(json.dumps({"command": cmd, "engine": s.engine,
                                      "vllm_serve_args": serve_args,
                                      "rows": [r.as_dict() for r in rows]}, indent=1))
    if ns.markdown and ns.only is None:
        update_section(Path(ns.markdown), HEADING, text)
    return 0

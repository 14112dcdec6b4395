"""`basalt bench chaos`: kill -9 each part of the local stack under a steady load from the
unmodified `openai` client, and measure what a user sees (does I/O: processes, HTTP, NATS).

The stack is `basalt up --engine sim` as a subprocess (free ports, state in a temp dir); the
NATS-node fault runs against `basalt up --nats-cluster 3`. Faults, in order:

- `runtime`: kill -9 one replica (mcm starts a new one; the router retries another replica);
- `router`: kill -9 the router; this driver starts it again with the argv, env and cwd read
  from /proc (`basalt up` does not supervise it);
- `mcm`: the same for the control plane (a restarted mcm adopts its replicas);
- `nats`: kill -9 nats-server, started again at once on its store;
- `nats-node`: kill -9 one node of the 3-node cluster (a node other than node 0), started
  again on its store.

Per fault: requests sent / ok / failed (by error class or status) / cut mid-stream (a stream
that had sent chunks and then ended with an error event or exception) / hung (no end within
the per-request timeout); seconds from the fault until requests succeed again; whether the
fleet got back to full strength; and state lost: deployments (the deployments API), API keys
(the keys bucket, as `basalt keys list` reads it), replica records (a live replica without a
record) and scale commands (the applied markers and the scale stream), before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from basalt import apikeys, bus, subjects
from basalt.pb import events_pb2
from basalt_tools.natsserver import free_ports

REPO = Path(__file__).resolve().parent.parent
MODEL = "tiny-llama"
DEPLOYMENT = "tiny-llama-sim"
FULL = ("runtime", "router", "mcm", "nats", "nats-node")
SHORT = ("runtime", "router", "nats")
CLUSTER_FAULTS = frozenset({"nats-node"})


# -- the stack -----------------------------------------------------------------------------


@dataclass
class Up:
    """`basalt up --engine sim` as a subprocess, and the processes this driver restarted."""

    state: Path
    cluster: int = 1
    proc: subprocess.Popen[str] | None = None
    ports: list[int] = field(default_factory=list)
    key: str = ""
    management_key: str = ""
    restarted: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    banner: str = ""
    # Deploy this file instead of the sim default.
    deployment_file: Path | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}"

    @property
    def mcm(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    def start(self, timeout: float = 180.0) -> None:
        from basalt_tools.tinymodel import make_tiny_model

        model = make_tiny_model(REPO / ".basalt" / "models" / "tiny-llama")  # the deploy file's
        (self.state / "models").mkdir(parents=True, exist_ok=True)
        link = self.state / "models" / "tiny-llama"
        if not link.exists():
            link.symlink_to(model)
        self.ports = free_ports(4)
        cmd = [sys.executable, "-m", "basalt_cli", "up", "--engine", "sim",
               "--state-dir", str(self.state), "--nats-port", str(self.ports[0]),
               "--http-port", str(self.ports[1]), "--grpc-port", str(self.ports[2]),
               "--mcm-port", str(self.ports[3])]
        if self.cluster > 1:
            cmd += ["--nats-cluster", str(self.cluster)]
        if self.deployment_file is not None:
            cmd += ["--deployment-file", str(self.deployment_file)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        self.banner = "".join(lines)
        found = re.search(r"API key:\s+(bsk_\S+)", self.banner)
        if not found:
            self.stop()
            raise RuntimeError(f"basalt up did not come up:\n{self.banner}")
        self.key = (self.state / "api-key").read_text().strip()
        self.management_key = (self.state / "management-key").read_text().strip()
        # Drain the rest of its output so it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    @property
    def nats_url(self) -> str:
        conf = sorted((self.state / "nats").glob("**/nats-server.conf"))
        ports = []
        for c in conf:
            m = re.search(r"^port: (\d+)$", c.read_text(), re.MULTILINE)
            if m:
                ports.append(int(m.group(1)))
        return ",".join(f"nats://127.0.0.1:{p}" for p in ports)

    def auth(self, role: str) -> bus.NatsAuth:
        return bus.NatsAuth(str(self.state / "secrets" / "nats" / f"{role}.nk"))

    def owner(self) -> str:
        return (self.state / "mcm" / "owner").read_text().strip()

    def stop(self) -> None:
        """The restarted router and mcm first (mcm stops its replicas), then `basalt up`,
        then a restarted nats-server last."""
        for name in ("router", "mcm"):
            _terminate(self.restarted.pop(name, None), 60)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for name in list(self.restarted):
            _terminate(self.restarted.pop(name), 10)
        # Anything left of this stack (a replica of a killed mcm, say): by pid, ours only.
        for pid in _pids(lambda argv: any(str(self.state) in a for a in argv)):
            _kill(pid)


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return []
    return [] if state == "Z" else raw.decode(errors="replace").split("\0")[:-1]


def _pids(match: Any) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            argv = _argv(int(entry.name))
            if argv and match(argv):
                out.append(int(entry.name))
    return sorted(out)


def runtimes(owner: str) -> dict[int, str]:
    """Live `services.runtime` processes of this owner: pid -> replica id."""
    out = {}
    for pid in _pids(lambda a: "services.runtime" in a):
        flags = dict(itertools.pairwise(_argv(pid)))
        if flags.get("--owner") == owner:
            out[pid] = flags.get("--replica-id", "")
    return out


def _service_pid(up: Up, module: str) -> int:
    found = _pids(lambda a: module in a and any(str(up.state) in x for x in a))
    if len(found) != 1:
        raise RuntimeError(f"expected one {module} process of this stack, found {found}")
    return found[0]


def _nats_pid(up: Up, node: str = "") -> int:
    def match(a: list[str]) -> bool:
        return (Path(a[0]).name == "nats-server" and any(str(up.state) in x for x in a)
                and (not node or any(f"/{node}/" in x for x in a)))
    found = _pids(match)
    if len(found) != 1:
        raise RuntimeError(f"expected one nats-server {node} of this stack, found {found}")
    return found[0]


def kill_and_restart(up: Up, name: str, pid: int, log: Path) -> None:
    """kill -9 `pid` and start the same command again (its argv, env and cwd from /proc)."""
    argv = _argv(pid)
    env = dict(e.split("=", 1) for e in
               Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
               if "=" in e)
    cwd = os.readlink(f"/proc/{pid}/cwd")
    os.kill(pid, signal.SIGKILL)
    while _argv(pid):  # until it is gone (its parent reaps it, or it is a zombie)
        time.sleep(0.01)
    old = up.restarted.pop(name, None)
    if old is not None:
        old.wait()
    with open(log, "ab") as out:
        up.restarted[name] = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)


# -- the load ------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    start: float
    end: float
    stream: bool
    result: str  # ok | failed | cut | hung | truncated
    error: str = ""
    chunks: int = 0


def _error_name(e: BaseException) -> str:
    status = getattr(e, "status_code", None)
    name = type(e).__name__ + (f" {status}" if status else "")
    cause = e.__cause__ or e.__context__
    if cause is not None and not status:
        name += f" ({type(cause).__name__})"
    return name


class Load:
    """`workers` loops, alternating streaming and non-streaming chat completions."""

    def __init__(self, up: Up, workers: int, timeout_s: float, max_tokens: int,
                 stream_tokens: int) -> None:
        import openai

        self.client = openai.AsyncOpenAI(base_url=f"{up.http}/v1", api_key=up.key,
                                         max_retries=0, timeout=timeout_s)
        self.workers = workers
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.stream_tokens = stream_tokens
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.current: dict[int, float] = {}  # worker -> start of its request in flight

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()

    async def warm(self, timeout: float) -> None:
        """Until every worker has had a success (the router's first requests load its
        tokenizer), plus `timeout` at most."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = self.outcomes[-2 * self.workers:]
            if len(recent) == 2 * self.workers and all(o.result == "ok" for o in recent):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the load did not get going in {timeout:.0f}s: "
                           f"{Counter(o.result + ' ' + o.error for o in self.outcomes)}")

    async def _worker(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            stream = (n + i) % 2 == 0
            n += 1
            prompt = f"worker {i} request {n}: tell me something"
            t0 = time.monotonic()
            self.current[i] = t0
            try:
                out = await asyncio.wait_for(self._one(prompt, stream, t0), self.timeout_s + 5)
            except TimeoutError:
                out = Outcome(t0, time.monotonic(), stream, "hung", "no end in time")
            self.outcomes.append(out)
            self.current.pop(i, None)
            if out.result != "ok":
                await asyncio.sleep(0.05)  # a refused connection answers at once: pace it

    async def _one(self, prompt: str, stream: bool, t0: float) -> Outcome:
        messages = [{"role": "user", "content": prompt}]
        chunks = 0
        try:
            if not stream:
                r = await self.client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=self.max_tokens)  # type: ignore[arg-type]
                ok = bool(r.choices) and r.choices[0].finish_reason is not None
                return Outcome(t0, time.monotonic(), False, "ok" if ok else "truncated")
            s = await self.client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=self.stream_tokens,  # type: ignore[arg-type]
                stream=True)
            finished = False
            async for c in s:  # type: ignore[union-attr]
                chunks += 1
                if c.choices and c.choices[0].finish_reason is not None:
                    finished = True
            return Outcome(t0, time.monotonic(), True, "ok" if finished else "truncated",
                           chunks=chunks)
        except Exception as e:  # noqa: BLE001 - every failure is a measured outcome
            if isinstance(e, TimeoutError) or "Timeout" in type(e).__name__:
                return Outcome(t0, time.monotonic(), stream, "hung", _error_name(e), chunks)
            return Outcome(t0, time.monotonic(), stream, "cut" if chunks else "failed",
                           _error_name(e), chunks)


# -- state ---------------------------------------------------------------------------------


async def snapshot(up: Up) -> dict[str, Any]:
    """What must survive every fault: deployments, API keys, replica records of live
    replicas, scale commands (applied markers and the stream's messages)."""
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10) as h:
        r = await h.get(f"{up.mcm}/v1/models/{MODEL}/deployments",
                        headers={"Authorization": f"Bearer {up.management_key}"})
        r.raise_for_status()
        out["deployments"] = {d["id"]: {k: d[k] for k in (
            "status", "desired_replicas", "environments", "generation", "spec")}
            for d in r.json()["deployments"]}
    url = up.nats_url
    nc = await bus.connect(url, name="chaos", auth=up.auth("admin"))
    try:
        out["keys"] = sorted(k.key_id for k in await apikeys.list_keys(nc))
        recs = await bus.kv_items(await bus.replicas_bucket(nc))
        out["replicas"] = {k: events_pb2.ReplicaState.Name(
            events_pb2.ReplicaRecord.FromString(v).state) for k, v in recs.items()}
    finally:
        await nc.close()
    nc = await bus.connect(url, name="chaos", auth=up.auth("mcm"))
    try:
        applied = await bus.kv_items(await bus.kv_bucket(nc, subjects.SCALE_APPLIED_BUCKET))
        out["scale_applied"] = sorted(applied)
        js = nc.jetstream()
        info = await js.stream_info(subjects.SCALE_STREAM)
        out["scale_stream_msgs"] = info.state.messages
        out["stream_replicas"] = {subjects.SCALE_STREAM: info.config.num_replicas or 1}
        for b in (subjects.DEPLOYMENTS_BUCKET, subjects.ENVIRONMENTS_BUCKET,
                  subjects.API_KEYS_BUCKET, subjects.REPLICAS_BUCKET,
                  subjects.SCALE_APPLIED_BUCKET):
            cfg = (await js.stream_info(f"KV_{b}")).config
            out["stream_replicas"][b] = cfg.num_replicas or 1
    finally:
        await nc.close()
    out["live_replicas"] = sorted(runtimes(up.owner()).values())
    return out


async def _try_snapshot(up: Up) -> dict[str, Any] | None:
    try:
        return await asyncio.wait_for(snapshot(up), 10)
    except Exception:  # noqa: BLE001 - not readable yet: the caller polls again
        return None


def lost(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What `before` had that `after` has not. Replica ids change when a replica is killed;
    a live replica without a record is what is lost."""
    out = []
    for dep, view in before["deployments"].items():
        now = after["deployments"].get(dep)
        if now is None:
            out.append(f"deployment {dep}")
        elif now != view:
            out.append(f"deployment {dep} changed")
    out += [f"key {k}" for k in sorted(set(before["keys"]) - set(after["keys"]))]
    out += [f"replica record {r}" for r in after["live_replicas"]
            if after["replicas"].get(r) != "REPLICA_STATE_READY"]
    out += [f"scale marker {d}" for d in sorted(set(before["scale_applied"])
                                                 - set(after["scale_applied"]))]
    if after["scale_stream_msgs"] < before["scale_stream_msgs"]:
        out.append(f"scale commands {before['scale_stream_msgs']} -> "
                   f"{after['scale_stream_msgs']}")
    return out


# -- faults --------------------------------------------------------------------------------


@dataclass
class FaultResult:
    fault: str
    stack: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    failed_accepted: int = 0  # failed after the connection was accepted, before streaming
    cut: int = 0
    cut_with_error: int = 0
    hung: int = 0
    truncated: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    recover_s: float = 0.0
    full_strength_s: float | None = None
    process_up_s: float | None = None  # a restarted process listens again
    in_flight: list[dict[str, Any]] = field(default_factory=list)  # requests the fault hit
    stream_replicas: dict[str, int] = field(default_factory=dict)  # nodes holding each
    state_lost: list[str] = field(default_factory=list)
    note: str = ""


def inject(up: Up, fault: str) -> str:
    logs = up.state / "logs"
    if fault == "runtime":
        pid, rid = _busiest(runtimes(up.owner()))
        _kill(pid)
        return f"replica {rid} (pid {pid}), the busiest"
    if fault in ("router", "mcm"):
        pid = _service_pid(up, f"services.{fault}")
        kill_and_restart(up, fault, pid, logs / f"{fault}.log")
        return f"{fault} pid {pid}, restarted"
    if fault == "nats":
        pid = _nats_pid(up)
        kill_and_restart(up, "nats", pid, logs / "nats.log")
        return f"nats-server pid {pid}, restarted on its store"
    if fault == "nats-node":
        pid = _nats_pid(up, "node-1")
        kill_and_restart(up, "nats-node", pid, logs / "nats-1.log")
        return f"node 1 of 3 (pid {pid}), restarted on its store"
    raise ValueError(f"unknown fault {fault!r}; faults: {', '.join(FULL)}")


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busiest(procs: dict[int, str]) -> tuple[int, str]:
    """The replica that used the most CPU over the last 0.5 s: the one serving the load (the
    kv policy sends most of it to one replica), so its kill cuts streams."""
    if not procs:
        raise RuntimeError("no runtime of this stack is running")
    before = {pid: _cpu_ticks(pid) for pid in procs}
    time.sleep(0.5)
    pid = max(procs, key=lambda p: (_cpu_ticks(p) - before[p], -p))
    return pid, procs[pid]


def _connect_refused(o: Outcome) -> bool:
    return "ConnectError" in o.error or "ConnectionRefused" in o.error


def summarize(fault: str, stack: str, outs: list[Outcome], t_fault: float) -> FaultResult:
    res = FaultResult(fault, stack, sent=len(outs))
    errors: Counter[str] = Counter()
    for o in outs:
        if o.result == "ok":
            res.ok += 1
            continue
        errors[f"{o.result}: {o.error}" if o.error else o.result] += 1
        if o.result == "failed":
            res.failed += 1
            res.failed_accepted += not _connect_refused(o)
        elif o.result == "cut":
            res.cut += 1
            res.cut_with_error += 1  # it ended with an error event or exception, in time
        elif o.result == "hung":
            res.hung += 1
            res.cut += o.chunks > 0
        else:
            res.truncated += 1
    res.errors = dict(errors.most_common())
    res.in_flight = [{"stream": o.stream, "result": o.result, "error": o.error,
                      "chunks": o.chunks, "started_s": round(o.start - t_fault, 3),
                      "ended_s": round(o.end - t_fault, 3)}
                     for o in outs if o.start <= t_fault <= o.end]
    bad = [o for o in outs if o.result != "ok"]
    if bad:
        last = max(o.start for o in bad)
        after = [o for o in outs if o.result == "ok" and o.start > last]
        res.recover_s = (min(o.end for o in after) - t_fault) if after else float("inf")
    return res


async def run_fault(up: Up, load: Load, fault: str, stack: str, pre_s: float,
                    settle_s: float, window_s: float) -> FaultResult:
    before = await snapshot(up)
    want = before["deployments"][DEPLOYMENT]["desired_replicas"]
    t_begin = time.monotonic()
    await asyncio.sleep(pre_s)
    t_fault, wall_fault = time.monotonic(), time.time()
    note = await asyncio.to_thread(inject, up, fault)
    listening: asyncio.Task[float] | None = None
    if fault in ("router", "mcm"):  # it wrote its ready file again: serving
        listening = asyncio.create_task(
            _rewritten(up.state / f"{fault}.ready.json", wall_fault, t_fault))
    elif fault in ("nats", "nats-node"):
        port = up.ports[0] if fault == "nats" else _node_port(up, 1)
        listening = asyncio.create_task(_listening(port, t_fault)) if port else None
    # Until requests have succeeded for settle_s with nothing failing, and the fleet is back.
    full: float | None = None
    after: dict[str, Any] | None = None
    while time.monotonic() - t_fault < window_s:
        await asyncio.sleep(0.25)
        now = time.monotonic()
        recent = [o for o in load.outcomes if o.start > t_fault]
        bad = [o.start for o in recent if o.result != "ok"]
        good_since = [o for o in recent if o.result == "ok" and o.start > max(bad, default=0)]
        if full is None:
            snap = await _try_snapshot(up)
            ready = [r for r in (snap or {}).get("live_replicas", [])
                     if snap and snap["replicas"].get(r) == "REPLICA_STATE_READY"]
            if snap and len(ready) >= want and len(snap["live_replicas"]) >= want:
                full, after = time.monotonic() - t_fault, snap
        settled = not any(t <= t_fault for t in load.current.values())
        if (full is not None and good_since and now - good_since[0].start >= settle_s
                and settled):
            break
    t_end = time.monotonic()
    while any(t < t_end for t in load.current.values()):  # the window's last requests end
        await asyncio.sleep(0.05)
    outs = [o for o in load.outcomes if t_begin <= o.start < t_end]
    res = summarize(fault, stack, outs, t_fault)
    res.full_strength_s = full
    if listening is not None:
        res.process_up_s = listening.result() if listening.done() else None
        listening.cancel()
    res.note = note
    if after is None:
        after = await _try_snapshot(up)
    res.state_lost = lost(before, after) if after else ["state unreadable at the end"]
    res.stream_replicas = before["stream_replicas"]
    return res


def _node_port(up: Up, i: int) -> int | None:
    urls = up.nats_url.split(",")
    return int(urls[i].rsplit(":", 1)[1]) if i < len(urls) else None


async def _rewritten(path: Path, wall: float, t0: float) -> float:
    """Seconds from t0 until `path` is written after wall time `wall`."""
    while True:
        try:
            if path.stat().st_mtime > wall:
                return time.monotonic() - t0
        except OSError:
            pass
        await asyncio.sleep(0.05)


async def _listening(port: int, t0: float) -> float:
    """Seconds from t0 until something accepts on the port again."""
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            # A connect to a free local port can connect to itself (TCP simultaneous open).
            me, peer = w.get_extra_info("sockname"), w.get_extra_info("peername")
            w.close()
            if me != peer:
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        except OSError:
            await asyncio.sleep(0.05)


async def _prepare(up: Up) -> None:
    """A scale command on the stream (the same count), so its survival can be checked."""
    async with httpx.AsyncClient(timeout=20) as h:
        r = await h.get(f"{up.mcm}/v1/models/{MODEL}/deployments/{DEPLOYMENT}",
                        headers={"Authorization": f"Bearer {up.management_key}"})
        r.raise_for_status()
        n = r.json()["desired_replicas"]
        r = await h.post(f"{up.mcm}/v1/models/{MODEL}/deployments/{DEPLOYMENT}/scale",
                         json={"replicas": n},
                         headers={"Authorization": f"Bearer {up.management_key}"})
        r.raise_for_status()


async def _run_stack(up: Up, faults: list[str], stack: str, args: argparse.Namespace,
                     results: list[FaultResult]) -> None:
    await _prepare(up)
    load = Load(up, args.workers, args.request_timeout, args.max_tokens, args.stream_tokens)
    load.start()
    try:
        await load.warm(60)
        await asyncio.sleep(args.warmup)
        for fault in faults:
            t = time.monotonic()
            res = await run_fault(up, load, fault, stack, args.pre, args.settle, args.window)
            results.append(res)
            print(f"  {fault}: {res.ok}/{res.sent} ok, recover {res.recover_s:.2f}s, "
                  f"lost {res.state_lost or 'nothing'} ({time.monotonic() - t:.0f}s)",
                  flush=True)
    finally:
        await load.stop()


def run(faults: list[str], args: argparse.Namespace) -> list[FaultResult]:
    """Each group of faults on its own stack: one server, then the 3-node cluster."""
    results: list[FaultResult] = []
    groups = [(1, [f for f in faults if f not in CLUSTER_FAULTS]),
              (3, [f for f in faults if f in CLUSTER_FAULTS])]
    for size, group in groups:
        if not group:
            continue
        stack = "1 nats-server" if size == 1 else f"{size}-node NATS cluster"
        with tempfile.TemporaryDirectory(prefix="basalt-chaos-") as tmp:
            up = Up(Path(tmp) / "state", cluster=size)
            t = time.monotonic()
            print(f"starting basalt up --engine sim ({stack}) ...", flush=True)
            try:
                try:
                    up.start()
                except RuntimeError as e:  # reported as that group's result, not a crash
                    print(f"  {e}", flush=True)
                    results += [FaultResult(f, stack, recover_s=float("inf"),
                                            state_lost=["stack did not start"],
                                            note=str(e)[-400:]) for f in group]
                    continue
                print(f"  up in {time.monotonic() - t:.0f}s", flush=True)
                asyncio.run(_run_stack(up, group, stack, args, results))
            finally:
                up.stop()
    return results


def table(results: list[FaultResult]) -> str:
    head = ("| fault | stack | sent | ok | failed (accepted) | cut mid-stream (ended with an "
            "error) | hung | recover (s) | process up (s) | full strength (s) | state lost | "
            "errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        full = "—" if r.full_strength_s is None else f"{r.full_strength_s:.1f}"
        proc = "—" if r.process_up_s is None else f"{r.process_up_s:.1f}"
        rf = min(r.stream_replicas.values(), default=1)
        errs = "; ".join(f"{k} ×{v}" for k, v in r.errors.items()) or "—"
        rows.append(f"| {r.fault} | {r.stack}, R{rf} | {r.sent} | {r.ok} | {r.failed} "
                    f"({r.failed_accepted}) | {r.cut} ({r.cut_with_error}) | {r.hung} | "
                    f"{r.recover_s:.2f} | {proc} | {full} | {', '.join(r.state_lost) or 'nothing'} | "
                    f"{errs} |")
    return "\n".join([head, *rows])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="basalt bench chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true",
                   help=f"only {', '.join(SHORT)} (what `make test` runs)")
    p.add_argument("--faults", help=f"comma-separated subset of {','.join(FULL)}")
    p.add_argument("--engine", choices=["sim"], default="sim")
    p.add_argument("--workers", type=int, default=4, help="concurrent clients")
    p.add_argument("--max-tokens", type=int, default=8, help="per non-streaming request")
    p.add_argument("--table", type=Path, help="also write the table (markdown) here")
    p.add_argument("--stream-tokens", type=int, default=128,
                   help="per streaming request (long enough for a fault to cut some)")
    p.add_argument("--request-timeout", type=float, default=15.0,
                   help="a request not ended by then counts as hung")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--pre", type=float, default=2.0, help="load before each fault (s)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds of only successes that end a fault's window")
    p.add_argument("--window", type=float, default=40.0, help="longest window per fault (s)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    faults = args.faults.split(",") if args.faults else list(SHORT if args.short else FULL)
    t = time.monotonic()
    results = run(faults, args)
    print(table(results))
    if args.table:
        args.table.write_text(table(results) + "\n")
    print(f"total {time.monotonic() - t:.0f}s")
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2,
                                       default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The tokenizer of each deployment's model, loaded once from its files, and tokenizing off the
event loop (does file I/O; starts one helper process for large prompts).

Where a prompt is tokenized:
- short ones (under `INLINE_CHARS` characters) on the event loop: they take less time
  (tens of µs) than the hand-off to a thread would;
- longer ones (under `process_chars`) in a worker thread. A fast tokenizer holds
  the GIL while it builds the Python list of ids (tens of ms for a megabyte of text), so a
  thread alone would stall every stream and /health for that long;
- long ones in a helper process (one per router process, started once the router serves;
  until it has loaded a model's tokenizer, that model's long prompts go to a thread), which
  sends back the ids packed as uint32 bytes: this process only copies bytes, and its event
  loop keeps answering. The helper dies with the router.
Both give the ids as `array('I')`, the packed form the router hashes and sends to replicas.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from array import array
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from basalt.lifeline import die_with_parent
from basalt.log import get_logger
from basalt.pb import deploy_pb2
from basalt.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from basalt.weights import local_path

log = get_logger(__name__)

# Prompts of at least this many characters are tokenized in the helper process.
DEFAULT_PROCESS_CHARS = 32_768
# Prompts under this many characters are tokenized on the event loop.
INLINE_CHARS = 1024
Messages = list[dict[str, str]]


def tokenizer_dir(dep: deploy_pb2.DeploymentRecord) -> str:
    """Where the router reads a deployment's tokenizer: its model folder, or the folder its
    weights come from when that is on this host. A remote weights source (HTTP, the Hub, a
    bucket) needs `model_path` naming a folder with the tokenizer files for now."""
    spec = dep.spec
    uri = spec.weights.uri if spec.HasField("weights") else ""
    local = local_path(uri)
    if spec.engine != "python" and spec.model_path:
        return spec.model_path
    return local or spec.model_path


def _has_files(path: str) -> bool:
    return bool(path) and (Path(path) / "tokenizer.json").exists()


def _warm(tok: Tokenizer) -> None:
    """One chat template and one encode: their first calls compile the template and build
    caches (tens of ms), which the first request would otherwise pay."""
    try:
        tok.apply_chat_template([{"role": "user", "content": "warm up"}])
        tok.encode("warm up")
    except Exception as e:  # noqa: BLE001 - a model without a chat template still serves
        log.info("tokenizer_warmup_skipped", error=str(e))


def _ids(tok: Tokenizer, text: str | None, messages: Messages | None) -> array[int]:
    ids = tok.apply_chat_template(messages) if messages is not None else tok.encode(text or "")
    return array("I", ids)


# -- in the helper process ---------------------------------------------------------------
_CHILD: dict[str, Tokenizer] = {}


def _child_tokenize(path: str, text: str | None, messages: Messages | None) -> bytes:
    """In the helper process: the ids as packed uint32 bytes (its tokenizers cached by path)."""
    tok = _CHILD.get(path)
    if tok is None:
        tok = _CHILD[path] = load_tokenizer(path)
        _warm(tok)
    return _ids(tok, text, messages).tobytes()


def _child_init() -> None:
    """In the helper process: die with the router, so a router killed with SIGKILL leaves no
    helper behind (not Linux: the helper exits when its pipe closes)."""
    die_with_parent(signal.SIGKILL)


def _child_load(path: str) -> None:
    _child_tokenize(path, "warm up", None)


# -- in the router -----------------------------------------------------------------------
class Tokenizers:
    def __init__(self, process_chars: int = DEFAULT_PROCESS_CHARS) -> None:
        self._by_path: dict[str, Tokenizer] = {}
        self._bytes = ByteTokenizer()
        self._loading = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.process_chars = process_chars  # 0: never use the helper process
        self._pool: ProcessPoolExecutor | None = None
        self._helper_on = False  # set by start_helper, once the router serves
        self._in_helper: set[str] = set()  # tokenizer paths the helper has loaded

    def for_deployment(self, dep: deploy_pb2.DeploymentRecord) -> Tokenizer:
        """The model's own tokenizer; a byte tokenizer for models with no tokenizer files
        (the simulator), matching what the runtime does."""
        path = tokenizer_dir(dep)
        found = self._by_path.get(path)
        if found is None:
            found = load_tokenizer(path) if _has_files(path) else self._bytes
            _warm(found)
            self._by_path[path] = found
        return found

    async def get(self, dep: deploy_pb2.DeploymentRecord) -> Tokenizer:
        """`for_deployment`, loading a model's tokenizer in a thread the first time, so the
        event loop (and every stream on it) does not stall for the load."""
        found = self._by_path.get(tokenizer_dir(dep))
        if found is not None:
            return found
        async with self._loading:  # one load at a time: transformers' first import is not
            return await asyncio.to_thread(self.for_deployment, dep)  # thread-safe

    async def encode(self, dep: deploy_pb2.DeploymentRecord, text: str) -> array[int]:
        """`text`'s ids, off the event loop (see the module docstring for where)."""
        return await self._tokenize(dep, text, None, len(text))

    async def chat(self, dep: deploy_pb2.DeploymentRecord, messages: Messages) -> array[int]:
        """The chat template's ids for `messages`, off the event loop."""
        chars = sum(len(m.get("content") or "") for m in messages)
        return await self._tokenize(dep, None, messages, chars)

    async def _tokenize(self, dep: deploy_pb2.DeploymentRecord, text: str | None,
                        messages: Messages | None, chars: int) -> array[int]:
        tok = await self.get(dep)
        path = tokenizer_dir(dep)
        if (self.process_chars and chars >= self.process_chars and tok is not self._bytes
                and path in self._in_helper):
            try:
                raw = await asyncio.get_running_loop().run_in_executor(
                    self._helper(), _child_tokenize, path, text, messages)
            except BrokenProcessPool:  # the helper died (killed, out of memory): a new one
                log.warning("tokenizer_process_died")  # loads again; this prompt in a thread
                self._pool = None
                self._in_helper.clear()
                self._background(self._load_in_helper(path))
            else:
                out = array("I")
                out.frombytes(raw)
                return out
        if chars < INLINE_CHARS:
            return _ids(tok, text, messages)
        return await asyncio.to_thread(_ids, tok, text, messages)

    def _helper(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fresh interpreter (forking a process with threads and an event loop
            # is unsafe).
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_child_init)
        return self._pool

    def warm(self, dep: deploy_pb2.DeploymentRecord) -> None:
        """Load a deployment's tokenizer in the background when the router first sees it (and
        in the helper process), so its first request does not pay the load (seconds:
        transformers' import included)."""
        if tokenizer_dir(dep) in self._by_path:
            return
        self._background(self.load(dep))

    async def load(self, dep: deploy_pb2.DeploymentRecord) -> None:
        """Load (and warm) a deployment's tokenizer here; in the helper process too once the
        helper is started (`start_helper`), in the background."""
        try:
            await self.get(dep)
        except Exception as e:  # noqa: BLE001 - a bad path is answered per request later
            log.warning("tokenizer_load_failed", deployment=dep.id, error=str(e))
            return
        path = tokenizer_dir(dep)
        if self._helper_on and self.process_chars and _has_files(path):
            self._background(self._load_in_helper(path))

    def start_helper(self, deps: list[deploy_pb2.DeploymentRecord]) -> None:
        """Start the helper process and load `deps`' tokenizers in it, in the background.
        Called once the router is serving, so the helper's start (seconds of imports) never
        delays the router's own; until a tokenizer is loaded there, its long prompts are
        tokenized in a thread."""
        self._helper_on = True
        for path in {tokenizer_dir(d) for d in deps}:
            if self.process_chars and _has_files(path):
                self._background(self._load_in_helper(path))

    async def _load_in_helper(self, path: str) -> None:
        if path in self._in_helper:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._helper(), _child_load, path)
        except Exception as e:  # noqa: BLE001 - long prompts stay in threads
            log.warning("tokenizer_helper_load_failed", path=path, error=str(e))
            return
        self._in_helper.add(path)
        log.info("tokenizer_helper_loaded", path=path)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stop the helper process (requests still in it are cancelled)."""
        for task in self._tasks:
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

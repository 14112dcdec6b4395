"""The unmodified tritonclient.grpc against a KServe v2 server, from a spawned helper process.

tritonclient and basalt.pb.kserve_pb2 register the same `inference.*` protobuf symbols, so they
cannot share a process. `TritonHelper` runs the `client_*` functions below in a spawned process
that imports only this module; nothing here imports basalt.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

# An input spec, built into a tritonclient InferInput in the helper: (name, datatype, values, shape)
Spec = tuple[str, str, list[Any], list[int]]
Headers = dict[str, str] | None


def text(prompt: str, shape: list[int] | None = None) -> Spec:
    return ("text_input", "BYTES", [prompt], shape or [1])


class TritonHelper:
    """Runs a `client_*` function in the helper process and returns its result."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._pool.submit(_run, fn, args, kwargs).result(timeout=120)

    def close(self) -> None:
        self._pool.shutdown()


# ---- run in the helper process ---------------------------------------------------------------


def _run(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """fn's result; its exception as a RuntimeError (tritonclient's own cannot be unpickled)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"{fn.__name__}: {type(e).__name__}: {e}") from None


def _inputs(specs: list[Spec]) -> list[Any]:
    import numpy as np
    import tritonclient.grpc as tc

    dtypes = {"BYTES": object, "BOOL": bool, "INT32": np.int32, "UINT64": np.uint64,
              "INT64": np.int64, "FP32": np.float32}  # fmt: skip
    out = []
    for name, datatype, values, shape in specs:
        tensor = tc.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(np.array(values, dtype=dtypes[datatype]).reshape(shape))
        out.append(tensor)
    return out


def _refused(e: Any) -> dict[str, Any]:
    return {"status": str(e.status()), "message": e.message()}


def client_health(address: str, model: str, headers: Headers = None) -> dict[str, Any]:
    """Health and metadata as tritonclient reports them, or the refusal of the first call."""
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    c = tc.InferenceServerClient(address)
    try:
        live = c.is_server_live(headers=headers)
        meta = c.get_model_metadata(model, headers=headers)
        return {
            "live": live,
            "ready": c.is_server_ready(headers=headers),
            "model_ready": c.is_model_ready(model, headers=headers),
            "server": c.get_server_metadata(headers=headers).name,
            "platform": meta.platform,
            "inputs": {t.name: t.datatype for t in meta.inputs},
            "outputs": {t.name: t.datatype for t in meta.outputs},
        }
    except InferenceServerException as e:
        return _refused(e)


def client_model_ready(address: str, names: list[str], headers: Headers = None) -> dict[str, bool]:
    import tritonclient.grpc as tc

    c = tc.InferenceServerClient(address)
    return {name: c.is_model_ready(name, headers=headers) for name in names}


def client_wait_model_ready(
    address: str, names: list[str], timeout_s: float = 30.0, headers: Headers = None
) -> dict[str, bool]:
    """Poll is_model_ready until every name is ready or the time is up; the last answers."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ready = client_model_ready(address, names, headers)
        except Exception:  # noqa: BLE001  (the server is not up yet)
            ready = dict.fromkeys(names, False)
        if all(ready.values()) or time.monotonic() > deadline:
            return ready
        time.sleep(0.2)


def client_infer(
    address: str,
    model: str,
    specs: list[Spec],
    params: dict[str, Any] | None = None,
    output: str = "text_output",
    headers: Headers = None,
) -> dict[str, Any]:
    """{"outputs": [bytes...]} or {"status": ..., "message": ...} when the server refused."""
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    c = tc.InferenceServerClient(address)
    try:
        result = c.infer(model, _inputs(specs), parameters=params, headers=headers)
    except InferenceServerException as e:
        return _refused(e)
    return {"outputs": list(result.as_numpy(output).ravel())}


def client_stream(
    address: str, model: str, requests: list[tuple[str, list[Spec]]], headers: Headers = None
) -> list[Any]:
    """Every callback on one stream, in arrival order: (id, text, final) or ("error", message)."""
    import queue

    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    got: queue.Queue[Any] = queue.Queue()
    c = tc.InferenceServerClient(address)
    c.start_stream(callback=lambda result, error: got.put((result, error)), headers=headers)
    try:
        for request_id, specs in requests:
            c.async_stream_infer(model, _inputs(specs), request_id=request_id)
    except InferenceServerException:
        pass  # the server ended the stream; the callback got its error
    c.stop_stream()  # waits for every response
    out: list[Any] = []
    while not got.empty():
        result, error = got.get()
        if error is not None:
            out.append(("error", error.message()))
            continue
        resp = result.get_response()
        texts = b"".join(result.as_numpy("text_output").ravel()).decode(errors="replace")
        out.append((resp.id, texts, resp.parameters["triton_final_response"].bool_param))
    return out

"""Errors of the python (Truss-style) engine and the rule mapping user exceptions to them (no I/O).

Two families, so the gRPC layer needs no knowledge of user code:
- `InvalidRequest` subclasses (INVALID_ARGUMENT): the caller sent something the model refused.
- `RuntimeServiceError` subclasses that are not `InvalidRequest` (INTERNAL): the model is broken.
The replica keeps serving after either; only `start()` failures are fatal.
"""

from __future__ import annotations

import enum
import json

from services.runtime.core.errors import InvalidRequest, RuntimeServiceError


class Stage(enum.Enum):
    """Which part of the user's model was running."""

    IMPORT = "import"
    INIT = "__init__"
    LOAD = "load"
    PREPROCESS = "preprocess"
    PREDICT = "predict"
    POSTPROCESS = "postprocess"

    @property
    def label(self) -> str:
        """How messages name the stage: `predict()`, or `import` for loading the module."""
        return self.value if self is Stage.IMPORT else f"{self.value}()"


# Exceptions a model raises when the *input* is wrong (Truss models typically validate this way).
INPUT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    json.JSONDecodeError,
)


class InvalidJsonInput(InvalidRequest):
    """The payload handed to predict is not a JSON document."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"model input is not valid JSON: {detail}")


class ModelInputError(InvalidRequest):
    """The user's model rejected its input (raised ValueError, TypeError, KeyError, a 4xx...)."""

    def __init__(self, model_name: str, stage: Stage, exc_type: str, message: str) -> None:
        self.model_name = model_name
        self.stage = stage
        self.exc_type = exc_type
        self.message = message
        super().__init__(
            f"model {model_name!r} rejected the input in {stage.label}: {exc_type}: {message}"
        )


class ModelCrashed(RuntimeServiceError):
    """The user's model raised an unexpected exception while serving a request."""

    def __init__(self, model_name: str, stage: Stage, exc_type: str, message: str) -> None:
        self.model_name = model_name
        self.stage = stage
        self.exc_type = exc_type
        self.message = message
        super().__init__(f"model {model_name!r} failed in {stage.label}: {exc_type}: {message}")


class ModelOutputNotJson(RuntimeServiceError):
    """The model returned (or yielded) a value that cannot be encoded as JSON."""

    def __init__(self, model_name: str, value_type: str, detail: str) -> None:
        self.model_name = model_name
        self.value_type = value_type
        self.detail = detail
        super().__init__(
            f"model {model_name!r} returned a {value_type} that is not JSON-serialisable: {detail}"
        )


class ModelDefinitionError(RuntimeServiceError):
    """The model directory or class does not follow the Truss model interface."""

    def __init__(self, model_dir: str, problem: str) -> None:
        self.model_dir = model_dir
        self.problem = problem
        super().__init__(f"model in {model_dir}: {problem}")


class ModelLoadFailed(RuntimeServiceError):
    """The model's __init__ or load() raised; the replica cannot become ready."""

    def __init__(self, model_dir: str, stage: Stage, exc_type: str, message: str) -> None:
        self.model_dir = model_dir
        self.stage = stage
        self.exc_type = exc_type
        self.message = message
        super().__init__(f"model in {model_dir} failed in {stage.label}: {exc_type}: {message}")


def is_input_problem(exc: BaseException) -> bool:
    """True when the exception says the caller's input was wrong, not that the model broke.

    ValueError/TypeError/KeyError/IndexError, or any exception with an HTTP 4xx `status_code`
    (what Truss models raise via fastapi.HTTPException).
    """
    if isinstance(exc, INPUT_EXCEPTIONS):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500


def _message(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)  # fastapi.HTTPException keeps its text here
    if isinstance(exc, KeyError) and exc.args:
        return f"missing key {exc.args[0]!r}"
    text = str(detail) if detail is not None else str(exc)
    return text or "(no message)"


def classify_user_exception(
    model_name: str, stage: Stage, exc: BaseException
) -> ModelInputError | ModelCrashed:
    """The engine error that stands for an exception the user's model raised while serving."""
    exc_type = type(exc).__name__
    if is_input_problem(exc):
        return ModelInputError(model_name, stage, exc_type, _message(exc))
    return ModelCrashed(model_name, stage, exc_type, _message(exc))

"""The HTTP door's OpenAPI document and its /docs page (does I/O: FastAPI routes).

Both sit behind the API key like every route but /health (`key_auth.py`). The page carries
the document inline rather than fetching /openapi.json: a browser's fetch would go without
the key and get 401. The document declares the bearer key, so the page's "Authorize" button
sends it with each "Try it out".
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from .key_auth import OPEN_PATHS

SWAGGER_JS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
SWAGGER_CSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the API key as a bearer scheme on every operation
    but `OPEN_PATHS` (built once, as FastAPI's own)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                          description="basalt's OpenAI-compatible door. Errors answer "
                          '{"error": {"message", "type", "param", "code"}}.')
        doc.setdefault("components", {})["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer",
                       "description": "An inference key (`basalt keys create`); needed when "
                                      "the router runs with --auth."}}
        doc["security"] = [{"apiKey": []}]
        for path in OPEN_PATHS:
            for operation in doc.get("paths", {}).get(path, {}).values():
                operation["security"] = []
        app.openapi_schema = doc
    return app.openapi_schema


def docs_html(title: str, document: dict[str, Any]) -> str:
    """A Swagger UI page with `document` inline (`</` escaped: it sits in a <script>)."""
    spec = json.dumps(document).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html><head><title>{title}</title><meta charset="utf-8">
<link rel="stylesheet" href="{SWAGGER_CSS}"></head>
<body><div id="swagger-ui"></div>
<script src="{SWAGGER_JS}"></script>
<script>SwaggerUIBundle({{spec: {spec}, dom_id: "#swagger-ui", deepLinking: true}});</script>
</body></html>"""


def add_docs(app: FastAPI) -> None:
    """Serve /openapi.json (FastAPI's own route, this document) and /docs."""
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(f"{app.title} - API", openapi_document(app)))

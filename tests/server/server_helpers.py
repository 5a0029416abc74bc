"""Start the server in-process on a loopback port (aiohttp's TestServer) and talk to it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

import node_pack
from nodegraph import Engine
from nodegraph.environment import Environment, ModelPaths
from nodegraph.server import ServerConfig, create_app


def make_engine(root: Path) -> Engine:
    env = Environment(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                      models=ModelPaths(roots=[root / "models"]))
    for folder in (env.output_dir, env.input_dir, env.temp_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return Engine(node_pack.registry(), env=env)


@asynccontextmanager
async def serve(root: Path, engine: Engine | None = None, **config: Any) -> AsyncIterator[TestClient]:
    """A running server on 127.0.0.1 with the test node pack; `client.app` is the application."""
    engine = engine or make_engine(root)
    settings = {"host": "127.0.0.1", "port": 0, "data_dir": root / "data", "durable": False,
                "static_dir": root / "static", **config}
    app = create_app(engine, ServerConfig(**settings))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def api_prompt(value: int = 1, *, steps: int = 0, delay: float = 0.0, fail: bool = False) -> dict[str, Any]:
    """Number -> [Steps] -> [Fail] -> Collect, in ComfyUI's API format."""
    prompt: dict[str, Any] = {"1": {"class_type": "Number", "inputs": {"value": value}}}
    last = "1"
    if steps:
        prompt["2"] = {"class_type": "Steps", "inputs": {"a": [last, 0], "steps": steps, "delay": delay}}
        last = "2"
    if fail:
        prompt["4"] = {"class_type": "Fail", "inputs": {"a": [last, 0], "message": "boom"}}
        last = "4"
    prompt["3"] = {"class_type": "Collect", "inputs": {"value": [last, 0]}}
    return prompt


async def submit(client: TestClient, prompt: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await client.post("/prompt", json={"prompt": prompt, **body})
    data = await response.json()
    assert response.status == 200, data
    return data


async def next_message(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> Any:
    """The next text message as (type, data), or the raw bytes of a binary frame."""
    message = await ws.receive(timeout=timeout)
    if message.type == aiohttp.WSMsgType.BINARY:
        return message.data
    assert message.type == aiohttp.WSMsgType.TEXT, message
    parsed = json.loads(message.data)
    return parsed["type"], parsed["data"]


async def messages_until(ws: aiohttp.ClientWebSocketResponse, done: Callable[[Any], bool],
                         timeout: float = 10.0) -> list[Any]:
    """Messages up to and including the first for which `done` is true."""
    received: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            received.append(await next_message(ws, timeout))
            if done(received[-1]):
                return received


def prompt_done(prompt_id: str) -> Callable[[Any], bool]:
    """ComfyUI's end of a prompt: `executing` with node None."""
    return lambda m: isinstance(m, tuple) and m[0] == "executing" and m[1]["node"] is None \
        and m[1]["prompt_id"] == prompt_id


async def wait_history(client: TestClient, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            data = await (await client.get(f"/history/{prompt_id}")).json()
            if prompt_id in data:
                return data[prompt_id]
            await asyncio.sleep(0.02)


async def wait_running(client: TestClient, prompt_id: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            queue = await (await client.get("/queue")).json()
            if any(item[1] == prompt_id for item in queue["queue_running"]):
                return
            await asyncio.sleep(0.01)


def png(color=(255, 0, 0, 255), size=(4, 4)) -> bytes:
    """A small RGBA PNG's bytes (what upload tests send)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_form(data: bytes, filename: str = "pic.png", **fields: str) -> Any:
    """The multipart body ComfyUI's clients post to /upload/image and /upload/mask."""
    import aiohttp

    result = aiohttp.FormData()
    result.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        result.add_field(key, value)
    return result

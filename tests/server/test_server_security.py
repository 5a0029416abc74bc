"""Cross-origin requests, DNS rebinding, the token, and JSON errors for whatever a client sends."""

import base64

import aiohttp
from server_helpers import api_prompt, serve, submit, wait_history


async def test_cross_origin_state_changes_are_refused(tmp_path):
    async with serve(tmp_path) as client:
        host = f"127.0.0.1:{client.port}"
        body = {"prompt": api_prompt(1)}
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{client.port + 1}", "http://localhost:1",
                       "garbage"):
            response = await client.post("/prompt", json=body, headers={"Origin": origin})
            assert response.status == 403, origin
            assert (await response.json())["error"]["type"] == "forbidden_origin"
        for path in ("/interrupt", "/queue", "/history", "/free", "/upload/image"):
            assert (await client.post(path, json={}, headers={"Origin": "http://evil.example"})).status == 403
        try:
            await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
            raise AssertionError("a cross-origin WebSocket was accepted")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
        response = await client.post("/prompt", json=body, headers={"Origin": f"http://{host}"})
        assert response.status == 200  # the editor, same origin
        assert (await client.get("/queue", headers={"Origin": "http://evil.example"})).status == 200  # reads: SOP


async def test_dns_rebinding_refused_on_loopback(tmp_path):
    async with serve(tmp_path) as client:
        for host in ("evil.example", f"evil.example:{client.port}", "192.168.1.10", "127.0.0.1.evil.example"):
            response = await client.get("/prompt", headers={"Host": host})
            assert response.status == 403, host
            assert (await response.json())["error"]["type"] == "forbidden_host"
        for host in (f"localhost:{client.port}", f"127.0.0.1:{client.port}", f"[::1]:{client.port}", "127.0.0.2"):
            assert (await client.get("/prompt", headers={"Host": host})).status == 200, host


async def test_listen_on_all_interfaces_accepts_other_host_names(tmp_path):
    async with serve(tmp_path, host="0.0.0.0") as client:
        assert (await client.get("/prompt", headers={"Host": "gpu-box.lan:8188"})).status == 200
        response = await client.post("/prompt", json={"prompt": api_prompt(1)},
                                     headers={"Host": "gpu-box.lan:8188", "Origin": "http://evil.example"})
        assert response.status == 403  # still no cross-origin writes
        behind_proxy = {"Host": "gpu.example.com", "Origin": "https://gpu.example.com"}  # TLS ends at the proxy
        assert (await client.post("/interrupt", json={}, headers=behind_proxy)).status == 200
        response = await client.post("/interrupt", json={}, headers={**behind_proxy, "Origin": "https://evil.com"})
        assert response.status == 403


async def test_token_on_http_and_websocket(tmp_path):
    async with serve(tmp_path, token="s3cret") as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic !!"}):
            response = await client.get("/queue", headers=headers)
            assert response.status == 401 and (await response.json())["error"]["type"] == "unauthorized"
        assert (await client.post("/prompt", json={"prompt": api_prompt(1)})).status == 401
        assert (await client.get("/", params={"token": "wrong"})).status == 401
        bearer = {"Authorization": "Bearer s3cret"}
        assert (await client.get("/queue", headers=bearer)).status == 200
        basic = {"Authorization": "Basic " + base64.b64encode(b"user:s3cret").decode()}
        assert (await client.get("/queue", headers=basic)).status == 200
        assert (await client.get("/queue", params={"token": "s3cret"})).status == 200
        response = await client.post("/prompt", params={"token": "s3cret"}, json={"prompt": api_prompt(1)})
        assert response.status == 401  # query tokens only on GET (they end up in logs)
        for kwargs in ({}, {"headers": {"Authorization": "Bearer nope"}}):
            try:
                await client.ws_connect("/ws", **kwargs)
                raise AssertionError("WebSocket without token accepted")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 401
        ws = await client.ws_connect("/ws?clientId=t&token=s3cret")
        assert (await ws.receive_json())["type"] == "status"
        ws = await client.ws_connect("/ws?clientId=t2", headers=bearer)
        assert (await ws.receive_json())["type"] == "status"
        client.session.headers.update(bearer)
        await wait_history(client, (await submit(client, api_prompt(3)))["prompt_id"])


async def test_token_cookie_for_the_browser(tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html>")
    async with serve(tmp_path, token="s3cret", static_dir=static) as client:
        response = await client.get("/", params={"token": "s3cret"})
        assert response.status == 200
        cookie = response.cookies["nodegraph_token"]
        assert cookie.value == "s3cret" and cookie["httponly"] and cookie["samesite"] == "Strict"
        assert (await client.get("/queue")).status == 200  # the session now sends the cookie


async def test_errors_are_json_and_the_server_survives(tmp_path):
    async with serve(tmp_path) as client:
        for method, path, kwargs in (("GET", "/no/such/route", {}), ("DELETE", "/prompt", {}),
                                     ("POST", "/queue", {"data": b"\xff\xfe"}), ("POST", "/history", {"data": b"[1]"}),
                                     ("POST", "/interrupt", {"data": b'{"prompt_id": 5}'}),
                                     ("POST", "/free", {"data": b'{"unload_models": "maybe"}'}),
                                     ("GET", "/ws", {}), ("GET", "/models/../../etc", {}),
                                     ("POST", "/prompt", {"data": b'{"prompt": {"1": {"class_type": 5}}}'}),
                                     ("POST", "/prompt", {"data": b'{"prompt": {"1": 7}}'}),
                                     ("POST", "/prompt", {"data": b'{"prompt": {}, "number": "soon"}'})):
            response = await client.request(method, path, **kwargs)
            assert 400 <= response.status < 500, (method, path, response.status)
            assert "error" in await response.json(), (method, path)
        assert (await client.get("/prompt")).status == 200


async def test_item18_origin_with_another_scheme_is_cross_origin(tmp_path):
    async with serve(tmp_path) as client:
        body = {"prompt": api_prompt(1)}
        for origin in (f"https://127.0.0.1:{client.port}", f"wss://127.0.0.1:{client.port}",
                       f"ftp://127.0.0.1:{client.port}"):
            response = await client.post("/prompt", json=body, headers={"Origin": origin})
            assert response.status == 403, origin
            assert (await response.json())["error"]["type"] == "forbidden_origin"
        try:
            await client.ws_connect("/ws", headers={"Origin": f"https://127.0.0.1:{client.port}"})
            raise AssertionError("a WebSocket from another scheme was accepted")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
        same = {"Origin": f"http://127.0.0.1:{client.port}"}
        assert (await client.post("/interrupt", json={}, headers=same)).status == 200
        proxied = {"Origin": f"https://127.0.0.1:{client.port}", "X-Forwarded-Proto": "https"}  # TLS at a proxy
        assert (await client.post("/interrupt", json={}, headers=proxied)).status == 200

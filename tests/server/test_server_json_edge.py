"""What the server does with hostile JSON bodies (reliability issue, items 10-14): every one is a 4xx in
ComfyUI's error shape, never a 500, and nothing it stores or sends back stops being JSON."""

import json
import os

import aiohttp
from server_helpers import api_prompt, serve, submit, wait_history

ERROR_KEYS = {"type", "message", "details", "extra_info"}


async def prompt_error(response):
    """The body of a refused /prompt: ComfyUI's `{error, node_errors}`."""
    assert response.status == 400, await response.text()
    body = await response.json()
    assert set(body) == {"error", "node_errors"} and set(body["error"]) == ERROR_KEYS, body
    return body


async def test_item10_deeply_nested_json_is_a_400_on_every_json_route(tmp_path):
    arrays = "[" * 1000 + "]" * 1000
    objects = '{"a":' * 1000 + "1" + "}" * 1000
    async with serve(tmp_path) as client:
        for nested in (arrays, objects):
            body = await prompt_error(await client.post("/prompt", data='{"prompt": ' + nested + "}"))
            assert body["error"]["type"] == "invalid_prompt" and "deeper than 64" in body["error"]["details"]
            for path in ("/queue", "/history", "/interrupt", "/free"):
                response = await client.post(path, data=nested)
                assert response.status == 400, path
                assert set((await response.json())["error"]) == ERROR_KEYS
        form = aiohttp.FormData()
        form.add_field("image", b"\x89PNG", filename="m.png", content_type="image/png")
        form.add_field("original_ref", arrays)
        response = await client.post("/upload/mask", data=form)
        assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_request"

        ws = await client.ws_connect("/ws?clientId=deep")
        assert (await ws.receive_json())["type"] == "status"
        await ws.send_str('{"type": "feature_flags", "data": ' + objects + "}")  # ignored, not fatal
        await ws.send_str(json.dumps({"type": "feature_flags", "data": {}}))
        assert (await ws.receive_json(timeout=5))["type"] == "feature_flags"
        await ws.close()

        deep_but_allowed = {"x": 1}
        for _ in range(60):
            deep_but_allowed = {"x": deep_but_allowed}
        reply = await submit(client, api_prompt(4), extra_data={"note": deep_but_allowed})
        assert (await wait_history(client, reply["prompt_id"]))["outputs"]["3"] == {"value": [4]}
        brackets_in_strings = {"1": {"class_type": "Number", "inputs": {"value": 1}, "_meta": {"title": "[" * 500}},
                               "3": {"class_type": "Collect", "inputs": {"value": ["1", 0]}}}
        await submit(client, brackets_in_strings)


async def test_item10_depth_scan_is_linear_on_unterminated_strings(tmp_path):
    """An unterminated string of escaped quotes made the string pattern backtrack quadratically (minutes for
    a few hundred kilobytes, the event loop blocked); it is refused at once."""
    import time

    body = "[" * 100 + '"' + '\\"' * 60_000
    async with serve(tmp_path) as client:
        started = time.monotonic()
        response = await client.post("/queue", data=body)
        assert response.status == 400 and time.monotonic() - started < 5


def test_item10_depth_scan_counts_only_structure():
    from nodegraph.server.jsonsafe import MAX_DEPTH, too_deep

    def nested(depth, opener="[", closer="]"):
        return (opener * depth + closer * depth).encode()

    assert not too_deep(nested(MAX_DEPTH)) and too_deep(nested(MAX_DEPTH + 1))
    assert too_deep(("{[" * 33 + "]}" * 33).encode())  # 66 levels, alternating
    assert not too_deep(json.dumps(["[" * 500, "{" * 500]).encode())  # brackets inside strings
    assert not too_deep(json.dumps(['\\"[' * 200, [[1]]]).encode())  # escaped quotes don't end a string
    assert not too_deep(("[" + "[[1],{}]," * 100_000 + "1]").encode())  # wide, not deep


async def test_item11_lone_surrogates_are_a_400_naming_node_and_input(tmp_path):
    def with_surrogate(node_id, *path):
        prompt = api_prompt(1)
        prompt["2"] = {"class_type": "SaveTestImage", "inputs": {"value": ["1", 0], "filename_prefix": "ok"}}
        target = prompt[node_id]
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = "bad\ud800"
        return json.dumps({"prompt": prompt})  # json escapes it as \\ud800, as a hostile client would send it

    async with serve(tmp_path) as client:
        for node_id, path, input_name in (("2", ("inputs", "filename_prefix"), "filename_prefix"),
                                          ("1", ("class_type",), None), ("1", ("_meta", "title"), None)):
            body = await prompt_error(await client.post("/prompt", data=with_surrogate(node_id, *path)))
            assert list(body["node_errors"]) == [node_id], body
            (error,) = body["node_errors"][node_id]["errors"]
            assert error["type"] == "invalid_input_type" and "surrogate" in error["details"]
            assert error["extra_info"].get("input_name") == input_name
        for field in ("prompt_id", "client_id"):
            body = await prompt_error(await client.post("/prompt", data=json.dumps({"prompt": api_prompt(1),
                                                                                    field: "\ud800"})))
            assert body["error"]["type"] == "invalid_prompt" and body["error"]["details"].startswith(field)
        for path in ("/queue", "/history"):
            response = await client.post(path, data=json.dumps({"delete": ["\udfff"]}))
            assert response.status == 400, path
            assert "delete.0: lone UTF-16 surrogate" in (await response.json())["error"]["details"]
        assert (await client.get("/queue")).status == 200 and (await client.get("/history")).status == 200


def strict_json(text):
    """Parse as a browser does: NaN and Infinity are syntax errors."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


async def test_item12_nan_and_infinity_are_refused_and_never_written(tmp_path):
    from nodegraph import Node, NodeResult, NodeSchema, Socket
    from server_helpers import make_engine

    class ShowFloat(Node):  # a node whose ui holds a non-finite float (e.g. a metric that diverged)
        schema = NodeSchema(type_id="ShowFloat", category="test", inputs=(Socket("value", "INT"),), output_node=True)

        @classmethod
        def execute(cls, ctx, value):
            return NodeResult(ui={"scores": [float("nan"), float("inf"), value]})

    engine = make_engine(tmp_path)
    engine.registry.register(ShowFloat)
    async with serve(tmp_path, engine) as client:
        defaulted = api_prompt(1)
        defaulted["1"]["inputs"]["value"] = None  # refused as missing (item 13); NaN must not pass for it
        for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
            text = json.dumps({"prompt": defaulted}).replace("null", literal)
            body = await prompt_error(await client.post("/prompt", data=text))
            (error,) = body["node_errors"]["1"]["errors"]
            assert error["extra_info"]["input_name"] == "value" and "not a JSON number" in error["details"], literal
        body = await prompt_error(await client.post("/prompt", data='{"prompt": %s, "number": NaN}'
                                                    % json.dumps(api_prompt(1))))
        assert body["error"]["details"].startswith("number: NaN")

        prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
                  "2": {"class_type": "ShowFloat", "inputs": {"value": ["1", 0]}}}
        reply = await submit(client, prompt)
        entry = await wait_history(client, reply["prompt_id"])
        assert entry["outputs"]["2"] == {"scores": [None, None, 2]}
        strict_json(await (await client.get("/history")).text())
        strict_json(await (await client.get(f"/history/{reply['prompt_id']}")).text())
        strict_json(await (await client.get("/queue")).text())


def test_item12_plan_memo_tells_nan_from_null():
    import math

    import fake_nodes
    import pytest
    from nodegraph import Engine
    from nodegraph.cache import node_key
    from nodegraph.errors import ValidationFailed

    engine = Engine(fake_nodes.registry())
    null = fake_nodes.workflow({"1": ("Number", {"value": None}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    assert engine.compile(null).nodes["1"].widgets["value"] == 1  # null: the default
    with pytest.raises(ValidationFailed, match="value"):
        engine.compile(null.with_widget("1", "value", math.nan))  # not the memo of the null one
    keys = {node_key("Number", 1, {"value": v}, {}) for v in (None, math.nan, math.inf, -math.inf)}
    assert len(keys) == 4


async def test_item13_api_prompts_need_every_required_value(tmp_path):
    async with serve(tmp_path) as client:
        async def missing(prompt):
            body = await prompt_error(await client.post("/prompt", json={"prompt": prompt}))
            return {(node_id, error["extra_info"].get("input_name"), error["type"])
                    for node_id, entry in body["node_errors"].items() for error in entry["errors"]}

        no_inputs = api_prompt(1)
        del no_inputs["1"]["inputs"]
        assert await missing(no_inputs) == {("1", "value", "required_input_missing")}
        deleted = api_prompt(1, steps=3)
        del deleted["2"]["inputs"]["delay"]
        assert await missing(deleted) == {("2", "delay", "required_input_missing")}
        null_combo = {**api_prompt(1), "5": {"class_type": "Scale", "inputs": {"a": ["1", 0], "factor": None,
                                                                                "mode": None}},
                      "6": {"class_type": "Sink", "inputs": {"a": ["5", 0]}}}
        assert await missing(null_combo) == {("5", "factor", "required_input_missing"),
                                             ("5", "mode", "required_input_missing")}
        typo = api_prompt(1)
        typo["1"]["inputs"] = {"valeu": 3}
        assert await missing(typo) == {("1", "valeu", "unknown_input"), ("1", "value", "required_input_missing")}
        queue = await (await client.get("/queue")).json()
        assert queue == {"queue_running": [], "queue_pending": []}

        linked = {**api_prompt(2), "5": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
                  "6": {"class_type": "Sink", "inputs": {"a": ["5", 0]}}}  # a widget fed by a link is given
        entry = await wait_history(client, (await submit(client, linked))["prompt_id"])
        assert entry["outputs"]["6"] == {"value": [4]}
        native = {"format": "nodegraph", "nodes": {"1": {"type": "Number"}, "2": {"type": "Collect"}},
                  "links": [{"from_node": "1", "from_slot": 0, "to_node": "2", "to_input": "value"}]}
        entry = await wait_history(client, (await submit(client, native))["prompt_id"])
        assert entry["outputs"]["2"] == {"value": [1]}  # the native format documents its defaults


async def test_item14_model_map_of_a_wrong_type_and_a_too_large_prompt(tmp_path):
    async with serve(tmp_path, max_upload_bytes=1000) as client:
        for wrong in ([], "", 0, False, ["a=b"], {"a": 1}):
            response = await client.post("/prompt", json={"prompt": api_prompt(1), "extra_data": {"model_map": wrong}})
            body = await prompt_error(response)
            assert body["error"]["type"] == "invalid_prompt" and "model_map" in body["error"]["details"], wrong
        await submit(client, api_prompt(1), extra_data={"model_map": {}})
        await submit(client, api_prompt(1), extra_data={"model_map": None})

        huge = {"prompt": api_prompt(1), "extra_data": {"padding": "x" * (1 << 21)}}
        response = await client.post("/prompt", json=huge)
        assert response.status == 413
        body = await response.json()
        assert body["node_errors"] == {} and set(body["error"]) == ERROR_KEYS
        assert body["error"]["type"] == "too_large"
        response = await client.post("/queue", json=huge)  # elsewhere: the plain error shape
        assert response.status == 413 and set((await response.json())["error"]) == ERROR_KEYS


async def test_item18_filename_prefixes_that_leave_output_are_refused_before_queueing(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    async with serve(tmp_path) as client:
        (tmp_path / "output").joinpath("out").symlink_to(outside)
        for prefix in ("../x", "a/../../x", "/tmp/x", "out/x", "out/deeper/x"):
            prompt = {"1": {"class_type": "Number", "inputs": {"value": 3}},
                      "2": {"class_type": "SaveTestImage", "inputs": {"value": ["1", 0], "filename_prefix": prefix}}}
            body = await prompt_error(await client.post("/prompt", json={"prompt": prompt}))
            (error,) = body["node_errors"]["2"]["errors"]
            assert error["type"] == "custom_validation_failed" and error["extra_info"]["input_name"] == "filename_prefix"
            assert prefix in error["details"], error
        queue = await (await client.get("/queue")).json()
        assert queue == {"queue_running": [], "queue_pending": []}
        prompt = {"1": {"class_type": "Number", "inputs": {"value": 3}},
                  "2": {"class_type": "SaveTestImage", "inputs": {"value": ["1", 0], "filename_prefix": "sub/ok"}}}
        entry = await wait_history(client, (await submit(client, prompt))["prompt_id"])
        assert entry["outputs"]["2"]["images"][0]["subfolder"] == "sub"
        assert os.listdir(outside) == []

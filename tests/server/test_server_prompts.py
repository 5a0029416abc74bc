"""POST /prompt, /queue, /history and /interrupt as ComfyUI clients use them."""

import json
import time

from server_helpers import api_prompt, serve, submit, wait_history, wait_running

import fake_nodes


async def test_prompt_runs_and_lands_in_history(tmp_path):
    async with serve(tmp_path) as client:
        extra = {"extra_pnginfo": {"workflow": {"x": 1}}}
        reply = await submit(client, api_prompt(7), client_id="me", extra_data=extra)
        assert set(reply) == {"prompt_id", "number", "node_errors"} and reply["node_errors"] == {}
        entry = await wait_history(client, reply["prompt_id"])
        assert entry["outputs"] == {"3": {"value": [7]}}
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        assert [event for event, _ in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                      "execution_success"]
        number, prompt_id, prompt, extra_data, outputs = entry["prompt"]
        assert (number, prompt_id, prompt, outputs) == (reply["number"], reply["prompt_id"], api_prompt(7), ["3"])
        create_time = extra_data.pop("create_time")  # milliseconds, stamped on submission as ComfyUI does
        assert isinstance(create_time, int) and abs(create_time / 1000 - time.time()) < 60
        assert extra_data == {"extra_pnginfo": {"workflow": {"x": 1}}, "client_id": "me"}
        assert entry["meta"]["3"]["node_id"] == "3"
        assert (await (await client.get("/prompt")).json()) == {"exec_info": {"queue_remaining": 0}}


async def test_body_without_json_content_type_and_api_prefix(tmp_path):
    async with serve(tmp_path) as client:
        body = json.dumps({"prompt": api_prompt(2), "prompt_id": "p-text"})
        response = await client.post("/api/prompt", data=body, headers={"Content-Type": "text/plain"})
        assert response.status == 200 and (await response.json())["prompt_id"] == "p-text"
        assert (await wait_history(client, "p-text"))["outputs"]["3"] == {"value": [2]}
        assert "p-text" in await (await client.get("/api/history")).json()


async def test_validation_errors_have_comfyui_shape(tmp_path):
    prompt = api_prompt(5000)  # above Number's max of 1000
    prompt["5"] = {"class_type": "Scale", "inputs": {"a": ["1", 0], "factor": 1.0, "mode": "sideways"}}
    prompt["6"] = {"class_type": "Sink", "inputs": {"a": ["5", 0]}}
    async with serve(tmp_path) as client:
        response = await client.post("/prompt", json={"prompt": prompt})
        assert response.status == 400
        body = await response.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        assert body["error"]["message"] == "Prompt outputs failed validation" and body["error"]["extra_info"] == {}
        assert "Value 5000 bigger than max of 1000" in body["error"]["details"]
        assert set(body["node_errors"]) == {"1", "5"}
        number_error = body["node_errors"]["1"]
        assert number_error["class_type"] == "Number" and number_error["dependent_outputs"] == ["3", "6"]
        (error,) = number_error["errors"]
        assert set(error) == {"type", "message", "details", "extra_info"}
        assert error["type"] == "value_bigger_than_max"
        assert error["extra_info"]["input_name"] == "value" and error["extra_info"]["received_value"] == 5000
        (combo,) = body["node_errors"]["5"]["errors"]
        assert combo["type"] == "value_not_in_list" and body["node_errors"]["5"]["dependent_outputs"] == ["6"]
        queue = await (await client.get("/queue")).json()
        assert queue == {"queue_running": [], "queue_pending": []}  # nothing invalid was queued


async def test_other_invalid_bodies(tmp_path):
    async with serve(tmp_path) as client:
        async def post(data, **kwargs):
            response = await client.post("/prompt", data=data, **kwargs)
            assert response.status == 400
            body = await response.json()
            assert set(body) == {"error", "node_errors"} and set(body["error"]) == {"type", "message", "details",
                                                                                    "extra_info"}
            return body["error"]["type"], body

        assert (await post("{not json"))[0] == "invalid_prompt"
        assert (await post(json.dumps({"client_id": "x"})))[0] == "no_prompt"
        assert (await post(json.dumps({"prompt": [1, 2]})))[0] == "invalid_prompt"
        kind, body = await post(json.dumps({"prompt": {"1": {"class_type": "Number", "inputs": {"value": 1}}}}))
        assert kind == "prompt_no_outputs"
        kind, body = await post(json.dumps({"prompt": {**api_prompt(1), "9": {"class_type": "Nope", "inputs": {}}}}))
        assert kind == "missing_node_type" and body["error"]["extra_info"]["class_type"] == "Nope"
        assert body["node_errors"]["9"]["errors"][0]["type"] == "missing_node_type"
        bad_map = {"prompt": api_prompt(1), "extra_data": {"model_map": [1]}}
        assert (await post(json.dumps(bad_map)))[0] == "invalid_prompt"
        await submit(client, api_prompt(1), prompt_id="dup", number=99)  # queued behind nothing, runs at once
        await wait_history(client, "dup")


async def test_native_workflow_and_model_map(tmp_path):
    native = fake_nodes.workflow({"1": ("Number", {"value": 4}), "2": ("Scale", {"factor": 2.0, "mode": "old-name"}),
                                  "3": ("Collect", {})}, [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    async with serve(tmp_path) as client:
        response = await client.post("/prompt", json={"prompt": native.model_dump(mode="json")})
        assert response.status == 400  # "old-name" is not an option ...
        reply = await submit(client, native.model_dump(mode="json"), extra_data={"model_map": {"old-name": "round"}})
        entry = await wait_history(client, reply["prompt_id"])  # ... until mapped
        assert entry["outputs"]["3"] == {"value": [8]}


async def test_metadata_reaches_nodes(tmp_path):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 9}},
              "2": {"class_type": "SaveTestImage", "inputs": {"value": ["1", 0], "filename_prefix": "meta"}}}
    async with serve(tmp_path) as client:
        reply = await submit(client, prompt, extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}})
        entry = await wait_history(client, reply["prompt_id"])
        (image,) = entry["outputs"]["2"]["images"]
        from PIL import Image

        with Image.open(tmp_path / "output" / image["filename"]) as png:
            assert json.loads(png.text["prompt"]) == prompt and json.loads(png.text["workflow"]) == {"nodes": []}


async def test_queue_order_front_delete_clear_and_failures_do_not_stop_it(tmp_path):
    async with serve(tmp_path) as client:
        blocker = await submit(client, api_prompt(1, steps=20, delay=0.05), prompt_id="blocker")
        await wait_running(client, "blocker")
        await submit(client, api_prompt(2, fail=True), prompt_id="fails")
        await submit(client, api_prompt(3), prompt_id="later")
        await submit(client, api_prompt(4), prompt_id="urgent", front=True)
        await submit(client, api_prompt(5), prompt_id="dropped")
        queue = await (await client.get("/queue")).json()
        assert [item[1] for item in queue["queue_running"]] == ["blocker"]
        assert [item[1] for item in queue["queue_pending"]] == ["urgent", "fails", "later", "dropped"]
        assert queue["queue_pending"][0][0] < 0 and len(queue["queue_pending"][0]) == 5
        assert (await client.post("/queue", json={"delete": ["dropped"]})).status == 200
        await wait_history(client, "later")
        history = await (await client.get("/history")).json()
        assert list(history) == ["blocker", "urgent", "fails", "later"]
        assert history["fails"]["status"]["status_str"] == "error"
        assert history["fails"]["status"]["messages"][-1][0] == "execution_error"
        await submit(client, api_prompt(6, steps=50, delay=0.05), prompt_id="long")
        await wait_running(client, "long")
        await submit(client, api_prompt(7), prompt_id="cleared")
        assert (await client.post("/queue", json={"clear": True})).status == 200
        assert (await (await client.get("/queue")).json())["queue_pending"] == []
        await client.post("/interrupt", json={})
        assert (await wait_history(client, "long"))["status"]["status_str"] == "error"
        assert blocker["number"] == 1


async def test_interrupt_only_the_named_running_prompt(tmp_path):
    async with serve(tmp_path) as client:
        await submit(client, api_prompt(1, steps=40, delay=0.05), prompt_id="slow")
        await submit(client, api_prompt(2), prompt_id="next")
        await wait_running(client, "slow")
        reply = await (await client.post("/interrupt", json={"prompt_id": "next"})).json()
        assert reply == {"interrupted": False}  # "next" is not running: nothing stops
        reply = await (await client.post("/interrupt", json={"prompt_id": "slow"})).json()
        assert reply == {"interrupted": True}
        slow = await wait_history(client, "slow")
        assert slow["status"] == {"status_str": "error", "completed": False, "messages": slow["status"]["messages"]}
        assert slow["status"]["messages"][-1][0] == "execution_interrupted"
        assert (await wait_history(client, "next"))["status"]["status_str"] == "success"


async def test_history_paging_delete_and_clear(tmp_path):
    async with serve(tmp_path) as client:
        for i in range(5):
            await submit(client, api_prompt(i), prompt_id=f"h{i}")
        await wait_history(client, "h4")
        assert list(await (await client.get("/history?max_items=2")).json()) == ["h3", "h4"]
        assert list(await (await client.get("/history?max_items=2&offset=1")).json()) == ["h1", "h2"]
        assert (await client.get("/history?max_items=x")).status == 400
        assert await (await client.get("/history/unknown")).json() == {}
        await client.post("/history", json={"delete": ["h0"]})
        assert "h0" not in await (await client.get("/history")).json()
        await client.post("/history", json={"clear": True})
        assert await (await client.get("/history")).json() == {}


async def test_partial_execution_targets(tmp_path):
    prompt = {**api_prompt(3), "6": {"class_type": "Sink", "inputs": {"a": ["1", 0]}}}
    async with serve(tmp_path) as client:
        reply = await submit(client, prompt, partial_execution_targets=["6"])
        entry = await wait_history(client, reply["prompt_id"])
        assert entry["prompt"][4] == ["6"] and list(entry["outputs"]) == ["6"]


async def test_file_name_fed_by_a_link_is_accepted_and_runs(tmp_path):
    """ComfyUI accepts a value linked into a file input; it used to fail as "fingerprint failed"."""
    (tmp_path / "value.txt").write_text("12")
    prompt = {"1": {"class_type": "Text", "inputs": {"value": str(tmp_path / "value.txt")}},
              "2": {"class_type": "FileValue", "inputs": {"path": ["1", 0]}},
              "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}}}
    async with serve(tmp_path) as client:
        entry = await wait_history(client, (await submit(client, prompt))["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["outputs"] == {"3": {"value": [12]}}


async def test_reused_prompt_id_is_refused(tmp_path):
    """A new submission under a finished prompt's id is a 400; it used to replace it and get its results back."""
    prompt = {"1": {"class_type": "Random", "inputs": {}}, "2": {"class_type": "Collect", "inputs": {"value": ["1", 0]}}}
    async with serve(tmp_path) as client:
        await submit(client, prompt, prompt_id="same")
        first = await wait_history(client, "same")
        response = await client.post("/prompt", json={"prompt": prompt, "prompt_id": "same"})
        body = await response.json()
        assert response.status == 400 and body["error"]["type"] == "invalid_prompt", body
        assert "same" in body["error"]["details"] and body["node_errors"] == {}
        assert (await wait_history(client, "same")) == first  # the earlier result is untouched


async def test_a_prompt_is_compiled_once_between_submission_and_run(tmp_path, monkeypatch):
    """The worker reuses the plan made when the prompt was validated (the plan memo hits across the two)."""
    import nodegraph.executor

    compiles = []
    real = nodegraph.executor.compile_workflow
    monkeypatch.setattr(nodegraph.executor, "compile_workflow", lambda *a, **k: compiles.append(1) or real(*a, **k))
    async with serve(tmp_path) as client:
        extra = {"extra_pnginfo": {"workflow": {"nodes": []}}, "model_map": {}}
        for body in ({}, {"extra_data": extra}, {"partial_execution_targets": ["3"]}):
            compiles.clear()
            prompt = api_prompt(len(str(body)), steps=1)
            entry = await wait_history(client, (await submit(client, prompt, **body))["prompt_id"])
            assert entry["status"]["status_str"] == "success" and len(compiles) == 1, body

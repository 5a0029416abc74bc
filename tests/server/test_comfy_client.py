"""An existing ComfyUI client library from PyPI, unchanged, against our server: queue, wait on the
WebSocket, download the image (comfy-api-simplified, which many scripts use)."""

import asyncio

import pytest
from PIL import Image
from server_helpers import serve

comfy = pytest.importorskip("comfy_api_simplified")

WORKFLOW = {
    "1": {"class_type": "Number", "inputs": {"value": 3}, "_meta": {"title": "Seed value"}},
    "2": {"class_type": "SaveTestImage", "inputs": {"value": ["1", 0], "filename_prefix": "client"},
          "_meta": {"title": "Save Image"}},
}


async def test_comfy_api_simplified_queues_waits_and_downloads(tmp_path):
    async with serve(tmp_path) as client:
        api = comfy.ComfyApiWrapper(f"http://127.0.0.1:{client.port}")
        workflow = comfy.ComfyWorkflowWrapper(WORKFLOW)
        workflow.set_node_param("Seed value", "value", 200)
        images = await asyncio.to_thread(api.queue_and_wait_images, workflow, "Save Image")
        ((name, data),) = images.items()
        assert name.startswith("client_") and data == (tmp_path / "output" / name).read_bytes()
        with Image.open(tmp_path / "output" / name) as image:
            assert image.getpixel((0, 0)) == (200, 0, 0)

        source = tmp_path / "upload.png"
        Image.new("RGB", (2, 2)).save(source)
        uploaded = await asyncio.to_thread(api.upload_image, source)
        assert uploaded == {"name": "upload.png", "subfolder": "default_upload_folder", "type": "input"}
        info = await asyncio.to_thread(api.get_object_info, "SaveTestImage")
        assert info["SaveTestImage"]["output_node"] is True
        assert (await asyncio.to_thread(api.get_system_stats))["devices"]
        assert await asyncio.to_thread(api.get_embeddings) == []
        await asyncio.to_thread(api.interrupt)
        assert await asyncio.to_thread(api.get_queue) == {"queue_running": [], "queue_pending": []}


async def test_comfy_api_simplified_reports_a_failed_prompt(tmp_path):
    async with serve(tmp_path) as client:
        api = comfy.ComfyApiWrapper(f"http://127.0.0.1:{client.port}")
        bad = {"1": {"class_type": "Number", "inputs": {"value": 1}, "_meta": {"title": "n"}},
               "2": {"class_type": "Fail", "inputs": {"a": ["1", 0], "message": "nope"}, "_meta": {"title": "f"}},
               "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}, "_meta": {"title": "c"}}}
        prompt_id = (await asyncio.to_thread(api.queue_prompt, bad))["prompt_id"]
        for _ in range(200):
            history = await asyncio.to_thread(api.get_history, prompt_id)
            if history:
                break
            await asyncio.sleep(0.02)
        assert history[prompt_id]["status"]["status_str"] == "error"
        with pytest.raises(comfy.ComfyApiError):  # a 400 for an invalid prompt
            await asyncio.to_thread(api.queue_prompt, {"1": {"class_type": "Nope", "inputs": {}}})


async def test_comfy_api_simplified_with_the_token_as_its_password(tmp_path):
    async with serve(tmp_path, token="s3cret") as client:
        url = f"http://127.0.0.1:{client.port}"
        with pytest.raises(comfy.ComfyApiError):
            await asyncio.to_thread(comfy.ComfyApiWrapper(url).get_queue)
        api = comfy.ComfyApiWrapper(url, user="me", password="s3cret")  # Basic auth on HTTP and WebSocket
        images = await asyncio.to_thread(api.queue_and_wait_images, comfy.ComfyWorkflowWrapper(WORKFLOW), "Save Image")
        assert len(images) == 1

"""/object_info, /system_stats, /embeddings, /models, /features, /free and /openapi.json."""

import asyncio

from server_helpers import api_prompt, make_engine, serve, submit, wait_history

from nodegraph import Combo, Int, Node, NodeSchema, Out, Socket, String


class Loader(Node):
    schema = NodeSchema(type_id="Loader", display_name="Load Thing", category="loaders", description="Loads.",
                        inputs=(Combo("ckpt_name", lambda env: env.models.list("checkpoints"), tooltip="which"),
                                Int("seed", 0, min=0, max=2**32, control_after_generate=True),
                                String("text", multiline=True), Combo("image", ["a.png"], image_upload=True),
                                Socket("clip", "CLIP", optional=True)),
                        outputs=(Out("MODEL", "model", tooltip="the model"), Out("CLIP")))

    @classmethod
    def execute(cls, ctx, **kwargs):
        return (None, None)


async def test_object_info_derives_from_declarations(tmp_path):
    engine = make_engine(tmp_path)
    engine.registry.register(Loader)
    async with serve(tmp_path, engine=engine) as client:
        info = (await (await client.get("/object_info/Loader")).json())["Loader"]
        assert info["input"]["required"]["ckpt_name"] == [[], {"tooltip": "which"}]
        (tmp_path / "models" / "checkpoints").mkdir(parents=True)
        (tmp_path / "models" / "checkpoints" / "sd15.safetensors").write_bytes(b"")
        info = (await (await client.get("/api/object_info")).json())["Loader"]  # options are resolved per request
        assert info["input"]["required"]["ckpt_name"] == [["sd15.safetensors"], {"tooltip": "which"}]
        assert info["input"]["required"]["seed"] == ["INT", {"default": 0, "min": 0, "max": 2**32, "step": 1,
                                                             "control_after_generate": True}]
        assert info["input"]["required"]["text"] == ["STRING", {"default": "", "multiline": True}]
        assert info["input"]["required"]["image"] == [["a.png"], {"default": "a.png", "image_upload": True}]
        assert info["input"]["optional"] == {"clip": ["CLIP"]}
        assert info["input_order"] == {"required": ["ckpt_name", "seed", "text", "image"], "optional": ["clip"]}
        assert (info["output"], info["output_name"], info["output_is_list"]) == (["MODEL", "CLIP"], ["model", "CLIP"],
                                                                                 [False, False])
        assert info["output_tooltips"] == ["the model", ""]
        assert {k: info[k] for k in ("name", "display_name", "description", "category", "output_node", "deprecated",
                                     "experimental")} == {"name": "Loader", "display_name": "Load Thing",
                                                          "description": "Loads.", "category": "loaders",
                                                          "output_node": False, "deprecated": False,
                                                          "experimental": False}
        assert info["python_module"] == __name__
        everything = await (await client.get("/object_info")).json()
        assert everything["Collect"]["output_node"] is True and everything["Add"]["input"]["required"]["a"] == [
            "INT", {"forceInput": True}]
        assert await (await client.get("/object_info/NoSuchNode")).json() == {}


async def test_system_stats_models_embeddings_features(tmp_path):
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    (tmp_path / "models" / "embeddings" / "easyneg.safetensors").write_bytes(b"")
    async with serve(tmp_path) as client:
        stats = await (await client.get("/system_stats")).json()
        assert stats["system"]["embedded_python"] is False and stats["system"]["python_version"]
        assert stats["system"]["comfyui_version"] and stats["system"]["os"]
        (device,) = stats["devices"]
        assert device["type"] == "cpu" and device["vram_total"] >= device["vram_free"] > 0
        assert {"name", "torch_vram_total", "torch_vram_free"} <= set(device)
        assert await (await client.get("/embeddings")).json() == ["easyneg"]
        folders = await (await client.get("/models")).json()
        assert {"checkpoints", "loras", "vae", "embeddings"} <= set(folders)
        assert await (await client.get("/models/embeddings")).json() == ["easyneg.safetensors"]
        assert (await client.get("/models/nonsense")).status == 404
        features = await (await client.get("/features")).json()
        assert features["supports_preview_metadata"] is True and features["max_upload_size"] > 0


class FakeModel:
    """A model the manager can hold: it only says how big it is."""

    nbytes = 1_000_000


async def test_free_unloads_models_and_clears_outputs_between_prompts(tmp_path):
    engine = make_engine(tmp_path)
    manager = engine.env.model_manager
    ref = manager.ref("fake", lambda device: FakeModel(), name="fake model")
    ref.get()
    async with serve(tmp_path, engine=engine) as client:
        await wait_history(client, (await submit(client, api_prompt(1)))["prompt_id"])
        assert len(engine.cache) > 0
        stats = await (await client.get("/system_stats")).json()
        assert [m["name"] for m in stats["models"]["models"]] == ["fake model"]
        assert stats["models"]["ram_bytes"] == 1_000_000
        response = await client.post("/free", json={"unload_models": False, "free_memory": True})
        assert response.status == 200
        for _ in range(200):
            if len(engine.cache) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(engine.cache) == 0 and manager.is_loaded(ref)  # free_memory alone keeps models
        response = await client.post("/free", json={"unload_models": True})
        assert response.status == 200
        for _ in range(200):
            if not manager.is_loaded(ref):
                break
            await asyncio.sleep(0.01)
        assert manager.loaded_bytes() == 0
        stats = await (await client.get("/system_stats")).json()
        assert stats["models"]["models"] == [] and stats["models"]["evictions"] == 1


async def test_openapi_describes_the_routes_with_models(tmp_path):
    async with serve(tmp_path) as client:
        doc = await (await client.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.")
        for path in ("/prompt", "/queue", "/history", "/history/{prompt_id}", "/interrupt", "/view", "/upload/image",
                     "/upload/mask", "/object_info", "/system_stats", "/embeddings", "/models", "/features", "/free",
                     "/ws"):
            assert path in doc["paths"], path
        post = doc["paths"]["/prompt"]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PromptRequest")
        assert post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/PromptErrorResponse")
        schemas = doc["components"]["schemas"]
        assert {"prompt", "client_id", "extra_data", "front", "partial_execution_targets"} <= set(
            schemas["PromptRequest"]["properties"])
        assert "node_errors" in schemas["PromptErrorResponse"]["properties"]
        refs = [ref for ref in _refs(doc)]
        assert refs and all(ref.split("/")[-1] in schemas for ref in refs)


def _refs(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)

"""TEST DATA: declarations of the ComfyUI node types in the corpus, with ComfyUI's exact input names, order and
types (from ComfyUI's `nodes.py` / `comfy_extras` definitions), so the format converters can be tested before our
SD nodes exist. They only declare; executing one raises. The real node set replaces them when it lands.
"""

from __future__ import annotations

from nodegraph import Boolean, Combo, Float, Int, Node, NodeRegistry, NodeSchema, Out, Socket, String
from nodegraph.schema import InputSpec, OutputSpec

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "dpmpp_2m_sde", "uni_pc",
            "uni_pc_bh2", "res_multistep", "ddim", "lcm"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
CHECKPOINTS = ["v1-5-pruned-emaonly-fp16.safetensors", "tiny-sd.safetensors"]
MAX = 0xFFFFFFFFFFFFFFFF


def _seed(name: str = "seed") -> InputSpec:
    return Int(name, 0, min=0, max=MAX, control_after_generate=True)


def _declare(type_id: str, inputs: tuple[InputSpec, ...], outputs: tuple[OutputSpec, ...] = (),
             output_node: bool = False) -> type[Node]:
    schema = NodeSchema(type_id=type_id, category="test/comfy", inputs=inputs, outputs=outputs,
                        output_node=output_node)
    return type(type_id, (Node,), {"schema": schema})


def _dim(name: str, default: int) -> InputSpec:
    return Int(name, default, min=16, max=16384, step=8)


DECLARATIONS = [
    _declare("CheckpointLoaderSimple", (Combo("ckpt_name", CHECKPOINTS),),
             (Out("MODEL"), Out("CLIP"), Out("VAE"))),
    _declare("CLIPTextEncode", (String("text", multiline=True), Socket("clip", "CLIP")), (Out("CONDITIONING"),)),
    _declare("KSampler", (Socket("model", "MODEL"), _seed(), Int("steps", 20, min=1, max=10000),
                          Float("cfg", 8.0, min=0.0, max=100.0), Combo("sampler_name", SAMPLERS),
                          Combo("scheduler", SCHEDULERS), Socket("positive", "CONDITIONING"),
                          Socket("negative", "CONDITIONING"), Socket("latent_image", "LATENT"),
                          Float("denoise", 1.0, min=0.0, max=1.0)), (Out("LATENT"),)),
    _declare("KSamplerAdvanced", (Socket("model", "MODEL"), Combo("add_noise", ["enable", "disable"]),
                                  _seed("noise_seed"), Int("steps", 20, min=1, max=10000),
                                  Float("cfg", 8.0, min=0.0, max=100.0), Combo("sampler_name", SAMPLERS),
                                  Combo("scheduler", SCHEDULERS), Socket("positive", "CONDITIONING"),
                                  Socket("negative", "CONDITIONING"), Socket("latent_image", "LATENT"),
                                  Int("start_at_step", 0, min=0, max=10000), Int("end_at_step", 10000, min=0, max=10000),
                                  Combo("return_with_leftover_noise", ["disable", "enable"])), (Out("LATENT"),)),
    _declare("EmptyLatentImage", (_dim("width", 512), _dim("height", 512), Int("batch_size", 1, min=1, max=4096)),
             (Out("LATENT"),)),
    _declare("EmptySD3LatentImage", (_dim("width", 1024), _dim("height", 1024), Int("batch_size", 1, min=1, max=4096)),
             (Out("LATENT"),)),
    _declare("VAEDecode", (Socket("samples", "LATENT"), Socket("vae", "VAE")), (Out("IMAGE"),)),
    _declare("VAEEncode", (Socket("pixels", "IMAGE"), Socket("vae", "VAE")), (Out("LATENT"),)),
    _declare("VAEEncodeForInpaint", (Socket("pixels", "IMAGE"), Socket("vae", "VAE"), Socket("mask", "MASK"),
                                     Int("grow_mask_by", 6, min=0, max=64)), (Out("LATENT"),)),
    _declare("SaveImage", (Socket("images", "IMAGE"), String("filename_prefix", "ComfyUI")), output_node=True),
    _declare("LoadImage", (Combo("image", ["example.png", "input_scribble_example.png",
                                           "yosemite_outpaint_example.png"], image_upload=True),),
             (Out("IMAGE"), Out("MASK"))),
    _declare("LoraLoader", (Socket("model", "MODEL"), Socket("clip", "CLIP"),
                            Combo("lora_name", ["epiNoiseoffset_v2.safetensors"]),
                            Float("strength_model", 1.0, min=-100.0, max=100.0),
                            Float("strength_clip", 1.0, min=-100.0, max=100.0)), (Out("MODEL"), Out("CLIP"))),
    _declare("ControlNetLoader", (Combo("control_net_name", ["control_scribble.safetensors"]),),
             (Out("CONTROL_NET"),)),
    _declare("ControlNetApply", (Socket("conditioning", "CONDITIONING"), Socket("control_net", "CONTROL_NET"),
                                 Socket("image", "IMAGE"), Float("strength", 1.0, min=0.0, max=10.0)),
             (Out("CONDITIONING"),)),
    _declare("VAELoader", (Combo("vae_name", ["vae-ft-mse-840000-ema-pruned.safetensors", "ae.safetensors"]),),
             (Out("VAE"),)),
    _declare("LatentUpscale", (Socket("samples", "LATENT"),
                               Combo("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]),
                               Int("width", 512, min=0, max=16384), Int("height", 512, min=0, max=16384),
                               Combo("crop", ["disabled", "center"])), (Out("LATENT"),)),
    _declare("ConditioningSetArea", (Socket("conditioning", "CONDITIONING"), Int("width", 64, min=64, max=16384),
                                     Int("height", 64, min=64, max=16384), Int("x", 0, min=0, max=16384),
                                     Int("y", 0, min=0, max=16384), Float("strength", 1.0, min=0.0, max=10.0)),
             (Out("CONDITIONING"),)),
    _declare("ConditioningCombine", (Socket("conditioning_1", "CONDITIONING"),
                                     Socket("conditioning_2", "CONDITIONING")), (Out("CONDITIONING"),)),
    _declare("ConditioningZeroOut", (Socket("conditioning", "CONDITIONING"),), (Out("CONDITIONING"),)),
    _declare("CLIPSetLastLayer", (Socket("clip", "CLIP"), Int("stop_at_clip_layer", -1, min=-24, max=-1)),
             (Out("CLIP"),)),
    _declare("ImagePadForOutpaint", (Socket("image", "IMAGE"), Int("left", 0, min=0, max=16384),
                                     Int("top", 0, min=0, max=16384), Int("right", 0, min=0, max=16384),
                                     Int("bottom", 0, min=0, max=16384), Int("feathering", 40, min=0, max=16384)),
             (Out("IMAGE"), Out("MASK"))),
    _declare("InvertMask", (Socket("mask", "MASK"),), (Out("MASK"),)),
    _declare("CLIPLoader", (Combo("clip_name", ["qwen_3_4b.safetensors"]),
                            Combo("type", ["stable_diffusion", "sd3", "lumina2"]),
                            Combo("device", ["default", "cpu"], optional=True)), (Out("CLIP"),)),
    _declare("UNETLoader", (Combo("unet_name", ["z_image_turbo_bf16.safetensors"]),
                            Combo("weight_dtype", ["default", "fp8_e4m3fn"])), (Out("MODEL"),)),
    _declare("ModelSamplingAuraFlow", (Socket("model", "MODEL"), Float("shift", 1.73, min=0.0, max=100.0)),
             (Out("MODEL"),)),
    _declare("PreviewBool", (Boolean("value"),), output_node=True),
]


def comfy_registry() -> NodeRegistry:
    return NodeRegistry(DECLARATIONS)

// The graph shown on first open: ComfyUI's default text-to-image graph on the embedded model, in our native format.

const DEFAULT_WORKFLOW = {
  format: "nodegraph",
  version: 1,
  nodes: {
    4: { type: "CheckpointLoaderSimple", pos: [-60, 330], widgets: { ckpt_name: "nodegraph-tiny-shapes.safetensors" } },
    6: {
      type: "CLIPTextEncode", pos: [390, 60], size: [410, 180],
      widgets: { text: "a red circle on a blue background" },
    },
    7: { type: "CLIPTextEncode", pos: [390, 280], size: [410, 180], widgets: { text: "" } },
    5: { type: "EmptyLatentImage", pos: [390, 500], widgets: { width: 128, height: 128, batch_size: 4 } },
    3: {
      type: "KSampler", pos: [840, 60], size: [300, 0],
      widgets: { seed: 156680208700286, steps: 20, cfg: 6, sampler_name: "euler", scheduler: "simple", denoise: 1 },
      control_after_generate: { seed: "randomize" },
    },
    8: { type: "VAEDecode", pos: [1180, 60], widgets: {} },
    9: { type: "SaveImage", pos: [1370, 60], size: [320, 380], widgets: { filename_prefix: "nodegraph" } },
  },
  links: [
    { from_node: "4", from_slot: 0, to_node: "3", to_input: "model" },
    { from_node: "4", from_slot: 1, to_node: "6", to_input: "clip" },
    { from_node: "4", from_slot: 1, to_node: "7", to_input: "clip" },
    { from_node: "6", from_slot: 0, to_node: "3", to_input: "positive" },
    { from_node: "7", from_slot: 0, to_node: "3", to_input: "negative" },
    { from_node: "5", from_slot: 0, to_node: "3", to_input: "latent_image" },
    { from_node: "3", from_slot: 0, to_node: "8", to_input: "samples" },
    { from_node: "4", from_slot: 2, to_node: "8", to_input: "vae" },
    { from_node: "8", from_slot: 0, to_node: "9", to_input: "images" },
  ],
  groups: [],
  extra: {},
};

/** The default workflow; a model name the server does not have becomes the server's first choice. */
export function defaultWorkflow(defs) {
  const workflow = JSON.parse(JSON.stringify(DEFAULT_WORKFLOW));
  for (const node of Object.values(workflow.nodes)) {
    const def = defs.get(node.type);
    if (!def) continue;
    for (const [name, value] of Object.entries(node.widgets)) {
      const spec = def.inputMap.get(name);
      if (spec && spec.type === "COMBO" && spec.options && spec.options.length && !spec.options.includes(value)) {
        node.widgets[name] = spec.options[0];
      }
    }
  }
  return workflow;
}

// Workflow formats at the edge: the API-format prompt we queue, and importing any workflow JSON
// (ours, ComfyUI's UI format v0.4/v1, ComfyUI's API format) into our native workflow.

import { fromComfyUi } from "./comfy_ui.js";
import { nodeLayout } from "./layout.js";

/** A muted node's output passes nothing; a bypassed node's output takes its first linked input of that type. */
function passthrough(graph, nodeId, slot) {
  const seen = new Set();
  while (true) {
    const node = graph.nodes.get(nodeId);
    if (!node) return null;
    if (node.mode === "always") return [nodeId, slot];
    if (node.mode === "never" || seen.has(`${nodeId}:${slot}`)) return null;
    seen.add(`${nodeId}:${slot}`);
    const def = graph.defs.get(node.type);
    if (!def || slot >= def.outputs.length) return null;
    const wanted = def.outputs[slot].type;
    let source = null;
    for (const spec of def.inputs) {
      const link = graph.linkInto(nodeId, spec.name);
      if (spec.type === wanted && link) {
        source = link;
        break;
      }
    }
    if (!source) return null;
    nodeId = source.from_node;
    slot = source.from_slot;
  }
}

/**
 * The API-format prompt of the graph (what POST /prompt takes): muted nodes dropped, bypassed nodes
 * wired through, links as [node_id, slot], widget values by input name.
 */
export function toApiPrompt(graph) {
  const prompt = {};
  for (const node of graph.nodes.values()) {
    if (node.mode !== "always") continue;
    const def = graph.defs.get(node.type);
    const names = def ? def.inputs.map((spec) => spec.name) : [];
    for (const name of Object.keys(node.widgets)) if (!names.includes(name)) names.push(name);
    for (const link of graph.links.values()) {
      if (link.to_node === node.id && !names.includes(link.to_input)) names.push(link.to_input);
    }
    const inputs = {};
    for (const name of names) {
      const link = graph.linkInto(node.id, name);
      const source = link ? passthrough(graph, link.from_node, link.from_slot) : null;
      if (source) inputs[name] = [source[0], source[1]];
      else if (name in node.widgets && (!def || !def.inputMap.get(name) || def.inputMap.get(name).widget)) {
        const value = node.widgets[name];
        inputs[name] = Array.isArray(value) ? { __value__: value } : value;
      }
    }
    prompt[node.id] = { class_type: node.type, inputs, _meta: { title: node.title || (def ? def.displayName : node.type) } };
  }
  return prompt;
}

export function isApiFormat(data) {
  return Boolean(data) && typeof data === "object" && !Array.isArray(data) && Object.keys(data).length > 0 &&
    Object.values(data).every((node) => node && typeof node === "object" && typeof node.class_type === "string");
}

const isLink = (value) => Array.isArray(value) && value.length === 2 &&
  (typeof value[0] === "string" || typeof value[0] === "number") && Number.isInteger(value[1]);

/** Our workflow from an API-format prompt (no positions: the caller arranges the nodes). */
export function fromApi(prompt, defs) {
  const nodes = {};
  const links = [];
  for (const [id, entry] of Object.entries(prompt)) {
    const def = defs.get(entry.class_type);
    const widgets = {};
    const converted = [];
    for (const [name, value] of Object.entries(entry.inputs || {})) {
      if (isLink(value)) {
        links.push({ from_node: String(value[0]), from_slot: value[1], to_node: String(id), to_input: name });
        const spec = def && def.inputMap.get(name);
        if (spec && spec.widget) converted.push(name);
      } else if (value && typeof value === "object" && "__value__" in value) widgets[name] = value.__value__;
      else widgets[name] = value;
    }
    nodes[String(id)] = { type: entry.class_type, widgets, converted_widgets: converted };
    if (entry._meta && entry._meta.title) nodes[String(id)].title = entry._meta.title;
  }
  return { format: "nodegraph", version: 1, nodes, links, groups: [], extra: {} };
}

/**
 * Read any supported workflow JSON. Returns {workflow, kind, warnings, needsLayout}; throws with a
 * message saying why the data is not a workflow we read.
 */
export function importWorkflow(data, defs) {
  if (!data || typeof data !== "object") throw new Error("not a workflow: expected a JSON object");
  if (data.format === "nodegraph" || (data.nodes && !Array.isArray(data.nodes) && typeof data.nodes === "object" && !isApiFormat(data))) {
    if (data.format && data.format !== "nodegraph") throw new Error(`unknown workflow format ${JSON.stringify(data.format)}`);
    if (Number(data.version) > 1) throw new Error(`workflow version ${data.version} is newer than this editor reads (1)`);
    return { workflow: data, kind: "nodegraph", warnings: [], needsLayout: false };
  }
  if (Array.isArray(data.nodes)) {
    const { workflow, warnings } = fromComfyUi(data, defs);
    return { workflow, kind: `ComfyUI workflow v${data.version ?? "?"}`, warnings, needsLayout: false };
  }
  const prompt = isApiFormat(data) ? data : isApiFormat(data.prompt) ? data.prompt : null;
  if (prompt) return { workflow: fromApi(prompt, defs), kind: "ComfyUI API prompt", warnings: [], needsLayout: true };
  throw new Error("not a workflow: no nodes found (expected nodegraph, ComfyUI UI or API format)");
}

/** Place nodes in columns by their depth in the graph (for prompts that carry no positions). */
export function arrangeGraph(graph, origin = [40, 40]) {
  const depth = new Map();
  const incoming = new Map([...graph.nodes.keys()].map((id) => [id, []]));
  for (const link of graph.links.values()) if (incoming.has(link.to_node)) incoming.get(link.to_node).push(link.from_node);
  const visit = (id, trail = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (trail.has(id)) return 0;
    trail.add(id);
    let d = 0;
    for (const source of incoming.get(id) || []) if (graph.nodes.has(source)) d = Math.max(d, visit(source, trail) + 1);
    depth.set(id, d);
    return d;
  };
  for (const id of graph.nodes.keys()) visit(id);
  const columns = [];
  for (const [id, d] of depth) (columns[d] = columns[d] || []).push(id);
  let x = origin[0];
  for (const column of columns) {
    if (!column) continue;
    let y = origin[1];
    let widest = 0;
    for (const id of column) {
      const node = graph.nodes.get(id);
      node.pos = [x, y];
      const lay = nodeLayout(graph, node);
      y += lay.h + 40;
      widest = Math.max(widest, lay.w);
    }
    x += widest + 70;
  }
}

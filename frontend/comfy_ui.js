// Import ComfyUI's UI workflow JSON (schema v0.4 with links as arrays, v1 with links as objects) into
// our native workflow: positional widgets_values become widgets by name, slot indices become input names,
// and ComfyUI's frontend-only nodes (Reroute, PrimitiveNode, Note) are resolved away.

import { SEED_CONTROLS, widgetSpecs } from "./defs.js";
import { TITLE_H } from "./layout.js";

const MODES = { 0: "always", 2: "never", 4: "bypass" };
const FRONTEND_ONLY = new Set(["Reroute", "PrimitiveNode", "Note", "MarkdownNote"]);

function pair(value, fallback) {
  if (Array.isArray(value)) return [Number(value[0]) || 0, Number(value[1]) || 0];
  if (value && typeof value === "object") return [Number(value[0] ?? value["0"]) || 0, Number(value[1] ?? value["1"]) || 0];
  return fallback;
}

function normaliseLink(link) {
  if (Array.isArray(link)) {
    const [id, originId, originSlot, targetId, targetSlot, type] = link;
    return { id, originId, originSlot, targetId, targetSlot, type };
  }
  return {
    id: link.id, originId: link.origin_id, originSlot: link.origin_slot,
    targetId: link.target_id, targetSlot: link.target_slot, type: link.type,
  };
}

/** widgets_values (a list in widget order, or an object by name) -> {widgets, controls}. */
function mapWidgetValues(def, values) {
  const widgets = {};
  const controls = {};
  if (!values) return { widgets, controls };
  if (!Array.isArray(values)) {
    for (const spec of widgetSpecs(def)) if (spec.name in values) widgets[spec.name] = values[spec.name];
    return { widgets, controls };
  }
  let i = 0;
  for (const spec of widgetSpecs(def)) {
    if (i >= values.length) break;
    widgets[spec.name] = values[i++];
    // ComfyUI stores a seed's "control after generate" mode right after its value.
    if (spec.type === "INT" && typeof values[i] === "string" && SEED_CONTROLS.includes(values[i])) controls[spec.name] = values[i++];
    if (spec.imageUpload && values[i] === "image") i++;
  }
  return { widgets, controls };
}

/**
 * Convert a ComfyUI UI-format workflow. Returns {workflow, warnings}; node types the server does not
 * know are kept (shown as missing) with their raw widget values.
 */
export function fromComfyUi(data, defs) {
  const warnings = [];
  const raw = new Map(data.nodes.map((node) => [String(node.id), node]));
  const links = new Map((data.links || []).filter(Boolean).map((link) => {
    const clean = normaliseLink(link);
    return [String(clean.id), clean];
  }));
  if (data.definitions && data.definitions.subgraphs && data.definitions.subgraphs.length) {
    warnings.push("subgraphs are not supported: their nodes are shown as missing");
  }

  /** Follow a link's origin through Reroutes; a PrimitiveNode gives a value instead of a source. */
  const resolveSource = (originId, originSlot, depth = 0) => {
    const node = raw.get(String(originId));
    if (!node || depth > 64) return null;
    if (node.type === "Reroute") {
      const input = (node.inputs || [])[0];
      const upstream = input && input.link !== null && input.link !== undefined ? links.get(String(input.link)) : null;
      return upstream ? resolveSource(upstream.originId, upstream.originSlot, depth + 1) : null;
    }
    if (node.type === "PrimitiveNode") {
      const values = node.widgets_values || [];
      return { value: values[0] };
    }
    return { node: String(originId), slot: Number(originSlot) || 0 };
  };

  const nodes = {};
  let dropped = 0;
  for (const node of data.nodes) {
    if (FRONTEND_ONLY.has(node.type)) {
      if (node.type === "Note" || node.type === "MarkdownNote") dropped++;
      continue;
    }
    const def = defs.get(node.type);
    const pos = pair(node.pos, [0, 0]);
    const size = pair(node.size, null);
    const out = {
      type: node.type,
      pos: [pos[0], pos[1] - TITLE_H],
      mode: MODES[node.mode] || "always",
      widgets: {},
      converted_widgets: [],
    };
    if (size) out.size = [size[0], size[1] + TITLE_H];
    if (node.flags && node.flags.collapsed) out.collapsed = true;
    if (node.title && node.title !== (def ? def.displayName : node.type) && node.title !== node.type) out.title = node.title;
    if (node.color) out.color = node.color;
    if (def) {
      const { widgets, controls } = mapWidgetValues(def, node.widgets_values);
      out.widgets = widgets;
      if (Object.keys(controls).length) out.control_after_generate = controls;
    } else {
      out.comfy_widgets_values = node.widgets_values ?? [];
      warnings.push(`node ${node.id}: type ${node.type} is not installed on the server`);
    }
    nodes[String(node.id)] = out;
  }

  const outLinks = [];
  for (const link of links.values()) {
    const target = raw.get(String(link.targetId));
    const targetNode = nodes[String(link.targetId)];
    if (!target || !targetNode) continue;
    const input = (target.inputs || [])[link.targetSlot];
    if (!input) {
      warnings.push(`link ${link.id}: node ${link.targetId} has no input slot ${link.targetSlot}`);
      continue;
    }
    const name = (input.widget && input.widget.name) || input.name;
    const source = resolveSource(link.originId, link.originSlot);
    if (!source) continue;
    if ("value" in source) {
      targetNode.widgets[name] = source.value;
      continue;
    }
    if (!nodes[source.node]) continue;
    const def = defs.get(target.type);
    const spec = def && def.inputMap.get(name);
    if (spec && spec.widget && !targetNode.converted_widgets.includes(name)) targetNode.converted_widgets.push(name);
    outLinks.push({ from_node: source.node, from_slot: source.slot, to_node: String(link.targetId), to_input: name });
  }
  if (dropped) warnings.push(`${dropped} note node(s) were left out`);

  const groups = (data.groups || []).map((group) => ({
    title: group.title ?? "Group",
    bounding: (group.bounding || [0, 0, 300, 200]).map(Number),
    color: group.color || null,
  }));
  const extra = { ...(data.extra || {}) };
  delete extra.ds;
  return { workflow: { format: "nodegraph", version: 1, nodes, links: outLinks, groups, extra }, warnings };
}

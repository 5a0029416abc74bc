// Node geometry: sizes, socket and widget positions, hit testing. Shared by drawing and interaction,
// so what you see is exactly what you click. Coordinates are node-local unless named `world`.

import { widgetSpecs } from "./defs.js";

export const TITLE_H = 30;
export const ROW_H = 22;
export const WIDGET_H = 22;
export const WIDGET_GAP = 4;
export const MULTILINE_H = 76;
export const PAD = 10;
export const SOCKET_R = 5;
export const GROUP_TITLE_H = 32;
export const FONT_FAMILY = '"DejaVu Sans", "Segoe UI", Roboto, Arial, sans-serif';
export const FONT = `13px ${FONT_FAMILY}`;
export const SMALL_FONT = `12px ${FONT_FAMILY}`;
export const TITLE_FONT = `bold 14px ${FONT_FAMILY}`;
export const GROUP_FONT = `bold 20px ${FONT_FAMILY}`;
const TEXT_LINE_H = 16;
const IMAGE_TARGET_H = 256;
const WIDGET_MAX_W = 420;
const IMAGE_MAX_W = 512;
const IMAGE_MAX_H = 512;

let measureCtx = null;
const widthCache = new Map();

/** Width of `text` in `font` (cached: text measuring dominates layout cost). */
export function textWidth(text, font = FONT) {
  const key = `${font}|${text}`;
  let width = widthCache.get(key);
  if (width === undefined) {
    if (!measureCtx) measureCtx = document.createElement("canvas").getContext("2d");
    measureCtx.font = font;
    width = measureCtx.measureText(text).width;
    if (widthCache.size > 20000) widthCache.clear();
    widthCache.set(key, width);
  }
  return width;
}

let runtimeOf = () => null;
/** Where layout finds a node's run results (images and text change its size). */
export function setRuntimeSource(fn) {
  runtimeOf = fn;
}

export function nodeTitle(node, def) {
  return node.title || (def ? def.displayName : node.type);
}

/** A widget value as its row shows it (FLOATs to their step's decimals). */
export function shownValue(spec, value) {
  if (value === undefined || value === null) return "";
  if (spec.type === "FLOAT" && typeof value === "number") {
    const quantum = spec.round || spec.step || 0.01;
    return value.toFixed(Math.min(6, Math.max(0, Math.ceil(-Math.log10(quantum) - 1e-9))));
  }
  return typeof value === "string" ? value : JSON.stringify(value);
}

function widgetKind(spec) {
  if (spec.type === "COMBO") return "combo";
  if (spec.type === "BOOLEAN") return "toggle";
  if (spec.type === "STRING") return spec.multiline ? "multiline" : "text";
  return "number";
}

/** Sockets and widgets of a node whose type the server does not know, from its links and values. */
function missingParts(graph, node) {
  const inputs = [];
  for (const link of graph.links.values()) {
    if (link.to_node === node.id) inputs.push({ name: link.to_input, label: link.to_input, type: "?" });
  }
  let slots = 0;
  for (const link of graph.links.values()) if (link.from_node === node.id) slots = Math.max(slots, link.from_slot + 1);
  const outputs = Array.from({ length: slots }, (_, i) => ({ name: `output ${i}`, type: "?" }));
  const widgets = Object.keys(node.widgets)
    .filter((name) => !inputs.some((input) => input.name === name))
    .map((name) => ({ name, kind: "readonly", spec: { name, type: "?" } }));
  return { inputs, outputs, widgets };
}

function knownParts(node, def) {
  const converted = new Set(node.converted);
  const inputs = def.inputs
    .filter((spec) => !spec.widget)
    .concat(def.inputs.filter((spec) => spec.widget && converted.has(spec.name)))
    .map((spec) => ({ name: spec.name, label: spec.name, type: spec.type, spec, optional: spec.optional }));
  const outputs = def.outputs.map((out) => ({ name: out.name, type: out.type, isList: Boolean(out.isList) }));
  const widgets = [];
  for (const spec of widgetSpecs(def)) {
    if (converted.has(spec.name)) continue;
    widgets.push({ name: spec.name, kind: widgetKind(spec), spec });
    if (spec.controlAfterGenerate) widgets.push({ name: spec.name, kind: "control", spec });
    if (spec.imageUpload) widgets.push({ name: spec.name, kind: "upload", spec });
  }
  return { inputs, outputs, widgets };
}

/** The node's layout, cached until `graph.touch(node)` or its run results change. */
export function nodeLayout(graph, node) {
  const runtime = runtimeOf(node.id);
  const key = `${runtime ? runtime.version : 0}|${node.collapsed}|${node.size}|${node.title}`;
  if (node._lay && node._lay.key === key) return node._lay;
  const def = graph.defs.get(node.type);
  const title = nodeTitle(node, def);
  // The mode (bypass, mute) is shown by colour only: it never changes a node's size (neighbours stay clear).
  const titleW = textWidth(def ? title : `${title} (missing)`, TITLE_FONT);
  const lay = { key, missing: !def, def, title, collapsed: node.collapsed };
  const parts = def ? knownParts(node, def) : missingParts(graph, node);
  Object.assign(lay, parts);
  if (node.collapsed) {
    lay.w = Math.max(80, titleW + 56);
    lay.h = TITLE_H;
    node._lay = lay;
    return lay;
  }
  let w = Math.max(140, titleW + 56);
  const rows = Math.max(lay.inputs.length, lay.outputs.length);
  for (let i = 0; i < rows; i++) {
    const left = lay.inputs[i] ? textWidth(lay.inputs[i].label, SMALL_FONT) : 0;
    const right = lay.outputs[i] ? textWidth(lay.outputs[i].name, SMALL_FONT) : 0;
    w = Math.max(w, left + right + 56);
  }
  if (lay.widgets.length) w = Math.max(w, 250);
  for (const widget of lay.widgets) {
    if (widget.kind === "multiline" || widget.kind === "upload") continue;
    const value = widget.kind === "control" ? node.controls[widget.name] || "fixed" : shownValue(widget.spec, node.widgets[widget.name]);
    const label = widget.kind === "control" ? "control after generate" : widget.name;
    w = Math.max(w, Math.min(WIDGET_MAX_W, textWidth(label) + textWidth(value) + 80)); // value and label both readable
  }
  lay.inputs.forEach((input, i) => (input.y = TITLE_H + 4 + i * ROW_H + ROW_H / 2));
  lay.outputs.forEach((output, i) => (output.y = TITLE_H + 4 + i * ROW_H + ROW_H / 2));
  let y = TITLE_H + 4 + rows * ROW_H + (rows ? 6 : 2);
  for (const widget of lay.widgets) {
    widget.y = y;
    widget.h = widget.kind === "multiline" ? MULTILINE_H : WIDGET_H;
    y += widget.h + WIDGET_GAP;
  }
  const textLines = runtime && runtime.text ? runtime.text.slice(0, 8) : [];
  if (textLines.length) {
    lay.textArea = { y: y + 2, h: textLines.length * TEXT_LINE_H + 10, lines: textLines };
    y += lay.textArea.h + 6;
  }
  // a sampler's step preview takes the place of images until the node has real ones (previews.js)
  const images = !runtime ? [] : runtime.images.length || !runtime.preview ? runtime.images : [runtime.preview];
  const first = images.find((img) => img.width);
  const aspect = first ? first.height / first.width : 1;
  if (first) w = Math.max(w, Math.min(IMAGE_MAX_W, IMAGE_TARGET_H / aspect) + 2 * PAD); // room to see the image
  if (node.size) w = Math.max(w, node.size[0]);
  lay.w = Math.round(w);
  const contentH = y + PAD - 4;
  let h = contentH;
  if (images.length) h = contentH + Math.min(IMAGE_MAX_H, Math.max(120, (lay.w - 2 * PAD) * aspect)) + PAD;
  if (node.size) h = Math.max(h, node.size[1]);
  lay.h = Math.round(h);
  lay.minH = contentH;
  lay.imageArea = images.length ? { x: PAD, y: contentH, w: lay.w - 2 * PAD, h: lay.h - contentH - PAD } : null;
  node._lay = lay;
  return lay;
}

/** World position of an input socket (by name) or an output socket (by slot). */
export function inputPos(graph, node, name) {
  const lay = nodeLayout(graph, node);
  if (lay.collapsed) return [node.pos[0], node.pos[1] + TITLE_H / 2];
  const input = lay.inputs.find((item) => item.name === name);
  return [node.pos[0], node.pos[1] + (input ? input.y : TITLE_H / 2)];
}

export function outputPos(graph, node, slot) {
  const lay = nodeLayout(graph, node);
  if (lay.collapsed) return [node.pos[0] + lay.w, node.pos[1] + TITLE_H / 2];
  const output = lay.outputs[slot];
  return [node.pos[0] + lay.w, node.pos[1] + (output ? output.y : TITLE_H / 2)];
}

/** The node under a world point (topmost first), or null. */
export function nodeAt(graph, wx, wy, margin = 0) {
  const nodes = [...graph.nodes.values()];
  for (let i = nodes.length - 1; i >= 0; i--) {
    const node = nodes[i];
    const lay = nodeLayout(graph, node);
    if (wx >= node.pos[0] - margin && wx <= node.pos[0] + lay.w + margin &&
        wy >= node.pos[1] && wy <= node.pos[1] + lay.h) return node;
  }
  return null;
}

/** What part of `node` a world point hits: collapse, title, input, output, widget, resize or body. */
export function hitPart(graph, node, wx, wy) {
  const lay = nodeLayout(graph, node);
  const x = wx - node.pos[0];
  const y = wy - node.pos[1];
  if (y < TITLE_H) {
    if (lay.collapsed) {
      if (x < 10 && lay.inputs.length) return { part: "input", index: 0, name: lay.inputs[0].name };
      if (x > lay.w - 10 && lay.outputs.length) return { part: "output", index: 0 };
    }
    return { part: x < 26 ? "collapse" : "title" };
  }
  if (lay.collapsed) return { part: "title" };
  for (let i = 0; i < lay.inputs.length; i++) {
    const input = lay.inputs[i];
    if (Math.abs(y - input.y) <= ROW_H / 2 && x < Math.max(24, Math.min(lay.w / 2, textWidth(input.label, SMALL_FONT) + 24))) {
      return { part: "input", index: i, name: input.name };
    }
  }
  for (let i = 0; i < lay.outputs.length; i++) {
    const output = lay.outputs[i];
    if (Math.abs(y - output.y) <= ROW_H / 2 && x > lay.w - Math.max(24, Math.min(lay.w / 2, textWidth(output.name, SMALL_FONT) + 24))) {
      return { part: "output", index: i };
    }
  }
  if (x > lay.w - 14 && y > lay.h - 14) return { part: "resize" };
  for (let i = 0; i < lay.widgets.length; i++) {
    const widget = lay.widgets[i];
    if (y >= widget.y && y <= widget.y + widget.h && x >= PAD && x <= lay.w - PAD) {
      return { part: "widget", index: i, widget, x: x - PAD, width: lay.w - 2 * PAD };
    }
  }
  return { part: "body" };
}

/** The group whose title bar (or resize corner) is under a world point. */
export function groupAt(graph, wx, wy) {
  for (let i = graph.groups.length - 1; i >= 0; i--) {
    const group = graph.groups[i];
    const [x, y, w, h] = group.bounding;
    if (wx < x || wx > x + w || wy < y || wy > y + h) continue;
    if (wy <= y + GROUP_TITLE_H) return { group, part: "title" };
    if (wx > x + w - 16 && wy > y + h - 16) return { group, part: "resize" };
  }
  return null;
}

/** Ids of the nodes inside a group (their centre lies within it): they move with the group. */
export function nodesInGroup(graph, group) {
  const [x, y, w, h] = group.bounding;
  const ids = [];
  for (const node of graph.nodes.values()) {
    const lay = nodeLayout(graph, node);
    const cx = node.pos[0] + lay.w / 2;
    const cy = node.pos[1] + lay.h / 2;
    if (cx >= x && cx <= x + w && cy >= y && cy <= y + h) ids.push(node.id);
  }
  return ids;
}

/** World bounding box [x, y, w, h] of some nodes (all when ids is omitted). */
export function boundsOf(graph, ids = null) {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  const nodes = ids ? ids.map((id) => graph.nodes.get(id)).filter(Boolean) : [...graph.nodes.values()];
  for (const node of nodes) {
    const lay = nodeLayout(graph, node);
    x0 = Math.min(x0, node.pos[0]);
    y0 = Math.min(y0, node.pos[1]);
    x1 = Math.max(x1, node.pos[0] + lay.w);
    y1 = Math.max(y1, node.pos[1] + lay.h);
  }
  if (!ids) {
    for (const group of graph.groups) {
      const [gx, gy, gw, gh] = group.bounding;
      x0 = Math.min(x0, gx);
      y0 = Math.min(y0, gy);
      x1 = Math.max(x1, gx + gw);
      y1 = Math.max(y1, gy + gh);
    }
  }
  if (x0 === Infinity) return null;
  return [x0, y0, x1 - x0, y1 - y0];
}

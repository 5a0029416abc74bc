// Drawing one node: body, title, sockets (coloured by type), widgets, progress, images, errors.

import { typeColour } from "./defs.js";
import { rangeProblem } from "./error_panel.js";
import { FONT, PAD, SMALL_FONT, SOCKET_R, TITLE_FONT, TITLE_H, textWidth } from "./layout.js";
import { drawWidget, fitText, wrapLines } from "./widgets.js";

const BODY = "#353535";
const TITLE_BG = "#2b2b2b";
const MISSING_BODY = "#4a2323";
const MISSING_TITLE = "#a33030";

// A list output (ComfyUI's OUTPUT_IS_LIST) is drawn as ComfyUI's editor draws it: a small 3x3 grid of
// squares instead of a dot, so a user sees that what leaves it runs downstream once per item.
function drawGridSocket(ctx, x, y, colour, dimmed) {
  const cell = 3;
  const gap = 1;
  const half = (3 * cell + 2 * gap) / 2;
  ctx.globalAlpha *= dimmed ? 0.35 : 1;
  ctx.fillStyle = colour;
  for (let row = 0; row < 3; row++) {
    for (let col = 0; col < 3; col++) {
      ctx.fillRect(x - half + col * (cell + gap), y - half + row * (cell + gap), cell, cell);
    }
  }
  if (dimmed) ctx.globalAlpha /= 0.35;
}

function drawSocket(ctx, x, y, type, linked, highlight, dimmed, isList = false) {
  const colour = typeColour(type);
  if (highlight) {
    ctx.beginPath();
    ctx.arc(x, y, SOCKET_R + 5, 0, Math.PI * 2);
    ctx.fillStyle = "rgba(255,255,255,0.25)";
    ctx.fill();
  }
  if (isList) {
    drawGridSocket(ctx, x, y, colour, dimmed);
    return;
  }
  ctx.beginPath();
  ctx.arc(x, y, SOCKET_R, 0, Math.PI * 2);
  ctx.globalAlpha *= dimmed ? 0.35 : 1;
  if (linked || highlight) {
    ctx.fillStyle = colour;
    ctx.fill();
  } else {
    ctx.fillStyle = "#222";
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = colour;
    ctx.stroke();
  }
  if (dimmed) ctx.globalAlpha /= 0.35;
}

function drawImages(ctx, area, images) {
  const loaded = images.filter((img) => img.element && img.width);
  if (!loaded.length) return;
  const cols = Math.ceil(Math.sqrt(loaded.length));
  const rows = Math.ceil(loaded.length / cols);
  const cellW = area.w / cols;
  const cellH = area.h / rows;
  loaded.forEach((img, i) => {
    const scale = Math.min(cellW / img.width, cellH / img.height);
    const w = img.width * scale;
    const h = img.height * scale;
    const x = area.x + (i % cols) * cellW + (cellW - w) / 2;
    const y = area.y + Math.floor(i / cols) * cellH + (cellH - h) / 2;
    ctx.drawImage(img.element, x, y, w, h);
  });
}

/** The node's errors in a red box above it, each wrapped to the node's width (at most 6 lines in all). */
function drawErrors(ctx, lay, errors) {
  const lines = errors.flatMap((err) => {
    const where = err.input ? `${err.input}: ` : "";
    return wrapLines(`${where}${err.message}${err.details && err.details !== err.input ? ` — ${err.details}` : ""}`, lay.w - 12, 3);
  }).slice(0, 6);
  ctx.font = SMALL_FONT;
  const h = lines.length * 16 + 8;
  ctx.fillStyle = "rgba(120, 20, 20, 0.95)";
  ctx.beginPath();
  ctx.roundRect(0, -h - 6, lay.w, h, 5);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.textBaseline = "middle";
  lines.forEach((line, i) => ctx.fillText(line, 6, -h - 6 + 12 + i * 16));
}

/**
 * Draw `node` with its layout `lay`; the context is in world coordinates.
 * `view` has: selected, running, progress, runtime, errors, lowDetail, tiny, socketState(kind, index).
 */
export function drawNode(ctx, node, lay, view) {
  ctx.save();
  ctx.translate(node.pos[0], node.pos[1]);
  if (node.mode === "never") ctx.globalAlpha = 0.4;
  const w = lay.w;
  const h = lay.h;
  const radius = 8;
  const titleColour = lay.missing ? MISSING_TITLE : node.color || TITLE_BG;
  ctx.beginPath();
  ctx.roundRect(0, 0, w, h, radius);
  ctx.fillStyle = lay.missing ? MISSING_BODY : BODY;
  ctx.fill();
  if (!lay.collapsed) {
    ctx.beginPath();
    ctx.roundRect(0, 0, w, TITLE_H, [radius, radius, 0, 0]);
    ctx.fillStyle = titleColour;
    ctx.fill();
  } else {
    ctx.fillStyle = titleColour;
    ctx.beginPath();
    ctx.roundRect(0, 0, w, h, radius);
    ctx.fill();
  }
  if (node.mode === "bypass") {
    ctx.fillStyle = "rgba(160, 60, 200, 0.35)";
    ctx.beginPath();
    ctx.roundRect(0, 0, w, h, radius);
    ctx.fill();
  }
  const outline = view.errors.length ? "#ff4040" : view.running ? "#3ddc84" : view.selected ? "#ffffff" : null;
  if (outline) {
    ctx.lineWidth = view.errors.length || view.running ? 3 : 2;
    ctx.strokeStyle = outline;
    ctx.beginPath();
    ctx.roundRect(-1, -1, w + 2, h + 2, radius + 1);
    ctx.stroke();
  }
  if (view.tiny) {
    ctx.restore();
    return;
  }
  // collapse dot and title
  ctx.fillStyle = lay.collapsed ? "#888" : "#bbb";
  ctx.beginPath();
  ctx.arc(14, TITLE_H / 2, 5, 0, Math.PI * 2);
  ctx.fill();
  ctx.font = TITLE_FONT;
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#eee";
  const title = lay.title + (lay.missing ? " (missing)" : "");
  const steps = view.running && view.progress && view.progress.max > 0 ? view.progress : null;
  const stepText = steps ? `${steps.value}/${steps.max}` : "";
  const stepW = steps ? textWidth(stepText, SMALL_FONT) + 10 : 0;
  ctx.fillText(fitText(title, w - 40 - stepW, TITLE_FONT), 26, TITLE_H / 2 + 1);
  if (steps) {
    const fraction = Math.max(0, Math.min(1, steps.value / steps.max));
    ctx.fillStyle = "rgba(61, 220, 132, 0.25)";
    ctx.fillRect(0, TITLE_H - 5, w, 5);
    ctx.fillStyle = "#3ddc84";
    ctx.fillRect(0, TITLE_H - 5, w * fraction, 5);
    ctx.font = SMALL_FONT;
    ctx.textAlign = "right";
    ctx.fillText(stepText, w - 10, TITLE_H / 2);
    ctx.textAlign = "left";
  }
  if (lay.collapsed) {
    if (lay.inputs.length) drawSocket(ctx, 0, TITLE_H / 2, lay.inputs[0].type, true, false, false);
    if (lay.outputs.length) drawSocket(ctx, w, TITLE_H / 2, lay.outputs[0].type, true, false, false);
    if (view.errors.length) drawErrors(ctx, lay, view.errors);
    ctx.restore();
    return;
  }
  ctx.font = SMALL_FONT;
  lay.inputs.forEach((input, i) => {
    const state = view.socketState("input", i, input);
    drawSocket(ctx, 0, input.y, input.type, state.linked, state.highlight, state.dimmed);
    if (view.lowDetail) return;
    const failed = view.errors.some((err) => err.input === input.name);
    ctx.fillStyle = failed ? "#ff7070" : state.dimmed ? "#777" : input.optional ? "#aaa" : "#ddd";
    ctx.textAlign = "left";
    ctx.fillText(input.label, 12, input.y);
  });
  lay.outputs.forEach((output, i) => {
    const state = view.socketState("output", i, output);
    drawSocket(ctx, w, output.y, output.type, state.linked, state.highlight, state.dimmed, output.isList);
    if (view.lowDetail) return;
    ctx.fillStyle = state.dimmed ? "#777" : "#ddd";
    ctx.textAlign = "right";
    ctx.fillText(output.name, w - 12, output.y);
  });
  ctx.textAlign = "left";
  for (const widget of lay.widgets) {
    drawWidget(ctx, node, widget, PAD, w - 2 * PAD, {
      lowDetail: view.lowDetail,
      error: view.errors.some((err) => err.input === widget.name)
        || (widget.kind === "number" && rangeProblem(widget.spec, node.widgets[widget.name]) !== null),
      highlight: view.socketState("widget", 0, widget).highlight,
    });
  }
  if (lay.textArea && !view.lowDetail) {
    const area = lay.textArea;
    ctx.fillStyle = "#1b1b1b";
    ctx.fillRect(PAD, area.y, w - 2 * PAD, area.h);
    ctx.fillStyle = "#cfe8cf";
    ctx.font = SMALL_FONT;
    area.lines.forEach((line, i) => ctx.fillText(fitText(String(line), w - 2 * PAD - 10, SMALL_FONT), PAD + 5, area.y + 13 + i * 16));
  }
  if (lay.imageArea && view.runtime) {
    const { images, preview } = view.runtime;
    drawImages(ctx, lay.imageArea, images.length || !preview ? images : [preview]);
  }
  // resize handle
  ctx.strokeStyle = "#666";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(w - 4, h - 12);
  ctx.lineTo(w - 12, h - 4);
  ctx.moveTo(w - 4, h - 7);
  ctx.lineTo(w - 7, h - 4);
  ctx.stroke();
  if (view.errors.length) drawErrors(ctx, lay, view.errors);
  ctx.font = FONT;
  ctx.restore();
}

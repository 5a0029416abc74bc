// ComfyUI's Note and MarkdownNote nodes, shown read-only behind the graph. They are editor-only: the server's
// converter keeps them (with Reroutes) in the workflow's `extra.comfyui.editor_nodes` so a save writes them back;
// here they are drawn where ComfyUI's editor placed them, so the instructions a workflow carries are seen.

import { FONT, SMALL_FONT, TITLE_H } from "./layout.js";

const NOTE_TYPES = new Set(["Note", "MarkdownNote"]);
const LINE_H = 17;

/** The Note nodes of a native workflow's kept editor data: [{id, type, text, x, y, w, h}]. */
export function notesOf(graph) {
  const kept = graph.extra && graph.extra.comfyui && graph.extra.comfyui.editor_nodes;
  if (!Array.isArray(kept)) return [];
  return kept.filter((node) => node && NOTE_TYPES.has(node.type)).map((node) => {
    const pos = Array.isArray(node.pos) ? node.pos : [node.pos?.[0] ?? 0, node.pos?.[1] ?? 0];
    const size = Array.isArray(node.size) ? node.size : [300, 120];
    const values = Array.isArray(node.widgets_values) ? node.widgets_values : [];
    return {
      id: node.id, type: node.type, title: node.title || node.type, text: String(values[0] ?? ""),
      x: Number(pos[0]) || 0, y: (Number(pos[1]) || 0) - TITLE_H, w: Number(size[0]) || 300, h: (Number(size[1]) || 120) + TITLE_H,
    };
  });
}

function wrap(ctx, text, width) {
  const lines = [];
  for (const paragraph of text.split("\n")) {
    let line = "";
    for (const word of paragraph.split(/\s+/)) {
      const candidate = line ? `${line} ${word}` : word;
      if (line && ctx.measureText(candidate).width > width) {
        lines.push(line);
        line = word;
      } else line = candidate;
    }
    lines.push(line);
  }
  return lines;
}

/** Draw the notes in world coordinates (the canvas transform already applied). */
export function drawNotes(ctx, graph, visible) {
  for (const note of notesOf(graph)) {
    if (!visible(note.x, note.y, note.w, note.h)) continue;
    ctx.fillStyle = "#3b3a2a";
    ctx.strokeStyle = "#6b6640";
    ctx.lineWidth = 1;
    ctx.fillRect(note.x, note.y, note.w, note.h);
    ctx.strokeRect(note.x, note.y, note.w, note.h);
    ctx.fillStyle = "#4a4830";
    ctx.fillRect(note.x, note.y, note.w, TITLE_H);
    ctx.fillStyle = "#d8d2a0";
    ctx.font = SMALL_FONT;
    ctx.textBaseline = "middle";
    ctx.fillText(`${note.title} (read-only)`, note.x + 10, note.y + TITLE_H / 2);
    ctx.font = FONT;
    ctx.fillStyle = "#eee";
    ctx.save();
    ctx.beginPath();
    ctx.rect(note.x, note.y + TITLE_H, note.w, note.h - TITLE_H);
    ctx.clip();
    let y = note.y + TITLE_H + 14;
    for (const line of wrap(ctx, note.text, note.w - 20)) {
      ctx.fillText(line, note.x + 10, y);
      y += LINE_H;
    }
    ctx.restore();
  }
}

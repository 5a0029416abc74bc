// The 2D canvas: camera (pan/zoom), and a redraw on requestAnimationFrame only when something changed.
// Off-screen nodes and links are skipped; far out, nodes are drawn with less detail.

import { canConnect, typeColour } from "./defs.js";
import { drawNode } from "./draw_node.js";
import { GROUP_FONT, GROUP_TITLE_H, inputPos, nodeLayout, outputPos } from "./layout.js";

const MIN_SCALE = 0.1;
const MAX_SCALE = 4;
const STATS_KEPT = 600;

export class Canvas {
  constructor(el, editor) {
    this.el = el;
    this.ctx = el.getContext("2d");
    this.editor = editor;
    this.scale = 1;
    this.offset = [0, 0];
    this.scheduled = false;
    this.width = 0;
    this.height = 0;
    this.stats = { draws: [], stamps: [] };
    /** Set by settings.js: the theme's background and grid colours, and "spline" | "straight" | "linear". */
    this.colours = { background: "#1c1c1c", grid: "#262626" };
    this.linkStyle = "spline";
    this.frame = this.frame.bind(this);
    new ResizeObserver(() => this.resize()).observe(el);
    this.resize();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const rect = this.el.getBoundingClientRect();
    this.width = rect.width;
    this.height = rect.height;
    this.el.width = Math.max(1, Math.round(rect.width * dpr));
    this.el.height = Math.max(1, Math.round(rect.height * dpr));
    this.dpr = dpr;
    this.setDirty();
  }

  setDirty() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(this.frame);
  }

  frame(stamp) {
    this.scheduled = false;
    const started = performance.now();
    this.draw();
    const took = performance.now() - started;
    this.stats.draws.push(took);
    this.stats.stamps.push(stamp);
    if (this.stats.draws.length > STATS_KEPT) {
      this.stats.draws.shift();
      this.stats.stamps.shift();
    }
  }

  resetStats() {
    this.stats = { draws: [], stamps: [] };
  }

  // ---- camera ------------------------------------------------------------------------------

  toScreen(wx, wy) {
    return [wx * this.scale + this.offset[0], wy * this.scale + this.offset[1]];
  }

  toWorld(sx, sy) {
    return [(sx - this.offset[0]) / this.scale, (sy - this.offset[1]) / this.scale];
  }

  /** Canvas-relative pixel position of a mouse event. */
  eventPos(event) {
    const rect = this.el.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  panBy(dx, dy) {
    this.offset[0] += dx;
    this.offset[1] += dy;
    this.viewChanged();
  }

  /** Zoom by `factor` keeping the world point under (sx, sy) where it is. */
  zoomAt(sx, sy, factor) {
    const next = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.scale * factor));
    const applied = next / this.scale;
    this.offset[0] = sx - (sx - this.offset[0]) * applied;
    this.offset[1] = sy - (sy - this.offset[1]) * applied;
    this.scale = next;
    this.viewChanged();
  }

  setView(scale, offset) {
    this.scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, scale));
    this.offset = [offset[0], offset[1]];
    this.viewChanged();
  }

  /** Show the world rectangle [x, y, w, h] whole, at most at 100%. */
  fitRect(bounds, margin = 60) {
    if (!bounds) return this.setView(1, [0, 0]);
    const [x, y, w, h] = bounds;
    const scale = Math.min(1, (this.width - 2 * margin) / Math.max(w, 1), (this.height - 2 * margin) / Math.max(h, 1));
    const s = Math.max(MIN_SCALE, scale);
    this.setView(s, [(this.width - w * s) / 2 - x * s, (this.height - h * s) / 2 - y * s]);
  }

  viewChanged() {
    this.editor.onViewChanged();
    this.setDirty();
  }

  // ---- drawing -----------------------------------------------------------------------------

  draw() {
    const { ctx, dpr, scale } = this;
    const editor = this.editor;
    const graph = editor.graph;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = this.colours.background;
    ctx.fillRect(0, 0, this.width, this.height);
    this.drawGrid();
    ctx.setTransform(dpr * scale, 0, 0, dpr * scale, dpr * this.offset[0], dpr * this.offset[1]);
    const [vx0, vy0] = this.toWorld(0, 0);
    const [vx1, vy1] = this.toWorld(this.width, this.height);
    const visible = (x, y, w, h) => x + w >= vx0 && x <= vx1 && y + h >= vy0 && y <= vy1;
    for (const group of graph.groups) if (visible(...group.bounding)) this.drawGroup(group);
    if (editor.drawBehindNodes) editor.drawBehindNodes(ctx, visible);
    this.drawLinks(visible);
    const drag = editor.interaction.linkDrag;
    const linkedOutputs = new Set();
    for (const link of graph.links.values()) linkedOutputs.add(`${link.from_node}:${link.from_slot}`);
    const lowDetail = scale < 0.55;
    const tiny = scale < 0.3;
    const exec = editor.execution;
    for (const node of graph.nodes.values()) {
      const lay = nodeLayout(graph, node);
      if (!visible(node.pos[0] - 10, node.pos[1] - 120, lay.w + 20, lay.h + 120)) continue;
      const runtime = exec.runtime(node.id);
      const running = exec.runningNode === node.id;
      drawNode(ctx, node, lay, {
        selected: editor.selection.has(node.id), running, lowDetail, tiny, runtime,
        progress: running ? exec.progress : null,
        errors: exec.errorsOf(node.id),
        socketState: (kind, index, item) => this.socketState(node, kind, index, item, drag, linkedOutputs),
      });
    }
    if (drag) this.drawDragLink(drag);
    const box = editor.interaction.box;
    if (box) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.strokeStyle = "#8cf";
      ctx.fillStyle = "rgba(120, 180, 255, 0.12)";
      ctx.lineWidth = 1;
      ctx.fillRect(box.x, box.y, box.w, box.h);
      ctx.strokeRect(box.x, box.y, box.w, box.h);
    }
    if (editor.minimap) editor.minimap.draw();
  }

  drawGrid() {
    const { ctx, scale } = this;
    const spacing = (scale < 0.5 ? 100 : 20) * scale;
    if (spacing < 6) return;
    ctx.strokeStyle = this.colours.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    const ox = ((this.offset[0] % spacing) + spacing) % spacing;
    const oy = ((this.offset[1] % spacing) + spacing) % spacing;
    for (let x = ox; x < this.width; x += spacing) {
      ctx.moveTo(Math.round(x) + 0.5, 0);
      ctx.lineTo(Math.round(x) + 0.5, this.height);
    }
    for (let y = oy; y < this.height; y += spacing) {
      ctx.moveTo(0, Math.round(y) + 0.5);
      ctx.lineTo(this.width, Math.round(y) + 0.5);
    }
    ctx.stroke();
  }

  drawGroup(group) {
    const { ctx } = this;
    const [x, y, w, h] = group.bounding;
    const colour = group.color || "#3f789e";
    const selected = this.editor.selectedGroup === group;
    ctx.globalAlpha = 0.22;
    ctx.fillStyle = colour;
    ctx.fillRect(x, y, w, h);
    ctx.globalAlpha = 0.5;
    ctx.fillRect(x, y, w, GROUP_TITLE_H);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = selected ? "#fff" : colour;
    ctx.lineWidth = selected ? 2 : 1;
    ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = "#eee";
    ctx.font = GROUP_FONT;
    ctx.textBaseline = "middle";
    ctx.fillText(group.title, x + 10, y + GROUP_TITLE_H / 2 + 1);
    ctx.beginPath();
    ctx.moveTo(x + w - 3, y + h - 14);
    ctx.lineTo(x + w - 14, y + h - 3);
    ctx.stroke();
  }

  linkPath(x1, y1, x2, y2) {
    const { ctx } = this;
    if (this.linkStyle === "linear") {
      ctx.moveTo(x1, y1);
      ctx.lineTo(x2, y2);
      return;
    }
    if (this.linkStyle === "straight") {
      const mid = Math.max((x1 + x2) / 2, x1 + 15);
      ctx.moveTo(x1, y1);
      ctx.lineTo(mid, y1);
      ctx.lineTo(mid, y2);
      ctx.lineTo(x2, y2);
      return;
    }
    const dist = Math.max(40, Math.abs(x2 - x1) * 0.5);
    ctx.moveTo(x1, y1);
    ctx.bezierCurveTo(x1 + dist, y1, x2 - dist, y2, x2, y2);
  }

  drawLinks(visible) {
    const { ctx } = this;
    const graph = this.editor.graph;
    const byColour = new Map();
    for (const link of graph.links.values()) {
      const from = graph.nodes.get(link.from_node);
      const to = graph.nodes.get(link.to_node);
      if (!from || !to) continue;
      const [x1, y1] = outputPos(graph, from, link.from_slot);
      const [x2, y2] = inputPos(graph, to, link.to_input);
      const dist = Math.max(40, Math.abs(x2 - x1) * 0.5);
      const minX = Math.min(x1, x2 - dist);
      const maxX = Math.max(x2, x1 + dist);
      if (!visible(minX, Math.min(y1, y2), maxX - minX, Math.abs(y2 - y1))) continue;
      const colour = typeColour(graph.outputType(from, link.from_slot) ?? "?");
      if (!byColour.has(colour)) byColour.set(colour, []);
      byColour.get(colour).push([x1, y1, x2, y2]);
    }
    ctx.lineWidth = 3;
    for (const [colour, paths] of byColour) {
      ctx.strokeStyle = colour;
      ctx.beginPath();
      for (const path of paths) this.linkPath(...path);
      ctx.stroke();
    }
  }

  drawDragLink(drag) {
    const { ctx } = this;
    ctx.lineWidth = 3;
    ctx.strokeStyle = typeColour(drag.type);
    ctx.setLineDash([8, 6]);
    ctx.beginPath();
    if (drag.fromOutput) this.linkPath(drag.start[0], drag.start[1], drag.end[0], drag.end[1]);
    else this.linkPath(drag.end[0], drag.end[1], drag.start[0], drag.start[1]);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  /** Socket look while a link is dragged: compatible sockets light up, the others dim. */
  socketState(node, kind, index, item, drag, linkedOutputs) {
    const graph = this.editor.graph;
    const linked = kind === "input" ? graph.linkInto(node.id, item.name) !== null
      : kind === "output" ? linkedOutputs.has(`${node.id}:${index}`) : false;
    if (!drag || drag.nodeId === node.id) return { linked, highlight: false, dimmed: false };
    if (kind === "widget" && !["number", "combo", "toggle", "text", "multiline"].includes(item.kind)) {
      return { linked, highlight: false, dimmed: false };
    }
    if (drag.fromOutput) {
      if (kind === "output") return { linked, highlight: false, dimmed: true };
      const ok = item.spec ? canConnect(drag.type, item.spec) : false;
      return { linked, highlight: ok, dimmed: !ok && kind === "input" };
    }
    if (kind !== "output") return { linked, highlight: false, dimmed: kind === "input" };
    const ok = canConnect(item.type, drag.spec);
    return { linked, highlight: ok, dimmed: !ok };
  }
}

// The minimap: the whole graph in a corner (nodes as boxes in their title colour, the view as a frame);
// a click or drag on it moves the view there. Drawn after each canvas frame, at a cost of one rectangle a node.

import { nodeLayout } from "./layout.js";

const WIDTH = 200;
const HEIGHT = 140;
const MARGIN = 8;

export class Minimap {
  constructor(editor, parent) {
    this.editor = editor;
    this.el = document.createElement("canvas");
    this.el.className = "minimap";
    this.el.id = "minimap";
    this.el.title = "Minimap: click or drag to move the view";
    this.el.setAttribute("aria-label", "Minimap");
    const dpr = window.devicePixelRatio || 1;
    this.el.width = WIDTH * dpr;
    this.el.height = HEIGHT * dpr;
    this.dpr = dpr;
    this.ctx = this.el.getContext("2d");
    this.visible = true;
    /** World -> minimap transform of the last drawing: [scale, offsetX, offsetY]. */
    this.transform = null;
    parent.appendChild(this.el);
    this.el.addEventListener("pointerdown", (event) => this.onDown(event));
  }

  setVisible(visible) {
    this.visible = visible;
    this.el.hidden = !visible;
    if (visible) this.draw();
  }

  /** The world rectangle to show: every node plus the current view, so the view frame is always on it. */
  worldBounds() {
    const graph = this.editor.graph;
    const canvas = this.editor.canvas;
    const [vx0, vy0] = canvas.toWorld(0, 0);
    const [vx1, vy1] = canvas.toWorld(canvas.width, canvas.height);
    let [x0, y0, x1, y1] = [vx0, vy0, vx1, vy1];
    for (const node of graph.nodes.values()) {
      const lay = nodeLayout(graph, node);
      x0 = Math.min(x0, node.pos[0]);
      y0 = Math.min(y0, node.pos[1]);
      x1 = Math.max(x1, node.pos[0] + lay.w);
      y1 = Math.max(y1, node.pos[1] + lay.h);
    }
    return [x0, y0, x1 - x0, y1 - y0];
  }

  draw() {
    if (!this.visible) return;
    const { ctx, dpr } = this;
    const editor = this.editor;
    const graph = editor.graph;
    const canvas = editor.canvas;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, WIDTH, HEIGHT);
    ctx.fillStyle = "rgba(20, 20, 20, 0.85)";
    ctx.fillRect(0, 0, WIDTH, HEIGHT);
    const [bx, by, bw, bh] = this.worldBounds();
    const scale = Math.min((WIDTH - 2 * MARGIN) / Math.max(bw, 1), (HEIGHT - 2 * MARGIN) / Math.max(bh, 1));
    const ox = (WIDTH - bw * scale) / 2 - bx * scale;
    const oy = (HEIGHT - bh * scale) / 2 - by * scale;
    this.transform = [scale, ox, oy];
    for (const group of graph.groups) {
      const [x, y, w, h] = group.bounding;
      ctx.fillStyle = "rgba(63, 120, 158, 0.35)";
      ctx.fillRect(ox + x * scale, oy + y * scale, w * scale, h * scale);
    }
    for (const node of graph.nodes.values()) {
      const lay = nodeLayout(graph, node);
      ctx.fillStyle = editor.selection.has(node.id) ? "#ddd" : node.mode === "bypass" ? "#8a4fb0"
        : node.color || (lay.missing ? "#a33030" : "#6b6b6b");
      ctx.fillRect(ox + node.pos[0] * scale, oy + node.pos[1] * scale, Math.max(2, lay.w * scale), Math.max(2, lay.h * scale));
    }
    const [vx0, vy0] = canvas.toWorld(0, 0);
    const [vx1, vy1] = canvas.toWorld(canvas.width, canvas.height);
    ctx.strokeStyle = "#8cf";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(ox + vx0 * scale, oy + vy0 * scale, (vx1 - vx0) * scale, (vy1 - vy0) * scale);
  }

  /** Centre the main view on the world point under a minimap position. */
  centreAt(event) {
    if (!this.transform) return;
    const rect = this.el.getBoundingClientRect();
    const [scale, ox, oy] = this.transform;
    const wx = (event.clientX - rect.left - ox) / scale;
    const wy = (event.clientY - rect.top - oy) / scale;
    const canvas = this.editor.canvas;
    canvas.setView(canvas.scale, [canvas.width / 2 - wx * canvas.scale, canvas.height / 2 - wy * canvas.scale]);
  }

  onDown(event) {
    event.preventDefault();
    event.stopPropagation();
    // The frame is fixed while dragging (the bounds grow with the view otherwise, and the view would drift).
    this.centreAt(event);
    const transform = this.transform;
    const move = (e) => {
      this.transform = transform;
      this.centreAt(e);
    };
    const up = () => {
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", up);
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
  }
}

// `window.nodegraphEditor`: read-only accessors for browser tests (graph state, where things are on
// screen, run results, frame times). Tests find where to click here, then act with real mouse/keyboard.

import { inputPos, nodeLayout, outputPos, TITLE_H } from "./layout.js";

export function installTestHook(editor) {
  const clientPoint = (wx, wy) => {
    const [sx, sy] = editor.canvas.toScreen(wx, wy);
    const rect = editor.canvas.el.getBoundingClientRect();
    return { x: rect.left + sx, y: rect.top + sy };
  };
  const node = (id) => {
    const found = editor.graph.nodes.get(String(id));
    if (!found) throw new Error(`no node ${id}`);
    return found;
  };
  window.nodegraphEditor = Object.freeze({
    ready: () => editor.ready,
    workflow: () => editor.graph.serialize(),
    nodes: () => [...editor.graph.nodes.values()].map((n) => {
      const lay = nodeLayout(editor.graph, n);
      return {
        id: n.id, type: n.type, title: lay.title, pos: [...n.pos], size: [lay.w, lay.h], mode: n.mode,
        collapsed: n.collapsed, widgets: JSON.parse(JSON.stringify(n.widgets)), controls: { ...n.controls },
        converted: [...n.converted], missing: lay.missing,
      };
    }),
    links: () => [...editor.graph.links.values()].map((link) => ({ ...link })),
    groups: () => editor.graph.groups.map((group) => JSON.parse(JSON.stringify(group))),
    selection: () => [...editor.selection],
    undoDepth: () => editor.graph.undoStack.length,
    view: () => ({ scale: editor.canvas.scale, offset: [...editor.canvas.offset] }),
    /** Client-pixel rectangle of a node. */
    nodeRect: (id) => {
      const n = node(id);
      const lay = nodeLayout(editor.graph, n);
      const { x, y } = clientPoint(n.pos[0], n.pos[1]);
      return { x, y, w: lay.w * editor.canvas.scale, h: lay.h * editor.canvas.scale };
    },
    titlePoint: (id) => {
      const n = node(id);
      const lay = nodeLayout(editor.graph, n);
      return clientPoint(n.pos[0] + Math.min(lay.w - 20, 80), n.pos[1] + TITLE_H / 2);
    },
    outputPoint: (id, slot) => {
      const [x, y] = outputPos(editor.graph, node(id), slot);
      return clientPoint(x, y);
    },
    inputPoint: (id, name) => {
      const [x, y] = inputPos(editor.graph, node(id), name);
      return clientPoint(x, y);
    },
    /** A point on a widget row: "left"/"right" arrow, "center", or "row" (the row's label side). */
    widgetPoint: (id, name, where = "center", kind = null) => {
      const n = node(id);
      const lay = nodeLayout(editor.graph, n);
      const widget = lay.widgets.find((w) => w.name === name && (!kind || w.kind === kind));
      if (!widget) throw new Error(`node ${id} shows no widget ${name}`);
      const x = where === "left" ? 10 + 8 : where === "right" ? lay.w - 18 : lay.w / 2;
      return clientPoint(n.pos[0] + x, n.pos[1] + widget.y + widget.h / 2);
    },
    /** Client-pixel rectangle of a widget row (to look at what it shows). */
    widgetRect: (id, name) => {
      const n = node(id);
      const widget = nodeLayout(editor.graph, n).widgets.find((w) => w.name === name);
      const { x, y } = clientPoint(n.pos[0] + 10, n.pos[1] + widget.y);
      return { x, y, w: (nodeLayout(editor.graph, n).w - 20) * editor.canvas.scale, h: widget.h * editor.canvas.scale };
    },
    /** Client-pixel rectangle of a group (by index). */
    groupRect: (index) => {
      const [x, y, w, h] = editor.graph.groups[index].bounding;
      const corner = clientPoint(x, y);
      return { x: corner.x, y: corner.y, w: w * editor.canvas.scale, h: h * editor.canvas.scale };
    },
    images: (id) => {
      const state = editor.execution.runtime(String(id));
      return state ? state.images.map((img) => ({ filename: img.filename, subfolder: img.subfolder, type: img.type, loaded: img.width > 0 })) : [];
    },
    text: (id) => {
      const state = editor.execution.runtime(String(id));
      return state ? [...state.text] : [];
    },
    errors: (id) => editor.execution.errorsOf(String(id)).map((err) => ({ ...err })),
    running: () => ({ node: editor.execution.runningNode, progress: editor.execution.progress }),
    lastQueueResult: () => editor.execution.lastResult,
    events: () => editor.execution.events.map((event) => ({ ...event })),
    frameStats: () => ({ draws: [...editor.canvas.stats.draws], stamps: [...editor.canvas.stats.stamps] }),
    resetFrameStats: () => editor.canvas.resetStats(),
    /** Draw one frame and force its rasterisation (a pixel read back): the whole cost of a frame, in ms. */
    measureFullFrame: () => {
      const started = performance.now();
      editor.canvas.draw();
      editor.canvas.ctx.getImageData(0, 0, 1, 1);
      return performance.now() - started;
    },
    nodesInView: () => {
      const [x0, y0] = editor.canvas.toWorld(0, 0);
      const [x1, y1] = editor.canvas.toWorld(editor.canvas.width, editor.canvas.height);
      return [...editor.graph.nodes.values()].filter((n) => {
        const lay = nodeLayout(editor.graph, n);
        return n.pos[0] + lay.w > x0 && n.pos[0] < x1 && n.pos[1] + lay.h > y0 && n.pos[1] < y1;
      }).length;
    },
  });
}

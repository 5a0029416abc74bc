// Mouse on the canvas: pan (drag the background), zoom (wheel, around the cursor), select (click,
// shift/ctrl-click, ctrl/shift-drag a box), move and resize nodes and groups; link drags are in link_drag.js.

import { TITLE_H, groupAt, hitPart, nodeAt, nodeLayout, nodesInGroup } from "./layout.js";
import { LinkDrags } from "./link_drag.js";
import { closeTextEditor, openTextEditor, widgetPointerDown } from "./widgets.js";

const CLICK_SLOP = 4;

export class Interaction {
  constructor(editor) {
    this.editor = editor;
    this.canvas = editor.canvas;
    this.el = editor.canvas.el;
    /** The link being dragged (read by the canvas to draw it and light up compatible sockets). */
    this.linkDrag = null;
    this.links = new LinkDrags(editor, this);
    this.box = null;
    this.active = null;
    this.pointer = [0, 0];
    this.el.addEventListener("pointerdown", (e) => this.onDown(e));
    // Focus is managed here: the browser's own focus change on mousedown would close fields just opened.
    this.el.addEventListener("mousedown", (e) => e.preventDefault());
    window.addEventListener("pointermove", (e) => this.onMove(e));
    window.addEventListener("pointerup", (e) => this.onUp(e));
    this.el.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    this.el.addEventListener("dblclick", (e) => this.onDoubleClick(e));
    this.el.addEventListener("contextmenu", (e) => this.onContextMenu(e));
  }

  get graph() {
    return this.editor.graph;
  }

  /** The world position of the last pointer event on the canvas. */
  pointerWorld() {
    return this.canvas.toWorld(...this.pointer);
  }

  onDown(event) {
    closeTextEditor(this.editor);
    this.editor.menu.close();
    this.el.focus();
    const pos = this.canvas.eventPos(event);
    this.pointer = pos;
    const [wx, wy] = this.canvas.toWorld(...pos);
    const start = { x: event.clientX, y: event.clientY, moved: false };
    if (event.button === 1 || (event.button === 0 && this.editor.panHold)) { // middle-drag or Space+drag
      event.preventDefault();
      this.begin(event, start, this.panDrag());
      return;
    }
    if (event.button !== 0) return;
    const node = nodeAt(this.graph, wx, wy, 8);
    if (node) {
      this.begin(event, start, this.nodePress(node, hitPart(this.graph, node, wx, wy), event));
      return;
    }
    const group = groupAt(this.graph, wx, wy);
    if (group) {
      this.begin(event, start, this.groupPress(group));
      return;
    }
    if (event.shiftKey || event.ctrlKey || event.metaKey) this.begin(event, start, this.boxDrag(pos, event.shiftKey));
    else this.begin(event, start, this.panDrag(true));
  }

  begin(event, start, handler) {
    if (!handler) return;
    this.active = { ...handler, start };
    try {
      this.el.setPointerCapture(event.pointerId);
    } catch {
      /* synthetic events have no capturable pointer */
    }
  }

  onMove(event) {
    if (!this.active) {
      if (event.target === this.el) this.pointer = this.canvas.eventPos(event);
      return;
    }
    this.pointer = this.canvas.eventPos(event);
    const start = this.active.start;
    const dx = event.clientX - start.x;
    const dy = event.clientY - start.y;
    if (Math.abs(dx) > CLICK_SLOP || Math.abs(dy) > CLICK_SLOP) start.moved = true;
    if (this.active.move) this.active.move(dx, dy, event);
  }

  onUp(event) {
    const active = this.active;
    if (!active) return;
    this.active = null;
    this.pointer = this.canvas.eventPos(event);
    if (active.up) active.up(active.start.moved, event);
    this.canvas.setDirty();
  }

  onWheel(event) {
    event.preventDefault();
    const pos = this.canvas.eventPos(event);
    const delta = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
    this.canvas.zoomAt(pos[0], pos[1], Math.exp(-delta * 0.0015));
  }

  onDoubleClick(event) {
    const pos = this.canvas.eventPos(event);
    const [wx, wy] = this.canvas.toWorld(...pos);
    const node = nodeAt(this.graph, wx, wy);
    if (node) {
      if (hitPart(this.graph, node, wx, wy).part === "title") this.renameNode(node);
      return;
    }
    const group = groupAt(this.graph, wx, wy);
    if (group && group.part === "title") {
      this.renameGroup(group.group);
      return;
    }
    this.editor.openPalette({ at: [wx, wy], screen: [event.clientX, event.clientY] });
  }

  onContextMenu(event) {
    event.preventDefault();
    const [wx, wy] = this.canvas.toWorld(...this.canvas.eventPos(event));
    const node = nodeAt(this.graph, wx, wy);
    if (node && !this.editor.selection.has(node.id)) this.editor.select([node.id]);
    const group = node ? null : groupAt(this.graph, wx, wy);
    this.editor.contextMenu.open(event.clientX, event.clientY, { node, group: group && group.group, at: [wx, wy] });
  }

  // ---- drags -------------------------------------------------------------------------------

  panDrag(clearOnClick = false) {
    let last = [0, 0];
    return {
      move: (dx, dy) => {
        this.canvas.panBy(dx - last[0], dy - last[1]);
        last = [dx, dy];
      },
      up: (moved) => {
        if (!moved && clearOnClick) this.editor.select([]);
      },
    };
  }

  boxDrag(origin, additive) {
    return {
      move: () => {
        const [x, y] = this.pointer;
        this.box = { x: Math.min(x, origin[0]), y: Math.min(y, origin[1]), w: Math.abs(x - origin[0]), h: Math.abs(y - origin[1]) };
        this.canvas.setDirty();
      },
      up: () => {
        const box = this.box;
        this.box = null;
        if (!box) return;
        const [x0, y0] = this.canvas.toWorld(box.x, box.y);
        const [x1, y1] = this.canvas.toWorld(box.x + box.w, box.y + box.h);
        const inside = [];
        for (const node of this.graph.nodes.values()) {
          const lay = nodeLayout(this.graph, node);
          if (node.pos[0] < x1 && node.pos[0] + lay.w > x0 && node.pos[1] < y1 && node.pos[1] + lay.h > y0) inside.push(node.id);
        }
        this.editor.select(additive ? [...this.editor.selection, ...inside] : inside);
      },
    };
  }

  nodePress(node, hit, event) {
    const editor = this.editor;
    const lay = nodeLayout(this.graph, node);
    if (hit.part === "output") return this.links.fromOutput(node, hit.index);
    if (hit.part === "input") return this.links.fromInput(node, hit.name);
    if (hit.part === "widget") {
      editor.select([node.id]);
      const handler = widgetPointerDown(editor, node, hit, lay, event);
      this.canvas.setDirty();
      return handler ? { move: (dx) => handler.move(dx), up: (moved) => handler.up(moved) } : null;
    }
    if (hit.part === "collapse") {
      this.graph.change(() => {
        node.collapsed = !node.collapsed;
        this.graph.touch(node);
      });
      return null;
    }
    if (hit.part === "resize") return this.resizeDrag(node, lay);
    const toggle = event.shiftKey || event.ctrlKey || event.metaKey;
    const wasSelected = editor.selection.has(node.id);
    if (toggle && wasSelected) {
      editor.selection.delete(node.id);
      editor.selectionChanged();
      return null;
    }
    if (toggle) editor.select([...editor.selection, node.id]);
    else if (!wasSelected) editor.select([node.id]);
    this.graph.raise(node.id);
    return this.moveDrag([...editor.selection], () => {
      if (!toggle && wasSelected) editor.select([node.id]);
    });
  }

  moveDrag(ids, onClick) {
    const graph = this.graph;
    const origins = new Map(ids.map((id) => [id, [...graph.nodes.get(id).pos]]));
    let started = false;
    return {
      move: (dx, dy) => {
        if (!started) graph.beginChange();
        started = true;
        const s = this.canvas.scale;
        for (const [id, [x, y]] of origins) {
          const node = graph.nodes.get(id);
          if (node) node.pos = [this.snap(x + dx / s), this.snap(y + dy / s)];
        }
        graph.emit("move");
      },
      up: (moved) => {
        if (started) graph.endChange();
        else if (!moved && onClick) onClick();
      },
    };
  }

  /** A world coordinate on the grid when "snap to grid" is set (settings.js), else to the pixel. */
  snap(value) {
    const grid = this.editor.snapGrid;
    return grid ? Math.round(value / grid) * grid : Math.round(value);
  }

  resizeDrag(node, lay) {
    const graph = this.graph;
    const [w0, h0] = [lay.w, lay.h];
    graph.beginChange();
    return {
      move: (dx, dy) => {
        const s = this.canvas.scale;
        node.size = [Math.max(140, w0 + dx / s), Math.max(lay.minH || TITLE_H, h0 + dy / s)];
        graph.touch(node);
        graph.emit("move");
      },
      up: () => graph.endChange(),
    };
  }

  groupPress({ group, part }) {
    const graph = this.graph;
    this.editor.select([]);
    this.editor.selectedGroup = group;
    this.canvas.setDirty();
    const origin = [...group.bounding];
    const members = part === "title" ? nodesInGroup(graph, group) : [];
    const nodeOrigins = new Map(members.map((id) => [id, [...graph.nodes.get(id).pos]]));
    let started = false;
    return {
      move: (dx, dy) => {
        if (!started) graph.beginChange();
        started = true;
        const s = this.canvas.scale;
        if (part === "resize") {
          group.bounding = [origin[0], origin[1], Math.max(120, origin[2] + dx / s), Math.max(80, origin[3] + dy / s)];
        } else {
          const [mx, my] = [Math.round(dx / s), Math.round(dy / s)];
          group.bounding = [origin[0] + mx, origin[1] + my, origin[2], origin[3]];
          for (const [id, [x, y]] of nodeOrigins) graph.nodes.get(id).pos = [x + mx, y + my];
        }
        graph.emit("move");
      },
      up: () => started && graph.endChange(),
    };
  }

  // ---- titles ------------------------------------------------------------------------------

  renameNode(node) {
    const lay = nodeLayout(this.graph, node);
    const [sx, sy] = this.canvas.toScreen(node.pos[0] + 24, node.pos[1]);
    const rect = this.el.getBoundingClientRect();
    openTextEditor(this.editor, {
      rect: [rect.left + sx, rect.top + sy, (lay.w - 30) * this.canvas.scale, TITLE_H * this.canvas.scale],
      value: lay.title,
      onCommit: (text) => this.graph.change(() => {
        const def = this.graph.defs.get(node.type);
        node.title = text.trim() && text.trim() !== (def ? def.displayName : node.type) ? text.trim() : null;
        this.graph.touch(node);
      }),
    });
  }

  renameGroup(group) {
    const [sx, sy] = this.canvas.toScreen(group.bounding[0], group.bounding[1]);
    const rect = this.el.getBoundingClientRect();
    openTextEditor(this.editor, {
      rect: [rect.left + sx, rect.top + sy, group.bounding[2] * this.canvas.scale, 32 * this.canvas.scale],
      value: group.title,
      onCommit: (text) => this.graph.change(() => (group.title = text)),
    });
  }
}

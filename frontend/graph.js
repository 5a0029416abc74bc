// The graph model: nodes, links (one per input), groups, and undo/redo by snapshots.
// It serialises to OUR native workflow JSON (nodegraph/workflow.py): nodes by id with widgets by name.

import { canConnect, widgetSpecs } from "./defs.js";

const HISTORY_LIMIT = 200;
const NODE_KEYS = new Set([
  "type", "widgets", "title", "pos", "size", "mode", "collapsed", "color", "converted_widgets",
  "control_after_generate",
]);

/** The key of the link into an input: at most one link feeds an input. */
export const linkKey = (toNode, toInput) => `${toNode}\u0000${toInput}`;

const clone = (value) => (value === undefined ? undefined : JSON.parse(JSON.stringify(value)));

export class Graph {
  constructor(defs) {
    this.defs = defs || new Map();
    /** @type {Map<string, object>} insertion order is the drawing order (last on top). */
    this.nodes = new Map();
    /** @type {Map<string, {from_node:string, from_slot:number, to_node:string, to_input:string}>} */
    this.links = new Map();
    this.groups = [];
    this.extra = {};
    this.lastId = 0;
    this.undoStack = [];
    this.redoStack = [];
    this.pending = null;
    this.listeners = new Set();
    this.revision = 0;
  }

  onChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Tell listeners (canvas, persistence) that something changed; `kind` is "change", "move" or "load". */
  emit(kind = "change") {
    this.revision++;
    for (const listener of this.listeners) listener(kind);
  }

  setDefs(defs) {
    this.defs = defs;
    for (const node of this.nodes.values()) this.touch(node);
    this.emit("defs");
  }

  /** Forget a node's cached layout after changing anything that affects its size or sockets. */
  touch(node) {
    if (node) node._lay = null;
  }

  // ---- undo / redo ---------------------------------------------------------------------------

  snapshot() {
    return JSON.stringify(this.serialize());
  }

  /** Open an undo step (nestable); the step is recorded by the matching endChange if anything changed. */
  beginChange() {
    if (this.pending === null) this.pending = { depth: 0, before: this.snapshot() };
    this.pending.depth++;
  }

  endChange() {
    if (this.pending === null) return;
    if (--this.pending.depth > 0) return;
    const before = this.pending.before;
    this.pending = null;
    if (this.snapshot() !== before) {
      this.undoStack.push(before);
      if (this.undoStack.length > HISTORY_LIMIT) this.undoStack.shift();
      this.redoStack.length = 0;
    }
    this.emit("change");
  }

  /** Run `fn` as one undo step. */
  change(fn) {
    this.beginChange();
    try {
      return fn();
    } finally {
      this.endChange();
    }
  }

  undo() {
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.snapshot());
    this.restore(this.undoStack.pop());
    return true;
  }

  redo() {
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.snapshot());
    this.restore(this.redoStack.pop());
    return true;
  }

  restore(text) {
    this.fill(JSON.parse(text));
    this.emit("change");
  }

  // ---- nodes -----------------------------------------------------------------------------------

  nextId() {
    this.lastId += 1;
    while (this.nodes.has(String(this.lastId))) this.lastId += 1;
    return String(this.lastId);
  }

  /** A new node of `type` with its default widget values (not yet added). */
  makeNode(type, pos = [0, 0]) {
    const node = {
      id: this.nextId(), type, title: null, pos: [Math.round(pos[0]), Math.round(pos[1])], size: null, mode: "always",
      collapsed: false, color: null, widgets: {}, converted: [], controls: {}, extra: {},
    };
    for (const spec of widgetSpecs(this.defs.get(type))) {
      node.widgets[spec.name] = clone(spec.default);
      if (spec.controlAfterGenerate) node.controls[spec.name] = "randomize";
    }
    return node;
  }

  addNode(node) {
    this.nodes.set(node.id, node);
    const numeric = Number(node.id);
    if (Number.isInteger(numeric) && numeric > this.lastId) this.lastId = numeric;
    return node;
  }

  removeNodes(ids) {
    const gone = new Set(ids);
    for (const [key, link] of this.links) {
      if (gone.has(link.from_node) || gone.has(link.to_node)) this.links.delete(key);
    }
    for (const id of gone) this.nodes.delete(id);
  }

  /** Move a node to the end of the drawing order (on top). */
  raise(id) {
    const node = this.nodes.get(id);
    if (!node) return;
    this.nodes.delete(id);
    this.nodes.set(id, node);
  }

  setWidget(node, name, value) {
    node.widgets[name] = value;
    this.touch(node);
  }

  /** Show a widget as an input socket (`asInput`) or back as a widget; converting back drops its link. */
  convertWidget(node, name, asInput) {
    const converted = new Set(node.converted);
    if (asInput) converted.add(name);
    else {
      converted.delete(name);
      this.links.delete(linkKey(node.id, name));
    }
    const order = widgetSpecs(this.defs.get(node.type)).map((spec) => spec.name);
    node.converted = [...converted].sort((a, b) => order.indexOf(a) - order.indexOf(b));
    this.touch(node);
  }

  /** The input spec of a node's input, or a placeholder for a node whose type the server does not know. */
  inputSpec(node, name) {
    const def = this.defs.get(node.type);
    return def ? def.inputMap.get(name) : null;
  }

  outputType(node, slot) {
    const def = this.defs.get(node.type);
    if (!def) return undefined;
    const output = def.outputs[slot];
    return output ? output.type : undefined;
  }

  /** Why a link may not be made, or null when it may. Unknown node types accept nothing new. */
  refuseReason(fromNode, fromSlot, toNode, toInput) {
    const from = this.nodes.get(fromNode);
    const to = this.nodes.get(toNode);
    if (!from || !to) return "no such node";
    if (fromNode === toNode) return "a node cannot feed itself";
    const outType = this.outputType(from, fromSlot);
    const spec = this.inputSpec(to, toInput);
    if (outType === undefined || !spec) return "unknown node type";
    if (!canConnect(outType, spec)) return `${toInput} takes ${spec.type}, not ${outType}`;
    if (this.reaches(toNode, fromNode)) return "the link would make a cycle";
    return null;
  }

  /** Whether `target` is downstream of (or is) `start`. */
  reaches(start, target) {
    const seen = new Set([start]);
    const stack = [start];
    while (stack.length) {
      const id = stack.pop();
      if (id === target) return true;
      for (const link of this.links.values()) {
        if (link.from_node === id && !seen.has(link.to_node)) {
          seen.add(link.to_node);
          stack.push(link.to_node);
        }
      }
    }
    return false;
  }

  /** Link an output to an input, replacing the input's old link; a widget target becomes a socket. */
  connect(fromNode, fromSlot, toNode, toInput) {
    const reason = this.refuseReason(fromNode, fromSlot, toNode, toInput);
    if (reason) return reason;
    const to = this.nodes.get(toNode);
    const spec = this.inputSpec(to, toInput);
    if (spec.widget && !to.converted.includes(toInput)) this.convertWidget(to, toInput, true);
    this.links.set(linkKey(toNode, toInput), { from_node: fromNode, from_slot: fromSlot, to_node: toNode, to_input: toInput });
    this.touch(to);
    return null;
  }

  disconnect(toNode, toInput) {
    this.links.delete(linkKey(toNode, toInput));
  }

  linkInto(toNode, toInput) {
    return this.links.get(linkKey(toNode, toInput)) || null;
  }

  linksFrom(nodeId, slot = null) {
    const found = [];
    for (const link of this.links.values()) {
      if (link.from_node === nodeId && (slot === null || link.from_slot === slot)) found.push(link);
    }
    return found;
  }

  // ---- (de)serialisation -------------------------------------------------------------------

  serializeNode(node) {
    const out = { ...clone(node.extra), type: node.type, widgets: clone(node.widgets) };
    if (node.title) out.title = node.title;
    out.pos = [Math.round(node.pos[0]), Math.round(node.pos[1])];
    if (node.size) out.size = [Math.round(node.size[0]), Math.round(node.size[1])];
    if (node.mode !== "always") out.mode = node.mode;
    if (node.collapsed) out.collapsed = true;
    if (node.color) out.color = node.color;
    if (node.converted.length) out.converted_widgets = [...node.converted];
    if (Object.keys(node.controls).length) out.control_after_generate = { ...node.controls };
    return out;
  }

  /** The native workflow JSON object. */
  serialize() {
    const nodes = {};
    for (const node of this.nodes.values()) nodes[node.id] = this.serializeNode(node);
    return {
      format: "nodegraph",
      version: 1,
      nodes,
      links: [...this.links.values()].map((link) => ({ ...link })),
      groups: this.groups.map((group) => clone(group)),
      extra: clone(this.extra),
    };
  }

  /** A node object from its serialised form (defaults filled in for widgets the file does not set). */
  deserializeNode(id, data) {
    const node = {
      id: String(id), type: String(data.type), title: data.title || null,
      pos: Array.isArray(data.pos) ? [Number(data.pos[0]) || 0, Number(data.pos[1]) || 0] : [0, 0],
      size: Array.isArray(data.size) ? [Number(data.size[0]) || 0, Number(data.size[1]) || 0] : null,
      mode: ["always", "never", "bypass"].includes(data.mode) ? data.mode : "always",
      collapsed: Boolean(data.collapsed), color: data.color || null,
      widgets: clone(data.widgets) || {}, converted: [...(data.converted_widgets || [])],
      controls: { ...(data.control_after_generate || {}) }, extra: {},
    };
    for (const [key, value] of Object.entries(data)) if (!NODE_KEYS.has(key)) node.extra[key] = clone(value);
    for (const spec of widgetSpecs(this.defs.get(node.type))) {
      if (!(spec.name in node.widgets)) node.widgets[spec.name] = clone(spec.default);
      if (spec.controlAfterGenerate && !(spec.name in node.controls)) node.controls[spec.name] = "fixed";
    }
    return node;
  }

  /** Replace the whole graph with a native workflow object (no undo step; see load). */
  fill(workflow) {
    this.nodes.clear();
    this.links.clear();
    this.lastId = 0;
    for (const [id, data] of Object.entries(workflow.nodes || {})) this.addNode(this.deserializeNode(id, data));
    for (const link of workflow.links || []) {
      const clean = {
        from_node: String(link.from_node), from_slot: Number(link.from_slot) || 0,
        to_node: String(link.to_node), to_input: String(link.to_input),
      };
      if (this.nodes.has(clean.from_node) && this.nodes.has(clean.to_node)) {
        this.links.set(linkKey(clean.to_node, clean.to_input), clean);
      }
    }
    this.groups = (workflow.groups || []).map((group) => ({
      title: group.title ?? "Group",
      bounding: (group.bounding || [0, 0, 300, 200]).map(Number),
      color: group.color || null,
    }));
    this.extra = clone(workflow.extra) || {};
  }

  /** Load a workflow as one undoable step. */
  load(workflow) {
    this.change(() => this.fill(workflow));
    this.emit("load");
  }

  // ---- clipboard -----------------------------------------------------------------------------

  /** Copy nodes and the links among them (and the links into them from outside, for Ctrl+Shift+V). */
  copy(ids) {
    const chosen = new Set(ids);
    const nodes = {};
    for (const id of ids) if (this.nodes.has(id)) nodes[id] = this.serializeNode(this.nodes.get(id));
    const links = [...this.links.values()].filter((link) => chosen.has(link.to_node)).map((link) => ({ ...link }));
    return { nodes, links };
  }

  /** Paste copied nodes with their top-left at `at`; returns the new ids. */
  paste(clip, at, keepOutsideLinks = false) {
    const entries = Object.entries(clip.nodes || {});
    if (!entries.length) return [];
    const minX = Math.min(...entries.map(([, n]) => n.pos[0]));
    const minY = Math.min(...entries.map(([, n]) => n.pos[1]));
    const idMap = new Map();
    for (const [oldId, data] of entries) {
      const node = this.deserializeNode(this.nextId(), data);
      node.pos = [data.pos[0] - minX + at[0], data.pos[1] - minY + at[1]];
      this.addNode(node);
      idMap.set(oldId, node.id);
    }
    for (const link of clip.links || []) {
      const to = idMap.get(link.to_node);
      const from = idMap.get(link.from_node) || (keepOutsideLinks && this.nodes.has(link.from_node) ? link.from_node : null);
      if (to && from) this.connect(from, link.from_slot, to, link.to_input);
    }
    return [...idMap.values()];
  }
}

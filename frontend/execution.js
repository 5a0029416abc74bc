// Queueing prompts and following their runs: the running node, step progress, images and text on
// output nodes, validation and execution errors on the offending nodes, seed control after each queue.

import { ApiError } from "./api.js";
import { widgetSpecs } from "./defs.js";
import { toApiPrompt } from "./formats.js";
import { controlledValue } from "./widgets.js";

const NO_ERRORS = Object.freeze([]);
const EVENTS_KEPT = 500;

export class Execution {
  constructor(editor) {
    this.editor = editor;
    this.states = new Map();
    this.errors = new Map();
    this.runningNode = null;
    this.runningPrompt = null;
    this.progress = null;
    this.queueRemaining = 0;
    this.lastResult = null;
    /** Recent run events {type, node, value, max}, newest last (the test hook reads them). */
    this.events = [];
    editor.api.onMessage((type, data) => this.onMessage(type, data));
  }

  runtime(nodeId) {
    return this.states.get(nodeId) || null;
  }

  ensure(nodeId) {
    let state = this.states.get(nodeId);
    if (!state) {
      state = { version: 0, images: [], text: [], preview: null };
      this.states.set(nodeId, state);
    }
    return state;
  }

  errorsOf(nodeId) {
    return this.errors.get(nodeId) || NO_ERRORS;
  }

  /** Forget a node's errors (all, or those of one input) once the user has edited it. */
  clearErrors(nodeId, input = null) {
    const list = this.errors.get(nodeId);
    if (!list) return;
    const kept = input === null ? [] : list.filter((err) => err.input !== input);
    if (kept.length) this.errors.set(nodeId, kept);
    else this.errors.delete(nodeId);
    this.editor.errorPanel.render();
    this.editor.canvas.setDirty();
  }

  /** Queue the graph `batchCount` times; seeds move after each queue as their control says. */
  async queue(batchCount = 1, options = {}) {
    const editor = this.editor;
    for (let i = 0; i < batchCount; i++) {
      const prompt = toApiPrompt(editor.graph);
      const workflow = editor.graph.serialize();
      try {
        const result = await editor.api.queuePrompt(prompt, workflow, options);
        this.lastResult = result;
        this.errors.clear();
        editor.errorPanel.render();
        this.applyControls();
      } catch (err) {
        if (err instanceof ApiError && err.body && (err.body.node_errors || err.body.error)) this.showValidation(err.body);
        else editor.notify(`Queue failed: ${err.message}`, "error");
        this.lastResult = { error: err.message };
        break;
      } finally {
        editor.canvas.setDirty();
      }
    }
    editor.queuePanel.refresh();
  }

  /** Apply "control after generate" to every seed-like widget that is not fed by a link. */
  applyControls() {
    const graph = this.editor.graph;
    let changed = false;
    for (const node of graph.nodes.values()) {
      for (const spec of widgetSpecs(graph.defs.get(node.type))) {
        const mode = node.controls[spec.name];
        if (!spec.controlAfterGenerate || !mode || mode === "fixed" || graph.linkInto(node.id, spec.name)) continue;
        graph.setWidget(node, spec.name, controlledValue(spec, node.widgets[spec.name], mode));
        changed = true;
      }
    }
    if (changed) graph.emit("change");
  }

  /** A 400 from /prompt: mark each offending node and input with the server's message. */
  showValidation(body) {
    this.errors.clear();
    const nodeErrors = body.node_errors || {};
    for (const [nodeId, entry] of Object.entries(nodeErrors)) {
      const list = (entry.errors || []).map((err) => ({
        type: err.type, message: err.message, details: err.details || "",
        input: (err.extra_info && err.extra_info.input_name) || null,
      }));
      if (list.length) this.errors.set(String(nodeId), list);
    }
    const summary = body.error ? `${body.error.message}${body.error.details ? `: ${body.error.details}` : ""}` : "Prompt is invalid";
    this.editor.errorPanel.render(summary);
  }

  loadImages(nodeId, infos) {
    const state = this.ensure(nodeId);
    state.images = infos.map((info) => {
      const entry = { ...info, element: null, width: 0, height: 0 };
      const img = new Image();
      img.onload = () => {
        entry.element = img;
        entry.width = img.naturalWidth;
        entry.height = img.naturalHeight;
        state.version++;
        this.editor.canvas.setDirty();
      };
      img.onerror = () => this.editor.notify(`Could not load image ${info.filename}`, "error");
      img.src = this.editor.api.viewUrl(info);
      return entry;
    });
    state.version++;
  }

  onMessage(type, data) {
    const editor = this.editor;
    if (type !== "status" && type !== "connection" && type !== "preview_frame") {
      this.events.push({ type, node: data.node ?? data.node_id ?? null, value: data.value, max: data.max });
      if (this.events.length > EVENTS_KEPT) this.events.splice(0, this.events.length - EVENTS_KEPT);
    }
    switch (type) {
      case "status": {
        const info = data.status && data.status.exec_info;
        if (info) this.queueRemaining = info.queue_remaining;
        editor.toolbar.setQueueSize(this.queueRemaining);
        editor.queuePanel.refresh();
        break;
      }
      case "execution_start":
        this.runningPrompt = data.prompt_id;
        this.progress = null;
        editor.queuePanel.refresh();
        break;
      case "executing":
        this.runningNode = data.node === null || data.node === undefined ? null : String(data.node);
        this.progress = null;
        if (this.runningNode === null) this.runningPrompt = null;
        break;
      case "progress":
        this.progress = { value: data.value, max: data.max };
        if (data.node !== undefined && data.node !== null) this.runningNode = String(data.node);
        break;
      case "executed": {
        const nodeId = String(data.node);
        const output = data.output || {};
        const state = this.ensure(nodeId);
        if (output.images) this.loadImages(nodeId, output.images);
        if (output.text) state.text = output.text.map(String);
        state.preview = null;
        state.version++;
        break;
      }
      case "execution_success":
      case "execution_interrupted":
        if (type === "execution_interrupted") editor.notify("Run interrupted", "warn");
        this.runningNode = null;
        this.runningPrompt = null;
        this.progress = null;
        editor.queuePanel.refresh();
        break;
      case "execution_error": {
        const nodeId = data.node_id === undefined || data.node_id === null ? null : String(data.node_id);
        const message = `${data.exception_type || "Error"}: ${data.exception_message || "node failed"}`;
        if (nodeId) this.errors.set(nodeId, [{ type: "execution_error", message, details: "", input: null }]);
        editor.errorPanel.render(`Node ${nodeId} (${data.node_type}) failed: ${data.exception_message}`);
        editor.notify(`${data.node_type || "node"} failed: ${data.exception_message}`, "error");
        this.runningNode = null;
        this.runningPrompt = null;
        editor.queuePanel.refresh();
        break;
      }
      case "connection":
        editor.toolbar.setConnected(data.connected);
        break;
      default:
        break;
    }
    editor.canvas.setDirty();
  }
}

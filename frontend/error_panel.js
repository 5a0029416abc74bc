// Validation and run errors as a user meets them: a compact, dismissible list in a corner (one row per
// problem, its node's title and input; a click shows the node), errors that clear as soon as the offending
// input is changed, and number entries outside their declared range marked rather than silently clamped.

import { normaliseNumber } from "./defs.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Why a number widget's value is outside its declared range (as the server's validation will say), or null. */
export function rangeProblem(spec, value) {
  if (!spec || (spec.type !== "INT" && spec.type !== "FLOAT") || typeof value !== "number") return null;
  if (spec.min !== undefined && spec.min !== null && value < spec.min) return `${value} is below the minimum ${spec.min}`;
  if (spec.max !== undefined && spec.max !== null && value > spec.max) return `${value} is above the maximum ${spec.max}`;
  return null;
}

/** A typed number kept as typed when out of range (rounded for INT), so the user sees what they entered. */
export function typedNumber(spec, value) {
  if (!rangeProblem(spec, value)) return normaliseNumber(spec, value);
  return spec.type === "INT" ? Math.round(value) : value;
}

/** What an input is now (its widget value and the link into it): an error on it stands while this holds. */
function inputSignature(graph, node, input) {
  const link = graph.linkInto(node.id, input);
  return JSON.stringify([node.widgets[input] ?? null, link ? [link.from_node, link.from_slot] : null]);
}

export class ErrorPanel {
  constructor(editor, root) {
    this.editor = editor;
    this.root = root;
    this.summary = "";
    this.collapsed = false;
    root.classList.add("compact-errors");
    root.replaceChildren();
    const header = el("div", "panel-header error-header");
    this.toggleButton = el("button", "small error-toggle", "▾");
    this.toggleButton.title = "Show or hide the list";
    this.toggleButton.addEventListener("click", () => {
      this.collapsed = !this.collapsed;
      this.render();
    });
    this.heading = el("strong", "error-summary");
    const close = el("button", "small", "×");
    close.dataset.action = "close-errors";
    close.title = "Dismiss (the nodes stay marked until their inputs change)";
    close.addEventListener("click", () => this.dismiss());
    header.append(this.toggleButton, this.heading, close);
    this.list = el("div", "error-list");
    root.append(header, this.list);
    editor.graph.onChange((kind) => {
      if (kind !== "load" && kind !== "defs") this.dropFixed();
    });
  }

  /** Forget every error (the × button). */
  dismiss() {
    this.summary = "";
    this.editor.execution.errors.clear();
    this.render();
    this.editor.canvas.setDirty();
  }

  /** Drop errors whose input changed since they were reported, and those of deleted nodes. */
  dropFixed() {
    const { graph, execution } = this.editor;
    let changed = false;
    for (const [nodeId, list] of [...execution.errors]) {
      const node = graph.nodes.get(nodeId);
      const kept = node ? list.filter((err) => !err.input || err.signature === undefined
        || err.signature === inputSignature(graph, node, err.input)) : [];
      if (kept.length === list.length) continue;
      changed = true;
      if (kept.length) execution.errors.set(nodeId, kept);
      else execution.errors.delete(nodeId);
    }
    if (!changed) return;
    if (!execution.errors.size) this.summary = "";
    this.render();
    this.editor.canvas.setDirty();
  }

  render(summary = null) {
    if (summary !== null) this.summary = summary;
    const { graph, execution } = this.editor;
    const rows = new Map();
    for (const [nodeId, list] of execution.errors) {
      const node = graph.nodes.get(nodeId);
      for (const err of list) {
        if (node && err.input && err.signature === undefined) err.signature = inputSignature(graph, node, err.input);
        const title = node ? this.editor.titleOf(node) : `node ${nodeId}`;
        const text = `${title}${err.input ? ` · ${err.input}` : ""}: ${err.message}`;
        if (!rows.has(text)) rows.set(text, { nodeId, err });
      }
    }
    this.list.replaceChildren();
    for (const [text, { nodeId, err }] of rows) {
      const row = el("div", "error-item", text);
      row.dataset.nodeId = nodeId;
      if (err.details && !text.includes(err.details)) row.title = err.details;
      row.addEventListener("click", () => this.editor.actions.showNode(nodeId));
      this.list.appendChild(row);
    }
    const count = rows.size;
    const head = count ? `${count} problem${count === 1 ? "" : "s"}` : "";
    const summaryShort = count ? this.summary.split(":")[0].trim() : this.summary;
    this.heading.textContent = [head, summaryShort].filter(Boolean).join(" — ");
    this.heading.title = this.summary;
    this.list.hidden = this.collapsed;
    this.toggleButton.textContent = this.collapsed ? "▸" : "▾";
    this.root.hidden = !this.summary && count === 0;
  }
}

// File commands under stable names ("workflow.save", "workflow.saveAs", "workflow.open", "workflow.browse",
// "workflow.templates", "workflow.export.ui", "workflow.export.api", "workflow.export.png", "workflow.new",
// "workflow.close") so keyboard shortcuts and menus can call them; Save writes ComfyUI's UI format to the
// server's user-data store, the file ComfyUI's own editor lists and opens.

import { download, pickFile, readWorkflowFile } from "./files.js";
import { arrangeGraph, importWorkflow, toApiPrompt } from "./formats.js";
import { nodeLayout, TITLE_H } from "./layout.js";
import { withTextChunks } from "./png.js";
import { cleanName } from "./workflow_store.js";

/** A small modal asking for a name; resolves the trimmed name, or null when cancelled. */
export function askName(title, initial = "") {
  return new Promise((resolve) => {
    const overlay = document.createElement("div");
    overlay.className = "overlay name-dialog-overlay";
    overlay.innerHTML = `<form class="name-dialog" role="dialog"><strong></strong>
      <input class="name-input" type="text" spellcheck="false" autocomplete="off">
      <div class="name-buttons"><button type="button" class="cancel">Cancel</button>
      <button type="submit" class="primary">Save</button></div></form>`;
    overlay.querySelector("strong").textContent = title;
    const input = overlay.querySelector("input");
    input.value = initial;
    const finish = (value) => {
      overlay.remove();
      resolve(value);
    };
    overlay.querySelector("form").addEventListener("submit", (event) => {
      event.preventDefault();
      finish(cleanName(input.value) || null);
    });
    overlay.querySelector(".cancel").addEventListener("click", () => finish(null));
    input.addEventListener("keydown", (event) => {
      event.stopPropagation();
      if (event.key === "Escape") finish(null);
    });
    document.body.appendChild(overlay);
    input.focus();
    input.select();
  });
}

/**
 * The bridge between the editor's native workflow and the server converter's. Two things differ: a seed's
 * "control after generate" mode (the converter keeps it in each node's `comfyui` entry, the editor in
 * `control_after_generate`), and positions (the converter keeps ComfyUI's, where `pos` is below the title bar;
 * the editor's `pos` is the node's top-left, title included, as comfy_ui.js imports).
 */
export function fromServerNative(native) {
  for (const node of Object.values(native.nodes || {})) {
    const kept = node.comfyui && node.comfyui.control;
    if (kept && typeof kept === "object") node.control_after_generate = { ...kept, ...(node.control_after_generate || {}) };
    if (Array.isArray(node.pos)) node.pos = [node.pos[0], node.pos[1] - TITLE_H];
    if (Array.isArray(node.size)) node.size = [node.size[0], node.size[1] + TITLE_H];
  }
  return native;
}

/** The inverse, before the server converts the editor's workflow to ComfyUI's format. */
export function toServerNative(native) {
  for (const node of Object.values(native.nodes || {})) {
    if (Array.isArray(node.pos)) node.pos = [node.pos[0], node.pos[1] + TITLE_H];
    if (Array.isArray(node.size)) node.size = [node.size[0], Math.max(0, node.size[1] - TITLE_H)];
    if (!node.control_after_generate || !Object.keys(node.control_after_generate).length) continue;
    const info = node.comfyui && typeof node.comfyui === "object" ? node.comfyui : {};
    node.comfyui = { ...info, control: { ...(info.control || {}), ...node.control_after_generate } };
  }
  return native;
}

export class WorkflowActions {
  constructor(editor, store, tabs) {
    this.editor = editor;
    this.store = store;
    this.tabs = tabs;
  }

  get graph() {
    return this.editor.graph;
  }

  /** The active workflow in ComfyUI's UI format, from the server's converter. */
  async uiWorkflow() {
    const native = this.graph.serialize();
    for (const [id, node] of Object.entries(native.nodes)) {
      // ComfyUI's editor draws a node at its saved size: give it the size shown here, not a stock one.
      const lay = nodeLayout(this.graph, this.graph.nodes.get(id));
      if (!node.size || !node.size[1]) node.size = [Math.round(lay.w), Math.round(lay.h)];
    }
    return this.store.convert(toServerNative(native), "ui");
  }

  async save() {
    const tab = this.tabs.active;
    if (!tab.path) return this.saveAs();
    return this.write(tab.path, true);
  }

  async saveAs() {
    const tab = this.tabs.active;
    const name = await askName("Save workflow as", tab.name || "workflow");
    if (!name) return false;
    return this.write(`${name}.json`, false);
  }

  async write(path, overwrite) {
    try {
      const data = await this.uiWorkflow();
      try {
        await this.store.save(path, data, overwrite);
      } catch (err) {
        if (err.status !== 409 || !window.confirm(`workflows/${path} exists. Replace it?`)) throw err;
        await this.store.save(path, data, true);
      }
      this.tabs.markSaved(path);
      this.editor.notify(`Saved workflows/${path}`);
      this.editor.workflowBrowser?.refresh();
      return true;
    } catch (err) {
      this.editor.notify(`Could not save workflows/${path}: ${err.message}`, "error");
      return false;
    }
  }

  /**
   * Open workflow data of any format in a new tab (or the tab already showing `path`). ComfyUI's UI format goes
   * through the server's converter, which keeps Notes, Reroutes and link colours for the next save.
   */
  async openData(data, { name = null, path = null } = {}) {
    let native = data;
    let kind = null;
    if (data && Array.isArray(data.nodes)) {
      try {
        native = fromServerNative(await this.store.convert(data, "native"));
        kind = `ComfyUI workflow v${data.version ?? "?"}`;
      } catch (err) {
        console.warn("server conversion failed; importing in the page", err);
      }
    }
    let imported;
    try {
      imported = importWorkflow(native, this.graph.defs);
    } catch (err) {
      this.editor.notify(`${name || "workflow"}: ${err.message}`, "error");
      return null;
    }
    const tab = this.tabs.open(imported.workflow, { name, path });
    if (imported.needsLayout) {
      arrangeGraph(this.graph);
      this.editor.actions.fitView();
      tab.savedText = this.tabs.currentText();
    }
    const missing = new Set([...this.graph.nodes.values()].filter((n) => !this.graph.defs.has(n.type)).map((n) => n.type));
    const note = `Opened ${name || "workflow"} (${kind || imported.kind}, ${this.graph.nodes.size} nodes)`;
    this.editor.notify(missing.size ? `${note} — missing node types: ${[...missing].join(", ")}` : note, missing.size ? "warn" : "info");
    return tab;
  }

  async openSaved(path) {
    try {
      const data = await this.store.load(path);
      return this.openData(data, { name: path.replace(/\.json$/i, "").split("/").pop(), path });
    } catch (err) {
      this.editor.notify(`Could not open workflows/${path}: ${err.message}`, "error");
      return null;
    }
  }

  async openTemplate(name, title) {
    try {
      return this.openData(await this.store.template(name), { name: title || name });
    } catch (err) {
      this.editor.notify(`Could not open template ${name}: ${err.message}`, "error");
      return null;
    }
  }

  /** A workflow file from the computer (JSON of any format, or a PNG carrying one), in a new tab. */
  async openFile(file = null) {
    file = file || (await pickFile(document.getElementById("file-input"), ".json,.png,application/json,image/png"));
    if (!file) return null;
    try {
      return this.openData(await readWorkflowFile(file), { name: file.name.replace(/\.(json|png)$/i, "") });
    } catch (err) {
      this.editor.notify(`Could not open ${file.name}: ${err.message}`, "error");
      return null;
    }
  }

  baseName() {
    return (this.tabs.active.name || "workflow").replace(/[^\w.-]+/g, "_");
  }

  async exportUi() {
    try {
      download(`${this.baseName()}.json`, JSON.stringify(await this.uiWorkflow(), null, 2));
    } catch (err) {
      this.editor.notify(`Export failed: ${err.message}`, "error");
    }
  }

  exportApi() {
    download(`${this.baseName()}_api.json`, JSON.stringify(toApiPrompt(this.graph), null, 2));
  }

  exportNative() {
    download(`${this.baseName()}.nodegraph.json`, JSON.stringify(this.graph.serialize(), null, 2));
  }

  /** The canvas as a PNG carrying the workflow (`workflow`: UI format, `prompt`: API, and our native chunk). */
  async exportPng() {
    try {
      const ui = await this.uiWorkflow();
      this.editor.canvas.draw();
      const blob = await new Promise((resolve) => this.editor.canvas.el.toBlob(resolve, "image/png"));
      const bytes = withTextChunks(await blob.arrayBuffer(), {
        workflow: JSON.stringify(ui), prompt: JSON.stringify(toApiPrompt(this.graph)),
        nodegraph_workflow: JSON.stringify(this.graph.serialize()),
      });
      const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
      const link = document.createElement("a");
      link.href = url;
      link.download = `${this.baseName()}.png`;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (err) {
      this.editor.notify(`PNG export failed: ${err.message}`, "error");
    }
  }

  exportMenu(anchor) {
    const rect = anchor.getBoundingClientRect();
    this.editor.menu.open(rect.left, rect.bottom + 2, [
      { label: "ComfyUI workflow (.json)", action: () => this.exportUi() },
      { label: "API prompt (.json)", action: () => this.exportApi() },
      { label: "PNG with workflow", action: () => this.exportPng() },
      { label: "nodegraph workflow (.json)", action: () => this.exportNative() },
    ], { className: "export-menu" });
  }
}

// Dropping and pasting onto the canvas: a model from the library makes its loader node; a PNG that carries a
// workflow opens it in a new tab; any other image is uploaded (/upload/image) and gets a LoadImage node where
// it landed; a .json file opens as a workflow. Ctrl+V pastes an image from the system clipboard the same way,
// and copied nodes otherwise.

import { MODEL_MIME } from "./model_library.js";
import { workflowFromPng } from "./png.js";

const isImage = (file) => file && (file.type.startsWith("image/") || /\.(png|jpe?g|webp|gif|bmp)$/i.test(file.name));
const isPng = (file) => file.type === "image/png" || /\.png$/i.test(file.name);

export class DropPaste {
  constructor(editor, files, library) {
    this.editor = editor;
    this.files = files;
    this.library = library;
    this.pasteShift = false;
    // The shared keymap turns Ctrl+V into a node paste and cancels the key, which would also cancel the
    // browser's paste event; take Ctrl+V first and let the paste event (with the clipboard's data) decide.
    window.addEventListener("keydown", (event) => {
      const typing = event.target && (["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName) || event.target.isContentEditable);
      if (typing || !(event.ctrlKey || event.metaKey) || event.key.toLowerCase() !== "v" || event.altKey) return;
      this.pasteShift = event.shiftKey;
      event.stopImmediatePropagation();
      // Should no paste event follow (no clipboard access), paste the copied nodes anyway.
      clearTimeout(this.pasteTimer);
      const shift = event.shiftKey;
      this.pasteTimer = setTimeout(() => this.editor.actions.paste(null, shift), 150);
    }, true);
    document.addEventListener("paste", (event) => this.onPaste(event));
  }

  /** World point under a client point. */
  worldAt(clientX, clientY) {
    const rect = this.editor.canvas.el.getBoundingClientRect();
    return this.editor.canvas.toWorld(clientX - rect.left, clientY - rect.top);
  }

  /** Handle a drop on the page; true when it was ours (files.js falls back to opening the file). */
  onDrop(event) {
    const transfer = event.dataTransfer;
    if (!transfer) return false;
    const at = this.worldAt(event.clientX, event.clientY);
    const model = transfer.getData(MODEL_MIME);
    if (model) {
      try {
        this.library.addLoader(JSON.parse(model), at);
      } catch (err) {
        this.editor.notify(`Could not add the model: ${err.message}`, "error");
      }
      return true;
    }
    const file = transfer.files && transfer.files[0];
    if (!file) return false;
    if (isImage(file)) this.dropImage(file, at);
    else this.files.openFile(file);
    return true;
  }

  /** A PNG with a workflow opens it; any other image becomes a LoadImage node at `at`. */
  async dropImage(file, at) {
    if (isPng(file)) {
      let found = null;
      try {
        found = await workflowFromPng(await file.arrayBuffer());
      } catch {
        found = null;
      }
      if (found) {
        await this.files.openData(found.data, { name: file.name.replace(/\.png$/i, "") });
        return;
      }
    }
    await this.loadImageNode(file, at);
  }

  async loadImageNode(file, at) {
    const { graph, api } = this.editor;
    if (!graph.defs.has("LoadImage")) {
      this.editor.notify("The server has no LoadImage node", "error");
      return null;
    }
    let uploaded;
    try {
      uploaded = await api.uploadImage(file);
    } catch (err) {
      this.editor.notify(`Upload of ${file.name} failed: ${err.message}`, "error");
      return null;
    }
    const value = uploaded.subfolder ? `${uploaded.subfolder}/${uploaded.name}` : uploaded.name;
    const spec = graph.defs.get("LoadImage").inputMap.get("image");
    if (spec && spec.options && !spec.options.includes(value)) spec.options.push(value);
    const node = graph.makeNode("LoadImage", at);
    node.widgets.image = value;
    graph.change(() => graph.addNode(node));
    this.editor.select([node.id]);
    this.editor.notify(`Uploaded ${value}`);
    return node.id;
  }

  onPaste(event) {
    const target = event.target;
    if (target && (["INPUT", "TEXTAREA"].includes(target.tagName) || target.isContentEditable)) return;
    event.preventDefault();
    clearTimeout(this.pasteTimer);
    const shift = this.pasteShift;
    this.pasteShift = false;
    const data = event.clipboardData;
    const file = data && [...data.files].find(isImage);
    if (file) {
      this.loadImageNode(file, this.editor.interaction.pointerWorld());
      return;
    }
    const text = data ? data.getData("text/plain") : "";
    if (text && /^\s*\{/.test(text)) {
      try {
        const parsed = JSON.parse(text);
        if (parsed && (parsed.nodes || Object.values(parsed).some((v) => v && v.class_type))) {
          this.files.openData(parsed, { name: "pasted workflow" });
          return;
        }
      } catch {
        /* not a workflow: paste nodes */
      }
    }
    this.editor.actions.paste(null, shift);
  }
}

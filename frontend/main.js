// The editor: wires the model, canvas, interaction, panels and server client together, keeps the
// graph in localStorage across reloads, and exposes read-only accessors for browser tests.

import { Actions } from "./actions.js";
import { Api } from "./api.js";
import { Canvas } from "./canvas.js";
import { ContextMenu } from "./context_menu.js";
import { defaultWorkflow } from "./default_graph.js";
import { parseObjectInfo } from "./defs.js";
import { Execution } from "./execution.js";
import { installFiles } from "./files_ui.js";
import { installDrop, pickFile } from "./files.js";
import { Graph } from "./graph.js";
import { Help } from "./help.js";
import { Gallery } from "./gallery.js";
import { Interaction } from "./interaction.js";
import { installShortcuts } from "./keys.js";
import { nodeLayout, nodeTitle, setRuntimeSource } from "./layout.js";
import { Menu } from "./menu.js";
import { Lightbox } from "./lightbox.js";
import { Minimap } from "./minimap.js";
import { Palette } from "./palette.js";
import { ErrorPanel } from "./error_panel.js";
import { Previews } from "./previews.js";
import { QueuePanel } from "./queue_panel.js";
import { installResultsHook } from "./results_hook.js";
import { withRandomSeeds } from "./seed_control.js";
import { Settings, SettingsRoom } from "./settings.js";
import { Keymap } from "./shortcuts.js";
import { SidePanel } from "./side_panel.js";
import { installTestHook } from "./test_hook.js";
import { Toolbar } from "./toolbar.js";
import { ToolbarOverflow } from "./toolbar_overflow.js";

const STORAGE_KEY = "nodegraph.workflow";

class Editor {
  constructor() {
    this.api = new Api();
    this.graph = new Graph(new Map());
    this.selection = new Set();
    this.selectedGroup = null;
    this.clipboard = null;
    this.textEditor = null;
    this.ready = false;
    this.menu = new Menu();
    this.canvas = new Canvas(document.getElementById("canvas"), this);
    this.execution = new Execution(this);
    this.actions = new Actions(this);
    this.interaction = new Interaction(this);
    this.contextMenu = new ContextMenu(this);
    this.palette = new Palette(this);
    this.toolbar = new Toolbar(this, document.getElementById("toolbar"));
    this.queuePanel = new QueuePanel(this, document.getElementById("queue-panel"));
    this.errorPanel = new ErrorPanel(this, document.getElementById("error-panel"));
    this.keymap = new Keymap();
    this.help = new Help(document.getElementById("help"), this.keymap);
    this.minimap = new Minimap(this, document.querySelector(".workspace"));
    this.settings = new Settings(this);
    this.settingsRoom = new SettingsRoom(this);
    this.toolbarOverflow = new ToolbarOverflow(this, document.getElementById("toolbar"));
    this.previews = new Previews(this);
    this.sidePanel = new SidePanel(this, document.getElementById("queue-panel"));
    this.gallery = new Gallery(this, document.getElementById("queue-panel"));
    this.lightbox = new Lightbox(this);
    setRuntimeSource((id) => this.execution.runtime(id));
    installShortcuts(this);
    installDrop(this);
    this.graph.onChange(() => {
      this.canvas.setDirty();
      this.schedulePersist();
    });
    window.addEventListener("beforeunload", () => this.persist());
  }

  async start() {
    this.api.connect();
    const settingsRead = this.settings.load();
    let defs = new Map();
    try {
      defs = parseObjectInfo(await this.api.getObjectInfo());
    } catch (err) {
      this.notify(`Could not read node definitions from the server: ${err.message}`, "error");
    }
    this.graph.setDefs(defs);
    await settingsRead;
    const saved = this.restore();
    if (saved) {
      this.graph.fill(saved.workflow);
      if (saved.view) this.canvas.setView(saved.view.scale, saved.view.offset);
      else this.actions.fitView();
    } else {
      this.graph.fill(withRandomSeeds(defaultWorkflow(defs), defs)); // a fresh browser: a seed of its own
      this.actions.fitView();
    }
    this.graph.emit("load");
    this.ready = true;
    document.body.dataset.ready = "true";
  }

  // ---- persistence ---------------------------------------------------------------------------

  restore() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
      return saved && saved.workflow && saved.workflow.nodes ? saved : null;
    } catch {
      return null;
    }
  }

  persist() {
    clearTimeout(this.persistTimer);
    this.persistTimer = null;
    if (!this.ready) return;
    const view = { scale: this.canvas.scale, offset: [...this.canvas.offset] };
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify({ workflow: this.graph.serialize(), view }));
    } catch (err) {
      console.warn("could not keep the workflow in localStorage", err);
    }
  }

  schedulePersist() {
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => this.persist(), 300);
  }

  onViewChanged() {
    this.schedulePersist();
  }

  // ---- selection and helpers -----------------------------------------------------------------

  select(ids) {
    this.selection = new Set(ids);
    if (ids.length) this.selectedGroup = null;
    this.selectionChanged();
  }

  selectionChanged() {
    this.canvas.setDirty();
  }

  pruneSelection() {
    for (const id of [...this.selection]) if (!this.graph.nodes.has(id)) this.selection.delete(id);
    if (this.selectedGroup && !this.graph.groups.includes(this.selectedGroup)) this.selectedGroup = null;
    this.canvas.setDirty();
  }

  titleOf(node) {
    return nodeTitle(node, this.graph.defs.get(node.type));
  }

  openPalette(options) {
    this.palette.open(options);
  }

  /** Show a short message at the bottom of the page; errors stay longer. */
  notify(message, level = "info") {
    const box = document.getElementById("toasts");
    const toast = document.createElement("div");
    toast.className = `toast toast-${level}`;
    toast.textContent = message;
    box.appendChild(toast);
    while (box.children.length > 4) box.firstChild.remove();
    setTimeout(() => toast.remove(), level === "error" ? 9000 : 4000);
    if (level === "error") console.warn(message);
  }

  /** The image-upload button of a COMBO: send a file to /upload/image and pick it. */
  async uploadImageFor(node, name) {
    const file = await pickFile(document.getElementById("file-input"), "image/*");
    if (!file) return;
    try {
      const result = await this.api.uploadImage(file);
      const value = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
      const spec = this.graph.inputSpec(node, name);
      if (spec && spec.options && !spec.options.includes(value)) spec.options.push(value);
      this.graph.change(() => this.graph.setWidget(node, name, value));
    } catch (err) {
      this.notify(`Upload failed: ${err.message}`, "error");
    }
  }

  nodeLayout(node) {
    return nodeLayout(this.graph, node);
  }
}

const editor = new Editor();
installFiles(editor);
installTestHook(editor);
installResultsHook(editor);
editor.start().then(() => editor.files.start());

// Editor commands, shared by the keyboard, the toolbar and the menus.

import { defaultWorkflow } from "./default_graph.js";
import { parseObjectInfo } from "./defs.js";
import { download, pickFile, readWorkflowFile } from "./files.js";
import { arrangeGraph, importWorkflow, toApiPrompt } from "./formats.js";
import { boundsOf, nodeLayout, nodesInGroup } from "./layout.js";
import { withRandomSeeds } from "./seed_control.js";
import { closeTextEditor } from "./widgets.js";

const CLIPBOARD_KEY = "nodegraph.clipboard";
/** The zoom below which node text is no longer drawn (canvas.js draws low detail under 0.55). */
const READABLE_SCALE = 0.6;

export class Actions {
  constructor(editor) {
    this.editor = editor;
  }

  get graph() {
    return this.editor.graph;
  }

  selectedIds() {
    return [...this.editor.selection].filter((id) => this.graph.nodes.has(id));
  }

  /** Queue the workflow; `front: true` puts it before every pending prompt (POST /prompt's `front`). */
  queue(options = {}) {
    return this.editor.execution.queue(this.editor.toolbar.batchCount(), options);
  }

  /** Stop the running prompt (POST /interrupt naming it, so a prompt that started meanwhile is spared). */
  async interrupt() {
    const running = this.editor.execution.runningPrompt;
    try {
      await this.editor.api.interrupt(running || undefined);
      this.editor.notify(running ? "Cancelling the running prompt" : "Nothing is running", running ? "info" : "warn");
    } catch (err) {
      this.editor.notify(`Cancel failed: ${err.message}`, "error");
    }
    this.editor.queuePanel.refresh();
  }

  /** Remove every prompt still waiting in the queue (POST /queue {"delete": [...]}); the running one goes on. */
  async cancelPending() {
    try {
      const queue = await this.editor.api.getQueue();
      const ids = (queue.queue_pending || []).map((item) => item[1]);
      if (ids.length) await this.editor.api.deleteQueued(ids);
      this.editor.notify(ids.length ? `Removed ${ids.length} queued prompt${ids.length === 1 ? "" : "s"}` : "Nothing is queued");
    } catch (err) {
      this.editor.notify(`Cancel failed: ${err.message}`, "error");
    }
    this.editor.queuePanel.refresh();
  }

  undo() {
    closeTextEditor(this.editor, false);
    if (!this.graph.undo()) this.editor.notify("Nothing to undo");
    this.editor.pruneSelection();
  }

  redo() {
    if (!this.graph.redo()) this.editor.notify("Nothing to redo");
    this.editor.pruneSelection();
  }

  copy() {
    const ids = this.selectedIds();
    if (!ids.length) return;
    const clip = this.graph.copy(ids);
    this.editor.clipboard = clip;
    try {
      localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(clip));
    } catch {
      /* storage full or disabled: the in-page clipboard still works */
    }
    this.editor.notify(`Copied ${ids.length} node${ids.length === 1 ? "" : "s"}`);
  }

  paste(at = null, keepOutsideLinks = false) {
    let clip = this.editor.clipboard;
    if (!clip) {
      try {
        clip = JSON.parse(localStorage.getItem(CLIPBOARD_KEY) || "null");
      } catch {
        clip = null;
      }
    }
    if (!clip) return;
    const where = at || this.editor.interaction.pointerWorld();
    const ids = this.graph.change(() => this.graph.paste(clip, where, keepOutsideLinks));
    this.editor.select(ids);
  }

  clone() {
    const ids = this.selectedIds();
    if (!ids.length) return;
    const bounds = boundsOf(this.graph, ids);
    const created = this.graph.change(() => this.graph.paste(this.graph.copy(ids), [bounds[0] + 30, bounds[1] + 30]));
    this.editor.select(created);
  }

  selectAll() {
    this.editor.select([...this.graph.nodes.keys()]);
  }

  deleteSelected() {
    const ids = this.selectedIds();
    const group = this.editor.selectedGroup;
    if (!ids.length && !group) return;
    this.graph.change(() => {
      if (ids.length) this.graph.removeNodes(ids);
      else this.graph.groups.splice(this.graph.groups.indexOf(group), 1);
    });
    for (const id of ids) this.editor.execution.states.delete(id);
    this.editor.select([]);
  }

  /** Mute (mode "never") or bypass the selection; applying it again turns it back on. */
  toggleMode(mode) {
    const nodes = this.selectedIds().map((id) => this.graph.nodes.get(id));
    if (!nodes.length) return;
    const allSet = nodes.every((node) => node.mode === mode);
    this.graph.change(() => nodes.forEach((node) => (node.mode = allSet ? "always" : mode)));
  }

  toggleCollapse() {
    const nodes = this.selectedIds().map((id) => this.graph.nodes.get(id));
    if (!nodes.length) return;
    const collapse = !nodes.every((node) => node.collapsed);
    this.graph.change(() => nodes.forEach((node) => {
      node.collapsed = collapse;
      this.graph.touch(node);
    }));
  }

  renameSelected() {
    const [id] = this.selectedIds();
    if (id) this.editor.interaction.renameNode(this.graph.nodes.get(id));
  }

  addGroup(at, bounding = null) {
    const group = { title: "Group", bounding: bounding || [at[0], at[1], 400, 300], color: null };
    this.graph.change(() => this.graph.groups.push(group));
    this.editor.select([]);
    this.editor.selectedGroup = group;
    return group;
  }

  groupSelected() {
    const ids = this.selectedIds();
    if (!ids.length) return;
    const [x, y, w, h] = boundsOf(this.graph, ids);
    this.addGroup(null, [x - 20, y - 52, w + 40, h + 72]);
  }

  fitGroup(group) {
    const ids = nodesInGroup(this.graph, group);
    if (!ids.length) return;
    const [x, y, w, h] = boundsOf(this.graph, ids);
    this.graph.change(() => (group.bounding = [x - 20, y - 52, w + 40, h + 72]));
  }

  /**
   * Fit the selection, or the whole graph; a graph too large to read whole is shown at a readable zoom,
   * centred on the node nearest its middle (never an empty screen of unreadable specks).
   */
  fitView() {
    const canvas = this.editor.canvas;
    const ids = this.selectedIds();
    const bounds = boundsOf(this.graph, ids.length ? ids : undefined);
    canvas.fitRect(bounds);
    if (!bounds || canvas.scale >= READABLE_SCALE) return;
    const [mx, my] = [bounds[0] + bounds[2] / 2, bounds[1] + bounds[3] / 2];
    let centre = [mx, my];
    let best = Infinity;
    for (const id of ids.length ? ids : this.graph.nodes.keys()) {
      const node = this.graph.nodes.get(id);
      const lay = nodeLayout(this.graph, node);
      const [cx, cy] = [node.pos[0] + lay.w / 2, node.pos[1] + lay.h / 2];
      const distance = (cx - mx) ** 2 + (cy - my) ** 2;
      if (distance < best) [best, centre] = [distance, [cx, cy]];
    }
    canvas.setView(READABLE_SCALE, [canvas.width / 2 - centre[0] * READABLE_SCALE, canvas.height / 2 - centre[1] * READABLE_SCALE]);
  }

  showNode(id) {
    const node = this.graph.nodes.get(id);
    if (!node) return;
    const lay = nodeLayout(this.graph, node);
    this.editor.canvas.fitRect([node.pos[0], node.pos[1], lay.w, lay.h], 200);
    this.editor.select([id]);
  }

  arrange() {
    this.graph.change(() => arrangeGraph(this.graph));
    this.fitView();
  }

  /** The node search at the mouse; `query` is what the user started typing on the canvas. */
  openPaletteAtPointer(query = "") {
    const canvas = this.editor.canvas;
    const [sx, sy] = this.editor.interaction.pointer;
    const rect = canvas.el.getBoundingClientRect();
    this.editor.openPalette({ at: canvas.toWorld(sx, sy), screen: [rect.left + sx, rect.top + sy], query });
  }

  /** Re-read /object_info: new node packs appear and combo lists (model files) are refreshed. */
  async refreshDefs() {
    try {
      const defs = parseObjectInfo(await this.editor.api.getObjectInfo());
      this.graph.setDefs(defs);
      this.editor.notify(`Node definitions refreshed (${defs.size} types)`);
    } catch (err) {
      this.editor.notify(`Refresh failed: ${err.message}`, "error");
    }
  }

  toggleQueuePanel() {
    this.editor.queuePanel.toggle();
  }

  toggleHelp() {
    this.editor.help.toggle();
  }

  escape() {
    if (this.editor.settingsRoom.visible) this.editor.settingsRoom.toggle(false);
    else if (this.editor.help.visible) this.editor.help.toggle(false);
    else if (this.editor.palette.isOpen) this.editor.palette.close();
    else this.editor.select([]);
  }

  /** Commands other modules provide under stable names (e.g. "workflow.save"), for keys and menus. */
  register(name, run, label = name) {
    (this.registry ||= new Map()).set(name, { run, label });
  }

  run(name, ...args) {
    const found = this.registry && this.registry.get(name);
    if (!found) throw new Error(`no action named ${name}`);
    return found.run(...args);
  }

  has(name) {
    return Boolean(this.registry && this.registry.has(name));
  }

  save() {
    if (this.has("workflow.save")) return this.run("workflow.save");
    download("workflow.json", JSON.stringify(this.graph.serialize(), null, 2));
  }

  exportApi() {
    download("workflow_api.json", JSON.stringify(toApiPrompt(this.graph), null, 2));
  }

  async openFile() {
    if (this.has("workflow.open")) return this.run("workflow.open");
    const file = await pickFile(document.getElementById("file-input"), ".json,.png,application/json,image/png");
    if (file) await this.loadFile(file);
  }

  async loadFile(file) {
    try {
      this.loadData(await readWorkflowFile(file), file.name);
    } catch (err) {
      this.editor.notify(`Could not load ${file.name}: ${err.message}`, "error");
    }
  }

  /** Load workflow data of any supported format as one undoable step, then fit the view. */
  loadData(data, source = "workflow") {
    let imported;
    try {
      imported = importWorkflow(data, this.graph.defs);
    } catch (err) {
      this.editor.notify(`${source}: ${err.message}`, "error");
      return false;
    }
    this.graph.change(() => {
      this.graph.fill(imported.workflow);
      if (imported.needsLayout) arrangeGraph(this.graph);
    });
    this.graph.emit("load");
    this.editor.execution.states.clear();
    this.editor.execution.errors.clear();
    this.editor.errorPanel.render("");
    this.editor.select([]);
    this.fitView();
    const missing = new Set([...this.graph.nodes.values()].filter((n) => !this.graph.defs.has(n.type)).map((n) => n.type));
    const notes = [`Loaded ${source} (${imported.kind}, ${this.graph.nodes.size} nodes)`];
    if (missing.size) notes.push(`missing node types: ${[...missing].join(", ")}`);
    for (const warning of imported.warnings.slice(0, 3)) console.warn(warning);
    this.editor.notify(notes.join(" — "), missing.size ? "warn" : "info");
    return true;
  }

  loadDefault() {
    this.loadData(withRandomSeeds(defaultWorkflow(this.graph.defs), this.graph.defs), "default workflow");
  }

  clear() {
    this.graph.change(() => this.graph.fill({ nodes: {}, links: [], groups: [] }));
    this.editor.execution.states.clear();
    this.editor.select([]);
    this.editor.canvas.setView(1, [0, 0]);
  }
}

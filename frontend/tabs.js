// Several open workflows, one tab each, above the canvas. The canvas shows the active tab's graph; the others
// keep their workflow, view and undo history. A tab is marked "•" while it differs from what was last saved
// (or, for a new tab, from what it opened with).

let nextKey = 1;
const STORAGE_KEY = "nodegraph.tabs";

export class Tabs {
  constructor(editor) {
    this.editor = editor;
    this.tabs = [];
    this.active = null;
    this.bar = document.createElement("nav");
    this.bar.className = "workflow-tabs";
    this.bar.setAttribute("aria-label", "Open workflows");
    document.getElementById("toolbar").after(this.bar);
    this.dirtyTimer = null;
    editor.graph.onChange(() => this.scheduleDirtyCheck());
    window.addEventListener("beforeunload", () => this.persist());
  }

  /**
   * Adopt the graph the editor started with as the active tab, with the other tabs of the last visit (kept in
   * localStorage: names, saved paths, unsaved changes).
   */
  start() {
    let kept = null;
    try {
      kept = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    } catch {
      kept = null;
    }
    const current = this.currentText();
    const entries = kept && Array.isArray(kept.tabs) ? kept.tabs : [];
    const activeIndex = entries.length ? Math.min(Math.max(0, Number(kept.active) || 0), entries.length - 1) : 0;
    entries.forEach((entry, index) => {
      const tab = this.makeTab({ name: entry.name || null, path: entry.path || null });
      tab.savedText = typeof entry.savedText === "string" ? entry.savedText : null;
      tab.workflow = index === activeIndex ? null : entry.workflow || null;
      this.tabs.push(tab);
    });
    if (!this.tabs.length) this.tabs.push(this.makeTab({ name: null, path: null }));
    this.active = this.tabs[activeIndex] || this.tabs[0];
    if (this.active.savedText === null) this.active.savedText = current;
    this.active.dirty = current !== this.active.savedText;
    for (const tab of this.tabs) if (tab !== this.active) tab.dirty = JSON.stringify(tab.workflow) !== tab.savedText;
    this.render();
  }

  /** Keep the open tabs for the next visit (the active graph itself is kept by main.js). */
  persist() {
    if (!this.active) return;
    const tabs = this.tabs.map((tab) => ({
      name: tab.name, path: tab.path, savedText: tab.savedText, workflow: tab === this.active ? null : tab.workflow,
    }));
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify({ tabs, active: this.tabs.indexOf(this.active) }));
    } catch (err) {
      console.warn("could not keep the open tabs in localStorage", err);
    }
  }

  makeTab({ name, path }) {
    return { key: nextKey++, name, path, workflow: null, view: null, undo: [], redo: [], savedText: null, dirty: false };
  }

  label(tab) {
    return tab.name || "Unsaved workflow";
  }

  currentText() {
    return JSON.stringify(this.editor.graph.serialize());
  }

  scheduleDirtyCheck() {
    if (this.dirtyTimer || !this.active) return;
    this.dirtyTimer = setTimeout(() => {
      this.dirtyTimer = null;
      this.updateDirty();
    }, 120);
  }

  updateDirty() {
    if (!this.active) return;
    const dirty = this.currentText() !== this.active.savedText;
    if (dirty !== this.active.dirty) {
      this.active.dirty = dirty;
      this.render();
    }
  }

  /** Keep the active graph, view and history in its tab before another is shown. */
  stash() {
    const { graph, canvas } = this.editor;
    const tab = this.active;
    if (!tab) return;
    tab.workflow = graph.serialize();
    tab.view = { scale: canvas.scale, offset: [...canvas.offset] };
    tab.undo = graph.undoStack.slice();
    tab.redo = graph.redoStack.slice();
    tab.dirty = this.currentText() !== tab.savedText;
  }

  show(tab, fit = false) {
    const { graph, canvas, execution } = this.editor;
    this.active = tab;
    graph.fill(tab.workflow || { nodes: {}, links: [], groups: [] });
    graph.undoStack = tab.undo.slice();
    graph.redoStack = tab.redo.slice();
    execution.states.clear();
    execution.errors.clear();
    this.editor.select([]);
    graph.emit("load");
    if (tab.view && !fit) canvas.setView(tab.view.scale, tab.view.offset);
    else this.editor.actions.fitView();
    if (tab.savedText === null) tab.savedText = this.currentText();
    tab.dirty = this.currentText() !== tab.savedText;
    this.render();
  }

  switchTo(tab) {
    if (tab === this.active) return;
    this.stash();
    this.show(tab);
  }

  /** Open `workflow` (native format) in a new tab, or switch to the tab that already holds `path`. */
  open(workflow, { name = null, path = null } = {}) {
    const existing = path ? this.tabs.find((tab) => tab.path === path) : null;
    if (existing) {
      this.switchTo(existing);
      return existing;
    }
    if (this.active && !this.active.path && !path) {
      this.updateDirty();
      if (!this.active.dirty) return this.replaceActive(workflow, name); // an untouched new tab: reuse it
    }
    this.stash();
    const tab = this.makeTab({ name, path });
    tab.workflow = workflow;
    this.tabs.push(tab);
    this.show(tab, true);
    return tab;
  }

  /** Show `workflow` in the active tab as one undoable step (as ComfyUI replaces an untouched new workflow). */
  replaceActive(workflow, name) {
    const { graph, execution } = this.editor;
    const tab = this.active;
    graph.change(() => graph.fill(workflow));
    execution.states.clear();
    execution.errors.clear();
    this.editor.select([]);
    graph.emit("load");
    this.editor.actions.fitView();
    tab.name = name;
    tab.savedText = this.currentText();
    tab.dirty = false;
    this.render();
    return tab;
  }

  /** The active tab was saved as `path`: it takes that name and its marker clears. */
  markSaved(path) {
    const tab = this.active;
    tab.path = path;
    tab.name = path.replace(/\.json$/i, "").split("/").pop();
    tab.savedText = this.currentText();
    tab.dirty = false;
    this.render();
  }

  /** Close a tab (asking first when it has unsaved changes); the last tab closes into an empty one. */
  close(tab) {
    if (tab === this.active) this.updateDirty();
    if (tab.dirty && !window.confirm(`"${this.label(tab)}" has unsaved changes. Close it anyway?`)) return false;
    const index = this.tabs.indexOf(tab);
    this.tabs.splice(index, 1);
    if (!this.tabs.length) {
      const fresh = this.makeTab({ name: null, path: null });
      fresh.workflow = { format: "nodegraph", version: 1, nodes: {}, links: [], groups: [], extra: {} };
      this.tabs.push(fresh);
      this.show(fresh, true);
    } else if (tab === this.active) {
      this.show(this.tabs[Math.min(index, this.tabs.length - 1)]);
    } else this.render();
    return true;
  }

  newEmpty() {
    return this.open({ format: "nodegraph", version: 1, nodes: {}, links: [], groups: [], extra: {} });
  }

  render() {
    clearTimeout(this.persistTimer);
    this.persistTimer = setTimeout(() => this.persist(), 300);
    this.bar.replaceChildren();
    for (const tab of this.tabs) {
      const item = document.createElement("div");
      item.className = "workflow-tab";
      item.classList.toggle("active", tab === this.active);
      item.classList.toggle("dirty", tab.dirty);
      item.title = tab.path ? `workflows/${tab.path}` : "Not saved yet";
      item.dataset.key = String(tab.key);
      const label = document.createElement("span");
      label.className = "tab-label";
      label.textContent = this.label(tab);
      const marker = document.createElement("span");
      marker.className = "tab-dirty";
      marker.textContent = tab.dirty ? "•" : "";
      marker.title = tab.dirty ? "Unsaved changes" : "";
      const close = document.createElement("button");
      close.className = "tab-close small";
      close.textContent = "×";
      close.title = "Close this workflow";
      close.addEventListener("click", (event) => {
        event.stopPropagation();
        this.close(tab);
      });
      item.append(label, marker, close);
      item.addEventListener("click", () => this.switchTo(tab));
      item.addEventListener("auxclick", (event) => event.button === 1 && this.close(tab));
      this.bar.appendChild(item);
    }
    const add = document.createElement("button");
    add.className = "tab-new small";
    add.textContent = "+";
    add.title = "New empty workflow";
    add.addEventListener("click", () => this.newEmpty());
    this.bar.appendChild(add);
  }
}

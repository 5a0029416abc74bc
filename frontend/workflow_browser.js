// The saved-workflows browser: the user's files under /userdata/workflows (shared with ComfyUI's editor),
// filtered as you type; click to open in a tab, × to delete.

export class WorkflowBrowser {
  constructor(editor, store, files) {
    this.editor = editor;
    this.store = store;
    this.files = files;
    this.element = document.createElement("section");
    this.element.className = "workflow-browser";
    this.element.innerHTML = `<input class="library-search" type="search" placeholder="Search saved workflows…">
      <div class="library-list"></div>`;
    this.search = this.element.querySelector("input");
    this.list = this.element.querySelector(".library-list");
    this.entries = [];
    this.search.addEventListener("input", () => this.render());
    this.search.addEventListener("keydown", (event) => event.stopPropagation());
  }

  async refresh() {
    try {
      this.entries = await this.store.list();
      this.error = null;
    } catch (err) {
      this.entries = [];
      this.error = err.message;
    }
    this.render();
  }

  render() {
    const needle = this.search.value.trim().toLowerCase();
    this.list.replaceChildren();
    if (this.error) {
      this.list.textContent = `Could not list saved workflows: ${this.error}`;
      return;
    }
    const shown = this.entries.filter((entry) => entry.path.toLowerCase().includes(needle));
    if (!shown.length) {
      const empty = document.createElement("div");
      empty.className = "library-empty";
      empty.textContent = this.entries.length ? "No saved workflow matches." : "No saved workflows yet (Save puts them here).";
      this.list.appendChild(empty);
      return;
    }
    for (const entry of shown) {
      const row = document.createElement("div");
      row.className = "library-row workflow-entry";
      row.dataset.path = entry.path;
      row.title = `workflows/${entry.path}`;
      const name = document.createElement("span");
      name.className = "library-name";
      name.textContent = entry.path.replace(/\.json$/i, "");
      const when = document.createElement("span");
      when.className = "library-meta";
      when.textContent = entry.modified ? new Date(entry.modified * 1000).toLocaleString() : "";
      const remove = document.createElement("button");
      remove.className = "small library-delete";
      remove.textContent = "×";
      remove.title = "Delete this saved workflow";
      remove.addEventListener("click", async (event) => {
        event.stopPropagation();
        if (!window.confirm(`Delete workflows/${entry.path}?`)) return;
        try {
          await this.store.remove(entry.path);
        } catch (err) {
          this.editor.notify(`Could not delete ${entry.path}: ${err.message}`, "error");
        }
        this.refresh();
      });
      row.append(name, when, remove);
      row.addEventListener("click", () => this.files.openSaved(entry.path));
      this.list.appendChild(row);
    }
  }
}

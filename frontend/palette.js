// The node palette: every node type from /object_info, grouped by category, searchable; opened by a
// double-click, Tab, or by dropping a link on empty canvas (then only compatible nodes are listed).

import { canConnect } from "./defs.js";
import { isInternal, searchScore, signature } from "./search.js";

const MAX_RESULTS = 250;

export { searchScore };

/** Whether a definition fits a dropped link: it has an input taking `accepts`, or an output for `produces`. */
export function fitsFilter(def, filter) {
  if (!filter) return true;
  if (filter.accepts) {
    return def.inputs.some((spec) => (!spec.widget || spec.type !== "COMBO") && canConnect(filter.accepts, spec));
  }
  if (filter.produces) return def.outputs.some((out) => canConnect(out.type, filter.produces));
  return true;
}

export class Palette {
  constructor(editor) {
    this.editor = editor;
    this.el = null;
  }

  get isOpen() {
    return this.el !== null;
  }

  open({ at, screen, filter = null, onCreate = null, query = "" }) {
    this.close();
    const el = document.createElement("div");
    el.className = "palette";
    el.id = "palette";
    const heading = document.createElement("div");
    heading.className = "palette-heading";
    heading.textContent = filter
      ? filter.accepts ? `Nodes that take ${filter.accepts}` : `Nodes that give ${filter.produces.type}`
      : "Add node";
    const search = document.createElement("input");
    search.className = "palette-search";
    search.placeholder = "Search by name, category or type (in:LATENT)…";
    search.value = query;
    search.setAttribute("aria-label", "Search nodes");
    const results = document.createElement("div");
    results.className = "palette-results";
    el.append(heading, search, results);
    document.body.appendChild(el);
    const left = Math.max(8, Math.min(screen ? screen[0] : 200, window.innerWidth - 380));
    const top = Math.max(8, Math.min(screen ? screen[1] : 120, window.innerHeight - 460));
    Object.assign(el.style, { left: `${left}px`, top: `${top}px` });
    this.el = el;
    this.state = { at, filter, onCreate, items: [], active: 0, search, results };
    search.addEventListener("input", () => this.render());
    search.addEventListener("keydown", (event) => this.onKey(event));
    this.outside = (event) => {
      if (this.el && !this.el.contains(event.target)) this.close();
    };
    document.addEventListener("pointerdown", this.outside, true);
    this.render();
    search.focus();
  }

  close() {
    if (!this.el) return;
    document.removeEventListener("pointerdown", this.outside, true);
    this.el.remove();
    this.el = null;
    this.editor.canvas.el.focus();
  }

  candidates() {
    const { filter } = this.state;
    return [...this.editor.graph.defs.values()].filter((def) => fitsFilter(def, filter));
  }

  render() {
    const { search, results } = this.state;
    const query = search.value.trim();
    results.textContent = "";
    let items;
    if (query) {
      items = this.candidates()
        .map((def) => ({ def, score: searchScore(def, query) }))
        .filter((entry) => entry.score > 0)
        .sort((a, b) => b.score - a.score || a.def.displayName.localeCompare(b.def.displayName))
        .slice(0, MAX_RESULTS)
        .map((entry) => entry.def);
    } else {
      // Browsing: by category, test and deprecated nodes last (and, like every row here, not preselected).
      items = this.candidates().sort((a, b) => isInternal(a) - isInternal(b) || a.category.localeCompare(b.category)
        || a.displayName.localeCompare(b.displayName));
    }
    this.state.items = items;
    this.state.active = -1;
    let category = null;
    items.forEach((def, index) => {
      if (!query && def.category !== category) {
        category = def.category;
        const header = document.createElement("div");
        header.className = "palette-category";
        header.textContent = category;
        results.appendChild(header);
      }
      const row = document.createElement("div");
      row.className = "palette-item";
      row.dataset.type = def.type;
      row.dataset.index = String(index);
      const name = document.createElement("span");
      name.className = "palette-name";
      name.textContent = def.displayName;
      row.appendChild(name);
      if (query) {
        const cat = document.createElement("span");
        cat.className = "palette-item-category";
        cat.textContent = def.category;
        const types = document.createElement("span");
        types.className = "palette-item-types";
        types.textContent = signature(def);
        row.append(cat, types);
      }
      if (def.description) row.title = def.description;
      row.addEventListener("pointerdown", (event) => event.preventDefault());
      row.addEventListener("click", () => this.choose(def));
      row.addEventListener("pointermove", () => this.state.active !== index && this.setActive(index));
      results.appendChild(row);
    });
    if (!items.length) {
      const empty = document.createElement("div");
      empty.className = "palette-empty";
      empty.textContent = "No matching nodes";
      results.appendChild(empty);
    }
    // With a query the best match is ready for Enter; a plain list preselects nothing.
    this.setActive(query ? 0 : -1);
  }

  setActive(index) {
    const rows = this.state.results.querySelectorAll(".palette-item");
    this.state.active = -1;
    rows.forEach((row) => row.classList.remove("active"));
    if (!rows.length || index < 0) return;
    this.state.active = Math.min(index, rows.length - 1);
    rows.forEach((row, i) => row.classList.toggle("active", i === this.state.active));
    rows[this.state.active].scrollIntoView({ block: "nearest" });
  }

  onKey(event) {
    event.stopPropagation();
    if (event.key === "Escape") this.close();
    else if (event.key === "ArrowDown") {
      event.preventDefault();
      this.setActive(this.state.active + 1);
    } else if (event.key === "ArrowUp") {
      event.preventDefault();
      this.setActive(this.state.active - 1);
    } else if (event.key === "Enter") {
      event.preventDefault();
      const def = this.state.items[this.state.active];
      if (def) this.choose(def);
    }
  }

  choose(def) {
    const { at, onCreate } = this.state;
    const editor = this.editor;
    this.close();
    const graph = editor.graph;
    const node = graph.change(() => {
      const created = graph.addNode(graph.makeNode(def.type, at));
      if (onCreate) onCreate(created);
      return created;
    });
    editor.select([node.id]);
  }
}

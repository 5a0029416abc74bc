// The node palette: every node type from /object_info, grouped by category, searchable; opened by a
// double-click, Tab, or by dropping a link on empty canvas (then only compatible nodes are listed).

import { canConnect } from "./defs.js";

const MAX_RESULTS = 250;

function termScore(def, term) {
  const name = def.displayName.toLowerCase();
  const id = def.type.toLowerCase();
  if (name === term || id === term) return 100;
  if (name.startsWith(term)) return 80;
  if (id.startsWith(term)) return 70;
  if (name.split(/[\s_/()-]+/).some((word) => word.startsWith(term))) return 60;
  if (name.includes(term)) return 40;
  if (id.includes(term)) return 30;
  if (def.category.toLowerCase().includes(term)) return 20;
  let i = 0;
  for (const ch of name) if (ch === term[i]) i++;
  return i === term.length ? 5 : 0;
}

/** Search score of a definition for a query (0: no match); every word of the query must match. */
export function searchScore(def, query) {
  const lowered = query.toLowerCase().trim();
  const terms = lowered.split(/\s+/).filter(Boolean);
  let total = 0;
  for (const term of terms) {
    const score = termScore(def, term);
    if (!score) return 0;
    total += score;
  }
  if (terms.length > 1 && def.displayName.toLowerCase().startsWith(lowered)) total += 50;
  return total;
}

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

  open({ at, screen, filter = null, onCreate = null }) {
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
    search.placeholder = "Search nodes…";
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
      items = this.candidates().sort((a, b) => a.category.localeCompare(b.category) || a.displayName.localeCompare(b.displayName));
    }
    this.state.items = items;
    this.state.active = 0;
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
        row.appendChild(cat);
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
    this.setActive(0);
  }

  setActive(index) {
    const rows = this.state.results.querySelectorAll(".palette-item");
    if (!rows.length) return;
    this.state.active = Math.max(0, Math.min(index, rows.length - 1));
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

// A small popup menu (context menus, combo lists): items with actions, checks and submenus,
// an optional filter box for long lists; Escape or a click outside closes it.

export class Menu {
  constructor() {
    this.panels = [];
    document.addEventListener("pointerdown", (event) => {
      if (this.panels.length && !this.panels.some((panel) => panel.contains(event.target))) this.close();
    }, true);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.panels.length) {
        event.stopPropagation();
        this.close();
      }
    }, true);
  }

  get isOpen() {
    return this.panels.length > 0;
  }

  /**
   * Open at client coordinates. Items: {label, action, checked, disabled, submenu, separator}.
   * Options: filter (show a filter box), className, title.
   */
  open(x, y, items, options = {}) {
    this.close();
    this.openPanel(x, y, items, options, 0);
  }

  close(fromLevel = 0) {
    while (this.panels.length > fromLevel) this.panels.pop().remove();
  }

  openPanel(x, y, items, options, level) {
    this.close(level);
    const panel = document.createElement("div");
    panel.className = `menu ${options.className || ""}`;
    panel.dataset.level = String(level);
    if (options.title) {
      const title = document.createElement("div");
      title.className = "menu-title";
      title.textContent = options.title;
      panel.appendChild(title);
    }
    let filterBox = null;
    if (options.filter) {
      filterBox = document.createElement("input");
      filterBox.className = "menu-filter";
      filterBox.placeholder = "filter…";
      panel.appendChild(filterBox);
    }
    const list = document.createElement("div");
    list.className = "menu-items";
    panel.appendChild(list);
    const rows = [];
    for (const item of items) {
      if (item.separator) {
        const line = document.createElement("div");
        line.className = "menu-separator";
        list.appendChild(line);
        continue;
      }
      const row = document.createElement("div");
      row.className = "menu-item";
      if (item.disabled) row.classList.add("disabled");
      if (item.checked) row.classList.add("checked");
      row.textContent = item.label;
      if (item.submenu) row.classList.add("has-submenu");
      row.addEventListener("pointerenter", () => {
        if (item.submenu && !item.disabled) {
          const rect = row.getBoundingClientRect();
          this.openPanel(rect.right - 2, rect.top, item.submenu, {}, level + 1);
        } else this.close(level + 1);
      });
      row.addEventListener("click", (event) => {
        event.stopPropagation();
        if (item.disabled) return;
        if (item.submenu) {
          const rect = row.getBoundingClientRect();
          this.openPanel(rect.right - 2, rect.top, item.submenu, {}, level + 1);
          return;
        }
        this.close();
        if (item.action) item.action();
      });
      list.appendChild(row);
      rows.push({ row, item });
    }
    document.body.appendChild(panel);
    const rect = panel.getBoundingClientRect();
    panel.style.left = `${Math.max(0, Math.min(x, window.innerWidth - rect.width - 4))}px`;
    panel.style.top = `${Math.max(0, Math.min(y, window.innerHeight - rect.height - 4))}px`;
    this.panels.push(panel);
    if (filterBox) {
      filterBox.addEventListener("input", () => {
        const needle = filterBox.value.toLowerCase();
        for (const { row, item } of rows) row.hidden = !item.label.toLowerCase().includes(needle);
      });
      filterBox.addEventListener("keydown", (event) => {
        event.stopPropagation();
        if (event.key === "Escape") this.close();
        if (event.key === "Enter") {
          const first = rows.find(({ row }) => !row.hidden);
          if (first) first.row.click();
        }
      });
      filterBox.focus();
    }
    return panel;
  }
}

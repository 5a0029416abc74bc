// A toolbar that fits any window: when its buttons do not fit on one line, the last ones move into a "☰"
// menu (the Queue and Cancel buttons and anything marked `data-keep` stay). Works for buttons that other
// modules add later, since it measures what is there on every resize.

export class ToolbarOverflow {
  constructor(editor, root) {
    this.editor = editor;
    this.root = root;
    this.more = document.createElement("button");
    this.more.className = "toolbar-more";
    this.more.id = "toolbar-more";
    this.more.dataset.keep = "";
    this.more.textContent = "☰";
    this.more.title = "More commands";
    this.more.hidden = true;
    this.more.addEventListener("click", () => this.openMenu());
    const spacer = root.querySelector(".spacer");
    root.insertBefore(this.more, spacer || null);
    new ResizeObserver(() => this.fit()).observe(root);
    this.fit();
  }

  /** What may move into the menu, last first. */
  movable() {
    return [...this.root.children].filter((child) => child !== this.more && !("keep" in child.dataset)
      && !child.classList.contains("spacer") && !child.classList.contains("status") && child.id !== "queue-button"
      && (child.matches("button, label, .sep") || child.querySelector("button"))).reverse();
  }

  overflowing() {
    return this.root.scrollWidth > this.root.clientWidth + 1;
  }

  fit() {
    for (const child of this.root.children) child.classList.remove("overflowed");
    this.more.hidden = true;
    if (!this.overflowing()) return;
    this.more.hidden = false;
    for (const child of this.movable()) {
      if (!this.overflowing()) break;
      child.classList.add("overflowed");
    }
  }

  /** The hidden commands, in toolbar order; a batch-count field opens as itself at the top of the bar. */
  openMenu() {
    const items = [];
    for (const child of this.root.querySelectorAll(".overflowed")) {
      for (const button of child.matches("button") ? [child] : child.querySelectorAll("button")) {
        const text = button.textContent.trim();
        items.push({ label: text.length > 2 ? text : button.title.split("(")[0].trim() || text, action: () => button.click() });
      }
      if (child.matches("label.batch")) {
        items.push({ label: "Batch count…", action: () => this.askBatch(child.querySelector("input")) });
      }
    }
    const rect = this.more.getBoundingClientRect();
    this.editor.menu.open(rect.left, rect.bottom + 2, items, { className: "toolbar-menu" });
  }

  askBatch(input) {
    const value = window.prompt("How many prompts to queue?", input.value);
    if (value !== null) input.value = value;
  }
}

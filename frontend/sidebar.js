// A panel on the left of the canvas with one section at a time: saved workflows, templates, models.
// It does not cover the canvas modally, so models can be dragged from it onto the graph.

export class Sidebar {
  constructor() {
    this.root = document.createElement("aside");
    this.root.className = "library-sidebar";
    this.root.hidden = true;
    this.tabBar = document.createElement("div");
    this.tabBar.className = "library-tabs";
    this.body = document.createElement("div");
    this.body.className = "library-body";
    const close = document.createElement("button");
    close.className = "small library-close";
    close.textContent = "×";
    close.title = "Close";
    close.addEventListener("click", () => this.hide());
    this.tabBar.appendChild(close);
    this.root.append(this.tabBar, this.body);
    document.querySelector(".workspace").appendChild(this.root);
    this.sections = new Map();
    this.current = null;
  }

  /** A section: `element` is shown while it is chosen; `onShow` runs each time it opens. */
  add(key, title, element, onShow = () => {}) {
    const button = document.createElement("button");
    button.className = "library-tab small";
    button.dataset.section = key;
    button.textContent = title;
    button.addEventListener("click", () => this.show(key));
    this.tabBar.insertBefore(button, this.tabBar.lastChild);
    element.hidden = true;
    element.dataset.section = key;
    this.body.appendChild(element);
    this.sections.set(key, { button, element, onShow });
  }

  show(key) {
    this.root.hidden = false;
    this.current = key;
    for (const [name, section] of this.sections) {
      section.element.hidden = name !== key;
      section.button.classList.toggle("active", name === key);
    }
    this.sections.get(key).onShow();
  }

  /** Open `key`, or close the sidebar when `key` is already showing. */
  toggle(key) {
    if (!this.root.hidden && this.current === key) this.hide();
    else this.show(key);
  }

  hide() {
    this.root.hidden = true;
  }
}

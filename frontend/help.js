// The help overlay (? or F1): every keyboard shortcut (as currently bound) and mouse action.

import { MOUSE_HELP } from "./keys.js";

function table(title, rows) {
  const section = document.createElement("section");
  const heading = document.createElement("h3");
  heading.textContent = title;
  section.appendChild(heading);
  const list = document.createElement("table");
  for (const [keys, text] of rows) {
    const row = list.insertRow();
    const keyCell = row.insertCell();
    const kbd = document.createElement("kbd");
    kbd.textContent = keys;
    keyCell.appendChild(kbd);
    row.insertCell().textContent = text;
  }
  section.appendChild(list);
  return section;
}

export class Help {
  constructor(root, keymap) {
    this.root = root;
    this.keymap = keymap;
    this.body = root.querySelector(".help-body");
    root.addEventListener("click", (event) => {
      if (event.target === root || event.target.dataset.action === "close-help") this.toggle(false);
    });
  }

  get visible() {
    return !this.root.hidden;
  }

  /** Rebuilt on every opening, so rebinding a key in the settings shows here at once. */
  toggle(show = !this.visible) {
    if (show) this.body.replaceChildren(table("Keyboard", this.keymap.helpRows()), table("Mouse", MOUSE_HELP));
    this.root.hidden = !show;
  }
}

// The help overlay (? or F1): every keyboard shortcut and mouse action.

import { MOUSE_HELP, SHORTCUTS } from "./keys.js";

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
  constructor(root) {
    this.root = root;
    const body = root.querySelector(".help-body");
    body.append(table("Keyboard", SHORTCUTS.map(([keys, text]) => [keys, text])), table("Mouse", MOUSE_HELP));
    root.addEventListener("click", (event) => {
      if (event.target === root || event.target.dataset.action === "close-help") this.toggle(false);
    });
  }

  get visible() {
    return !this.root.hidden;
  }

  toggle(show = !this.visible) {
    this.root.hidden = !show;
  }
}

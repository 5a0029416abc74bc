// The settings room: theme, link style, snap to grid, minimap, preview mode and keyboard shortcuts. Values are
// kept by the server (GET/POST /settings, ComfyUI's per-user settings file), so they follow the user to any
// browser; ours are named `nodegraph.*` beside ComfyUI's own `Comfy.*` ones in the same file.

import { COMMANDS, PAN_HOLD, comboOf } from "./shortcuts.js";

/** Every setting we keep: id, default, label, and the choices of a select (none: a checkbox). */
export const SETTINGS = [
  { id: "nodegraph.theme", fallback: "dark", label: "Theme", choices: [["dark", "Dark"], ["light", "Light"]] },
  { id: "nodegraph.linkStyle", fallback: "spline", label: "Link style",
    choices: [["spline", "Spline"], ["straight", "Straight (right angles)"], ["linear", "Linear"]] },
  { id: "nodegraph.snapToGrid", fallback: false, label: "Snap nodes to the grid when moving them" },
  { id: "nodegraph.minimap", fallback: true, label: "Show the minimap" },
  { id: "nodegraph.previewMode", fallback: "auto", label: "Live previews while sampling",
    choices: [["auto", "Auto"], ["latent2rgb", "Fast (latent to RGB)"], ["taesd", "TAESD"], ["none", "None"]] },
];
export const KEYBINDINGS = "nodegraph.keybindings";
export const GRID_SIZE = 20;

const THEMES = {
  dark: { background: "#1c1c1c", grid: "#262626" },
  light: { background: "#dcdcdc", grid: "#c8c8c8" },
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The user's settings as the server keeps them, applied to the editor whenever one changes. */
export class Settings {
  constructor(editor) {
    this.editor = editor;
    this.values = {};
  }

  get(id) {
    if (id in this.values) return this.values[id];
    const known = SETTINGS.find((s) => s.id === id);
    return known ? known.fallback : undefined;
  }

  /** Read every setting from the server (defaults when it cannot answer) and apply them. */
  async load() {
    try {
      this.values = (await this.editor.api.request("/settings")) || {};
    } catch (err) {
      this.values = {};
      console.warn("settings unavailable, using defaults", err);
    }
    this.apply();
  }

  async set(id, value) {
    this.values[id] = value;
    this.apply();
    try {
      await this.editor.api.postJson(`/settings/${encodeURIComponent(id)}`, value);
    } catch (err) {
      this.editor.notify(`Could not save the setting ${id}: ${err.message}`, "error");
    }
  }

  apply() {
    const editor = this.editor;
    const theme = this.get("nodegraph.theme") === "light" ? "light" : "dark";
    document.body.dataset.theme = theme;
    editor.canvas.colours = THEMES[theme];
    editor.canvas.linkStyle = this.get("nodegraph.linkStyle");
    editor.snapGrid = this.get("nodegraph.snapToGrid") ? GRID_SIZE : 0;
    editor.previewMode = this.get("nodegraph.previewMode");
    if (editor.minimap) editor.minimap.setVisible(Boolean(this.get("nodegraph.minimap")));
    editor.keymap.setOverrides(this.get(KEYBINDINGS) || {});
    editor.canvas.setDirty();
  }
}

/** The settings dialog (toolbar's gear, or Ctrl+,). */
export class SettingsRoom {
  constructor(editor) {
    this.editor = editor;
    this.root = el("div", "overlay settings-overlay");
    this.root.id = "settings";
    this.root.hidden = true;
    const dialog = el("div", "settings-dialog");
    dialog.setAttribute("role", "dialog");
    dialog.setAttribute("aria-label", "Settings");
    const header = el("div", "panel-header");
    const close = el("button", "small", "×");
    close.dataset.action = "close-settings";
    close.addEventListener("click", () => this.toggle(false));
    header.append(el("strong", null, "Settings"), close);
    this.body = el("div", "settings-body");
    dialog.append(header, this.body);
    this.root.appendChild(dialog);
    this.root.addEventListener("click", (event) => {
      if (event.target === this.root) this.toggle(false);
    });
    this.root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !editor.capturingKeys) this.toggle(false);
    });
    document.body.appendChild(this.root);
  }

  get visible() {
    return !this.root.hidden;
  }

  toggle(show = !this.visible) {
    if (show) this.render();
    this.root.hidden = !show;
    if (!show) this.editor.canvas.el.focus();
  }

  render() {
    const settings = this.editor.settings;
    this.body.replaceChildren();
    const general = el("section", "settings-general");
    for (const spec of SETTINGS) {
      const row = el("label", "setting-row");
      row.dataset.setting = spec.id;
      row.appendChild(el("span", "setting-label", spec.label));
      let field;
      if (spec.choices) {
        field = el("select");
        for (const [value, text] of spec.choices) {
          const option = el("option", null, text);
          option.value = value;
          field.appendChild(option);
        }
        field.value = settings.get(spec.id);
        field.addEventListener("change", () => settings.set(spec.id, field.value));
      } else {
        field = el("input");
        field.type = "checkbox";
        field.checked = Boolean(settings.get(spec.id));
        field.addEventListener("change", () => settings.set(spec.id, field.checked));
      }
      field.name = spec.id;
      row.appendChild(field);
      general.appendChild(row);
    }
    this.body.append(general, this.shortcutTable());
  }

  shortcutTable() {
    const section = el("section", "settings-shortcuts");
    const heading = el("div", "panel-header");
    const resetAll = el("button", "small", "Reset all");
    resetAll.dataset.action = "reset-keys";
    resetAll.addEventListener("click", () => this.saveBindings(() => this.editor.keymap.reset()));
    heading.append(el("h3", null, "Keyboard shortcuts"), resetAll);
    section.appendChild(heading);
    const table = el("table", "keybindings");
    for (const command of [...COMMANDS, PAN_HOLD]) {
      const row = table.insertRow();
      row.dataset.command = command.id;
      row.insertCell().textContent = command.text;
      const keys = this.editor.keymap.keysOf(command.id);
      const button = el("button", "keybind", keys.join(" / ") || "(unbound)");
      button.title = "Click, then press the new keys (Escape cancels)";
      button.addEventListener("click", () => this.capture(command.id, button));
      row.insertCell().appendChild(button);
      const reset = el("button", "small", "↺");
      reset.title = "Back to the default keys";
      reset.addEventListener("click", () => this.saveBindings(() => this.editor.keymap.reset(command.id)));
      row.insertCell().appendChild(reset);
    }
    section.appendChild(table);
    return section;
  }

  /** Wait for the next key combo and bind it to `id` (it is taken from any command that had it). */
  capture(id, button) {
    const editor = this.editor;
    editor.capturingKeys = true;
    button.textContent = "Press keys…";
    button.classList.add("capturing");
    const onKey = (event) => {
      const combo = comboOf(event);
      if (!combo) return;
      event.preventDefault();
      event.stopImmediatePropagation();
      window.removeEventListener("keydown", onKey, true);
      editor.capturingKeys = false;
      if (combo === "Escape") {
        this.render();
        return;
      }
      this.saveBindings(() => {
        const taken = editor.keymap.bind(id, combo);
        if (taken) editor.notify(`${combo} moved from "${taken}" to "${id}"`, "warn");
      });
    };
    window.addEventListener("keydown", onKey, true);
  }

  saveBindings(change) {
    change();
    const overrides = JSON.parse(JSON.stringify(this.editor.keymap.overrides));
    this.editor.settings.set(KEYBINDINGS, overrides);
    this.render();
  }
}

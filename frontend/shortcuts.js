// Keyboard commands with ComfyUI's default keys, rebindable: one table feeds the key handler, the help
// overlay and the settings room, so what is listed is what works. Bindings are kept in the user's server
// settings (`nodegraph.keybindings`: command id -> list of key combos) through settings.js.

const ctrl = (event) => event.ctrlKey || event.metaKey;

/** A named action another room registers (`editor.actions.register`, e.g. "workflow.save"), else `fallback`. */
function runNamed(editor, name, fallback) {
  return editor.actions.has(name) ? editor.actions.run(name) : fallback();
}

/**
 * Every keyboard command: id (stable, stored in settings), default combos, what it does, and how.
 * ComfyUI 0.3.64's defaults (its keybindings core list) where it has the command.
 */
export const COMMANDS = [
  { id: "queue", keys: ["Ctrl+Enter"], text: "Queue the workflow (batch count from the toolbar)", run: (ed) => ed.actions.queue() },
  { id: "queueFront", keys: ["Ctrl+Shift+Enter"], text: "Queue the workflow at the front of the queue", run: (ed) => ed.actions.queue({ front: true }) },
  { id: "interrupt", keys: ["Ctrl+Alt+Enter"], text: "Cancel the running prompt", run: (ed) => ed.actions.interrupt() },
  { id: "cancelPending", keys: [], text: "Remove every queued prompt (the running one goes on)", run: (ed) => ed.actions.cancelPending() },
  { id: "undo", keys: ["Ctrl+Z"], text: "Undo", run: (ed) => ed.actions.undo() },
  { id: "redo", keys: ["Ctrl+Y", "Ctrl+Shift+Z"], text: "Redo", run: (ed) => ed.actions.redo() },
  { id: "copy", keys: ["Ctrl+C"], text: "Copy the selected nodes", run: (ed) => ed.actions.copy() },
  { id: "paste", keys: ["Ctrl+V"], text: "Paste at the mouse", run: (ed) => ed.actions.paste() },
  { id: "pasteLinked", keys: ["Ctrl+Shift+V"], text: "Paste, keeping links into the pasted nodes", run: (ed) => ed.actions.paste(null, true) },
  { id: "selectAll", keys: ["Ctrl+A"], text: "Select all nodes", run: (ed) => ed.actions.selectAll() },
  { id: "delete", keys: ["Delete", "Backspace"], text: "Delete the selection", run: (ed) => ed.actions.deleteSelected() },
  { id: "mute", keys: ["Ctrl+M"], text: "Mute / unmute the selected nodes", run: (ed) => ed.actions.toggleMode("never") },
  { id: "bypass", keys: ["Ctrl+B"], text: "Bypass / un-bypass the selected nodes", run: (ed) => ed.actions.toggleMode("bypass") },
  { id: "collapse", keys: ["Alt+C"], text: "Collapse / expand the selected nodes", run: (ed) => ed.actions.toggleCollapse() },
  { id: "group", keys: ["Ctrl+G"], text: "Put the selected nodes in a group", run: (ed) => ed.actions.groupSelected() },
  { id: "loadDefault", keys: ["Ctrl+D"], text: "Load the default workflow", run: (ed) => ed.actions.loadDefault() },
  { id: "save", keys: ["Ctrl+S"], text: "Save the workflow", run: (ed) => runNamed(ed, "workflow.save", () => ed.actions.save()) },
  { id: "open", keys: ["Ctrl+O"], text: "Open a workflow (JSON or PNG)", run: (ed) => runNamed(ed, "workflow.open", () => ed.actions.openFile()) },
  { id: "rename", keys: ["F2"], text: "Rename the selected node", run: (ed) => ed.actions.renameSelected() },
  { id: "addNode", keys: ["Tab"], text: "Add a node (search at the mouse)", run: (ed) => ed.actions.openPaletteAtPointer() },
  { id: "fitView", keys: ["."], text: "Fit the view to the selection or the graph", run: (ed) => ed.actions.fitView() },
  { id: "refresh", keys: ["R"], text: "Refresh node definitions and model lists", run: (ed) => ed.actions.refreshDefs() },
  { id: "queuePanel", keys: ["Q"], text: "Show / hide the queue and history", run: (ed) => ed.actions.toggleQueuePanel() },
  { id: "settings", keys: ["Ctrl+,"], text: "Open the settings", run: (ed) => ed.settingsRoom && ed.settingsRoom.toggle() },
  { id: "help", keys: ["?", "F1"], text: "Show the shortcut help", run: (ed) => ed.actions.toggleHelp() },
  { id: "escape", keys: ["Escape"], text: "Close menus and dialogs, clear the selection", run: (ed) => ed.actions.escape() },
];

/** Held, not pressed: while this key is down, dragging anywhere on the canvas pans (ComfyUI's Space+drag). */
export const PAN_HOLD = { id: "panHold", keys: ["Space"], text: "Hold and drag to pan the canvas" };

const MODIFIER_KEYS = new Set(["Control", "Shift", "Alt", "Meta", "AltGraph", "CapsLock"]);

/**
 * The combo an event spells, e.g. "Ctrl+Shift+Enter", "Alt+C", "?" — letters upper-case, Space named, and
 * Shift left out of punctuation it produces (Shift+/ is "?"). Null for a bare modifier.
 */
export function comboOf(event) {
  let key = event.key;
  if (!key || MODIFIER_KEYS.has(key)) return null;
  // Alt+letter types a different character on some layouts (macOS: Alt+C is "ç"): name the physical key.
  if (event.altKey && event.code && /^Key[A-Z]$/.test(event.code)) key = event.code.slice(3);
  if (key === " ") key = "Space";
  const punctuation = key.length === 1 && !/[a-z0-9]/i.test(key);
  if (key.length === 1) key = key.toUpperCase();
  const parts = [];
  if (ctrl(event)) parts.push("Ctrl");
  if (event.altKey) parts.push("Alt");
  if (event.shiftKey && !punctuation) parts.push("Shift");
  parts.push(key);
  return parts.join("+");
}

/** The command table with the user's bindings applied: id -> combos. */
export class Keymap {
  constructor(overrides = {}) {
    this.overrides = {};
    this.setOverrides(overrides);
  }

  setOverrides(overrides) {
    this.overrides = {};
    for (const [id, keys] of Object.entries(overrides || {})) {
      if (Array.isArray(keys)) this.overrides[id] = keys.filter((k) => typeof k === "string");
    }
  }

  keysOf(id) {
    if (id in this.overrides) return this.overrides[id];
    const command = id === PAN_HOLD.id ? PAN_HOLD : COMMANDS.find((c) => c.id === id);
    return command ? command.keys : [];
  }

  /** The command bound to `combo`, or null. */
  commandFor(combo) {
    return COMMANDS.find((command) => this.keysOf(command.id).includes(combo)) || null;
  }

  /** Bind `combo` to `id` alone (taken from whichever command had it); returns the id it was taken from. */
  bind(id, combo) {
    let takenFrom = null;
    for (const command of [...COMMANDS, PAN_HOLD]) {
      const keys = this.keysOf(command.id);
      if (command.id !== id && keys.includes(combo)) {
        this.overrides[command.id] = keys.filter((k) => k !== combo);
        takenFrom = command.id;
      }
    }
    this.overrides[id] = [combo];
    return takenFrom;
  }

  reset(id = null) {
    if (id === null) this.overrides = {};
    else delete this.overrides[id];
  }

  /** Rows for the help overlay: [keys, description]. */
  helpRows() {
    return [...COMMANDS, PAN_HOLD].map((command) => [this.keysOf(command.id).join(" / ") || "(unbound)", command.text]);
  }
}

function typingIn(target) {
  return Boolean(target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT"
    || target.isContentEditable));
}

/**
 * Listen for shortcuts on the window (not while typing in a field). A printable key no command takes opens
 * the node search with that letter, as typing on the canvas does in ComfyUI's new search box.
 */
export function installKeymap(editor) {
  const keymap = editor.keymap;
  const setPanHold = (on) => {
    editor.panHold = on;
    editor.canvas.el.classList.toggle("pan-hold", on);
  };
  window.addEventListener("keydown", (event) => {
    if (typingIn(event.target) || editor.capturingKeys) return;
    const combo = comboOf(event);
    if (!combo) return;
    if (keymap.keysOf(PAN_HOLD.id).includes(combo)) {
      event.preventDefault();
      setPanHold(true);
      return;
    }
    const command = keymap.commandFor(combo);
    if (command) {
      event.preventDefault();
      command.run(editor, event);
      return;
    }
    const printable = event.key.length === 1 && event.key !== " " && !ctrl(event) && !event.altKey;
    const dialogOpen = editor.help.visible || (editor.settingsRoom && editor.settingsRoom.visible);
    if (printable && editor.ready && !editor.palette.isOpen && !editor.menu.isOpen && !dialogOpen) {
      event.preventDefault();
      editor.actions.openPaletteAtPointer(event.key);
    }
  });
  window.addEventListener("keyup", (event) => {
    if (!editor.panHold) return;
    const released = event.key === " " ? "Space" : event.key.length === 1 ? event.key.toUpperCase() : event.key;
    if (keymap.keysOf(PAN_HOLD.id).some((combo) => combo.split("+").pop() === released)) setPanHold(false);
  });
  window.addEventListener("blur", () => setPanHold(false));
}

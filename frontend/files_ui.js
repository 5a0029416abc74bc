// Wires the file features into the editor: tabs, server-side save/open, export, the workflow, template and
// model browsers, drop/paste and the mask editor; registers their actions by name and adds toolbar buttons.
// `window.nodegraphFiles` gives browser tests read-only views of their state.

import { DropPaste } from "./drop_paste.js";
import { drawNotes, notesOf } from "./editor_notes.js";
import { MaskEditor } from "./mask_editor.js";
import { ModelLibrary } from "./model_library.js";
import { Sidebar } from "./sidebar.js";
import { Tabs } from "./tabs.js";
import { TemplatesBrowser } from "./templates_browser.js";
import { WorkflowActions } from "./workflow_actions.js";
import { WorkflowBrowser } from "./workflow_browser.js";
import { WorkflowStore } from "./workflow_store.js";

const TOOLBAR_BUTTONS = [
  ["workflow.saveAs", "Save As", "Save the workflow under a new name (server: workflows/)"],
  ["workflow.export", "Export ▾", "Download as ComfyUI workflow, API prompt or PNG with the workflow"],
  ["library.toggle", "Library", "Saved workflows (shared with ComfyUI's editor), templates and the model library"],
];

function addToolbarButtons(editor) {
  const anchor = document.querySelector("#toolbar [data-action=load]");
  let after = anchor;
  for (const [name, label, title] of TOOLBAR_BUTTONS) {
    const button = document.createElement("button");
    button.dataset.command = name;
    button.textContent = label;
    button.title = title;
    button.addEventListener("click", () => {
      editor.actions.run(name, button);
      button.blur();
    });
    if (after) after.after(button);
    else document.getElementById("toolbar").appendChild(button);
    after = button;
  }
  const save = document.querySelector("#toolbar [data-action=save]");
  if (save) save.title = "Save the workflow to the server's workflows/ folder (Ctrl+S)";
}

export function installFiles(editor) {
  const store = new WorkflowStore(editor.api);
  const tabs = new Tabs(editor);
  const files = new WorkflowActions(editor, store, tabs);
  const sidebar = new Sidebar();
  const browser = new WorkflowBrowser(editor, store, files);
  const templates = new TemplatesBrowser(editor, store, files);
  const models = new ModelLibrary(editor);
  const masks = new MaskEditor(editor);
  sidebar.add("workflows", "Workflows", browser.element, () => browser.refresh());
  sidebar.add("templates", "Templates", templates.element, () => templates.refresh());
  sidebar.add("models", "Models", models.element, () => models.refresh());
  const dropPaste = new DropPaste(editor, files, models);
  editor.workflowBrowser = browser;
  editor.drawBehindNodes = (ctx, visible) => drawNotes(ctx, editor.graph, visible);
  editor.dropHandler = (event) => dropPaste.onDrop(event);
  editor.nodeMenuItems = (node) => {
    const def = editor.graph.defs.get(node.type);
    const upload = def ? def.inputs.find((spec) => spec.imageUpload) : null;
    if (upload) return [{ label: "Open in mask editor", action: () => masks.openForNode(node, upload.name) }];
    const state = editor.execution.runtime(node.id);
    const image = state && state.images && state.images[0];
    return image ? [{ label: "Open image in mask editor", action: () => masks.openForImage(node, image) }] : [];
  };

  const actions = editor.actions;
  const register = (name, label, run) => actions.register(name, run, label);
  register("workflow.save", "Save workflow", () => files.save());
  register("workflow.saveAs", "Save workflow as…", () => files.saveAs());
  register("workflow.open", "Open a workflow file", (file) => files.openFile(file));
  register("workflow.browse", "Browse saved workflows", () => sidebar.toggle("workflows"));
  register("workflow.templates", "Browse templates", () => sidebar.toggle("templates"));
  register("workflow.new", "New workflow tab", () => tabs.newEmpty());
  register("workflow.close", "Close workflow tab", () => tabs.close(tabs.active));
  register("workflow.export", "Export menu", (anchor) => files.exportMenu(anchor));
  register("workflow.export.ui", "Export ComfyUI workflow", () => files.exportUi());
  register("workflow.export.api", "Export API prompt", () => files.exportApi());
  register("workflow.export.png", "Export PNG with workflow", () => files.exportPng());
  register("library.workflows", "Saved workflows", () => sidebar.toggle("workflows"));
  register("library.templates", "Templates", () => sidebar.toggle("templates"));
  register("library.models", "Model library", () => sidebar.toggle("models"));
  register("library.toggle", "Library", () => sidebar.toggle(sidebar.current || "workflows"));
  register("mask.open", "Open the mask editor", (node) => masks.openForNode(node));
  addToolbarButtons(editor);

  let loads = 0;
  editor.graph.onChange((kind) => kind === "load" && loads++);
  editor.files = { start: () => tabs.start(), tabs, files, store, sidebar, masks, models };
  window.nodegraphFiles = Object.freeze({
    /** How many times a workflow was put on the canvas (opened, switched to, loaded). */
    loads: () => loads,
    tabs: () => tabs.tabs.map((tab) => ({ name: tab.name, path: tab.path, dirty: tab.dirty, active: tab === tabs.active })),
    notes: () => notesOf(editor.graph).map((note) => ({ type: note.type, text: note.text })),
    maskOpen: () => masks.isOpen,
    maskCoverage: () => (masks.isOpen ? masks.coverage() : null),
    maskCanvasRect: () => {
      if (!masks.isOpen) return null;
      const rect = masks.view.getBoundingClientRect();
      return { x: rect.left, y: rect.top, w: rect.width, h: rect.height, scale: masks.scale };
    },
    actions: () => [...(actions.registry || new Map()).keys()],
  });
}

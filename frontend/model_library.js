// The model library: the server's model folders (/models, /models/{folder}) with a search box. Dragging a
// model onto the canvas (or double-clicking it) adds the loader node for its folder with the model chosen.

/** Folder -> loader node type (used only where the server registers that type). */
export const LOADERS = {
  checkpoints: "CheckpointLoaderSimple",
  loras: "LoraLoader",
  vae: "VAELoader",
  controlnet: "ControlNetLoader",
  upscale_models: "UpscaleModelLoader",
  clip: "CLIPLoader",
  clip_vision: "CLIPVisionLoader",
  unet: "UNETLoader",
  diffusion_models: "UNETLoader",
  style_models: "StyleModelLoader",
  gligen: "GLIGENLoader",
  hypernetworks: "HypernetworkLoader",
  classifiers: "NoisyClassifierLoader",
};
export const MODEL_MIME = "application/x-nodegraph-model";

export class ModelLibrary {
  constructor(editor) {
    this.editor = editor;
    this.element = document.createElement("section");
    this.element.className = "model-library";
    this.element.innerHTML = `<input class="library-search" type="search" placeholder="Search models…">
      <div class="library-list"></div>`;
    this.search = this.element.querySelector("input");
    this.list = this.element.querySelector(".library-list");
    this.folders = new Map();
    this.search.addEventListener("input", () => this.render());
    this.search.addEventListener("keydown", (event) => event.stopPropagation());
  }

  async refresh() {
    const api = this.editor.api;
    try {
      const names = await api.request("/models");
      const lists = await Promise.all(names.map((folder) => api.getModels(folder).catch(() => [])));
      this.folders = new Map(names.map((folder, i) => [folder, lists[i] || []]));
      this.error = null;
    } catch (err) {
      this.error = err.message;
    }
    this.render();
  }

  /** The loader type for a folder, when the server has it. */
  loaderFor(folder) {
    const type = LOADERS[folder];
    return type && this.editor.graph.defs.has(type) ? type : null;
  }

  render() {
    this.list.replaceChildren();
    if (this.error) {
      this.list.textContent = `Could not list models: ${this.error}`;
      return;
    }
    const needle = this.search.value.trim().toLowerCase();
    let shown = 0;
    for (const [folder, files] of this.folders) {
      const matching = files.filter((file) => !needle || file.toLowerCase().includes(needle) || folder.includes(needle));
      if (!matching.length) continue;
      const details = document.createElement("details");
      details.className = "model-folder";
      details.dataset.folder = folder;
      details.open = Boolean(needle) || this.folders.size < 4 || files.length < 12;
      const summary = document.createElement("summary");
      summary.textContent = `${folder} (${matching.length})`;
      details.appendChild(summary);
      const loader = this.loaderFor(folder);
      for (const file of matching) {
        const row = document.createElement("div");
        row.className = "library-row model-entry";
        row.dataset.folder = folder;
        row.dataset.name = file;
        row.textContent = file;
        row.title = loader ? `Drag onto the canvas for a ${loader}` : `${folder}/${file}`;
        if (loader) {
          row.draggable = true;
          row.addEventListener("dragstart", (event) => {
            event.dataTransfer.setData(MODEL_MIME, JSON.stringify({ folder, name: file }));
            event.dataTransfer.setData("text/plain", file);
            event.dataTransfer.effectAllowed = "copy";
          });
          row.addEventListener("dblclick", () => {
            const canvas = this.editor.canvas;
            this.addLoader({ folder, name: file }, canvas.toWorld(canvas.width / 2, canvas.height / 2));
          });
        } else row.classList.add("no-loader");
        details.appendChild(row);
        shown++;
      }
      this.list.appendChild(details);
    }
    if (!shown) {
      const empty = document.createElement("div");
      empty.className = "library-empty";
      empty.textContent = this.folders.size ? "No model matches." : "No model folders.";
      this.list.appendChild(empty);
    }
  }

  /** Add the folder's loader at world point `at` with `name` chosen in its model input; returns the node id. */
  addLoader({ folder, name }, at) {
    const type = this.loaderFor(folder);
    if (!type) {
      this.editor.notify(`No loader node for ${folder} models`, "warn");
      return null;
    }
    const graph = this.editor.graph;
    const def = graph.defs.get(type);
    const spec = def.inputs.find((input) => input.options && input.options.includes(name)) ||
      def.inputs.find((input) => input.options);
    const node = graph.makeNode(type, at);
    if (spec) {
      if (!spec.options.includes(name)) spec.options.push(name);
      node.widgets[spec.name] = name;
    }
    graph.change(() => graph.addNode(node));
    this.editor.select([node.id]);
    return node.id;
  }
}

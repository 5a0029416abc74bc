// The mask editor: paint a mask over a LoadImage node's picture with a soft brush or an eraser (size and
// hardness), invert, clear, undo; Save uploads it as ComfyUI's mask editor does — the mask as the alpha of a PNG
// sent to /upload/mask with `original_ref`, so the server writes the original picture with that alpha and
// LoadImage's MASK output (1 - alpha) is the painted area.

const UNDO_LIMIT = 30;

/** {filename, subfolder, type} of an input-folder image name such as "sub/a.png" or "a.png [input]". */
export function imageRef(value) {
  const match = /^(.*?)(?: \[(input|output|temp)\])?$/.exec(String(value));
  const path = match[1];
  const slash = path.lastIndexOf("/");
  return {
    filename: slash >= 0 ? path.slice(slash + 1) : path,
    subfolder: slash >= 0 ? path.slice(0, slash) : "",
    type: match[2] || "input",
  };
}

export class MaskEditor {
  constructor(editor) {
    this.editor = editor;
    this.overlay = null;
    this.tool = "brush";
    this.size = 24;
    this.hardness = 0.8;
  }

  get isOpen() {
    return Boolean(this.overlay);
  }

  /** Open on a LoadImage-like node's `image` widget. */
  async openForNode(node, widget = "image") {
    const value = node.widgets[widget];
    if (!value) {
      this.editor.notify("Choose or upload an image first", "warn");
      return;
    }
    await this.open(imageRef(value), (saved) => {
      const name = saved.subfolder ? `${saved.subfolder}/${saved.name}` : saved.name;
      const spec = this.editor.graph.inputSpec(node, widget);
      if (spec && spec.options && !spec.options.includes(name)) spec.options.push(name);
      this.editor.graph.change(() => this.editor.graph.setWidget(node, widget, name));
    });
  }

  /**
   * Open on an image a node shows (an output): the masked picture is saved to the input folder and a LoadImage
   * node holding it appears beside the node, ready for an inpainting graph.
   */
  async openForImage(node, image) {
    const ref = { filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output" };
    await this.open(ref, (saved) => {
      const { graph } = this.editor;
      if (!graph.defs.has("LoadImage")) return;
      const name = saved.subfolder ? `${saved.subfolder}/${saved.name}` : saved.name;
      const spec = graph.defs.get("LoadImage").inputMap.get("image");
      if (spec && spec.options && !spec.options.includes(name)) spec.options.push(name);
      const created = graph.makeNode("LoadImage", [node.pos[0] + 40, node.pos[1] + 40]);
      created.widgets.image = name;
      graph.change(() => graph.addNode(created));
      this.editor.select([created.id]);
    });
  }

  async open(ref, onSaved) {
    this.close();
    this.ref = ref;
    this.onSaved = onSaved;
    const image = new Image();
    image.src = this.editor.api.viewUrl({ ...ref, subfolder: ref.subfolder || "" }) + `&t=${Date.now()}`;
    try {
      await image.decode();
    } catch {
      this.editor.notify(`Could not load ${ref.filename} for the mask editor`, "error");
      return;
    }
    this.image = image;
    this.build(image.naturalWidth, image.naturalHeight);
    this.loadExistingMask(image);
    this.fit();
    this.redraw();
  }

  build(width, height) {
    const overlay = document.createElement("div");
    overlay.className = "overlay mask-editor-overlay";
    overlay.innerHTML = `<div class="mask-editor" role="dialog" aria-label="Mask editor">
      <div class="mask-tools">
        <strong>Mask editor</strong>
        <label><input type="radio" name="mask-tool" value="brush" checked> Brush</label>
        <label><input type="radio" name="mask-tool" value="eraser"> Eraser</label>
        <label>Size <input class="mask-size" type="range" min="1" max="256"></label>
        <label>Hardness <input class="mask-hardness" type="range" min="0" max="1" step="0.05"></label>
        <button class="small" data-mask="undo">Undo</button>
        <button class="small" data-mask="invert">Invert</button>
        <button class="small" data-mask="clear">Clear</button>
        <span class="spacer"></span>
        <button data-mask="cancel">Cancel</button>
        <button class="primary" data-mask="save">Save</button>
      </div>
      <div class="mask-stage"><canvas class="mask-view"></canvas></div>
    </div>`;
    document.body.appendChild(overlay);
    this.overlay = overlay;
    this.view = overlay.querySelector(".mask-view");
    this.mask = document.createElement("canvas");
    this.mask.width = width;
    this.mask.height = height;
    this.maskCtx = this.mask.getContext("2d", { willReadFrequently: true });
    this.undoStack = [];
    const size = overlay.querySelector(".mask-size");
    const hardness = overlay.querySelector(".mask-hardness");
    size.value = String(this.size);
    hardness.value = String(this.hardness);
    size.addEventListener("input", () => (this.size = Number(size.value)));
    hardness.addEventListener("input", () => (this.hardness = Number(hardness.value)));
    for (const radio of overlay.querySelectorAll("input[name=mask-tool]")) {
      radio.addEventListener("change", () => (this.tool = radio.value));
    }
    const commands = {
      undo: () => this.undo(), invert: () => this.invert(), clear: () => this.clear(),
      cancel: () => this.close(), save: () => this.save(),
    };
    for (const button of overlay.querySelectorAll("[data-mask]")) {
      button.addEventListener("click", () => commands[button.dataset.mask]());
    }
    overlay.addEventListener("keydown", (event) => {
      event.stopPropagation();
      if (event.key === "Escape") this.close();
      if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") this.undo();
    });
    this.view.tabIndex = 0;
    this.view.addEventListener("pointerdown", (event) => this.strokeStart(event));
    this.view.addEventListener("pointermove", (event) => this.strokeMove(event));
    this.view.addEventListener("pointerup", () => (this.last = null));
    this.view.addEventListener("pointerleave", () => (this.last = null));
    this.view.focus();
    this.onResize = () => {
      if (!this.overlay) return;
      this.fit();
      this.redraw();
    };
    window.addEventListener("resize", this.onResize);
  }

  /** A picture saved by the mask editor before: its transparency is the mask to start from. */
  loadExistingMask(image) {
    const probe = document.createElement("canvas");
    probe.width = this.mask.width;
    probe.height = this.mask.height;
    const ctx = probe.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(image, 0, 0);
    const pixels = ctx.getImageData(0, 0, probe.width, probe.height);
    const mask = this.maskCtx.createImageData(probe.width, probe.height);
    for (let i = 3; i < pixels.data.length; i += 4) mask.data[i] = 255 - pixels.data[i];
    this.maskCtx.putImageData(mask, 0, 0);
  }

  /** Scale the view so the picture fits the stage. */
  fit() {
    const stage = this.overlay.querySelector(".mask-stage").getBoundingClientRect();
    const scale = Math.min(stage.width / this.mask.width, stage.height / this.mask.height, 8);
    this.scale = scale > 0 ? scale : 1;
    this.view.width = Math.round(this.mask.width * this.scale);
    this.view.height = Math.round(this.mask.height * this.scale);
  }

  /** The picture, with the mask over it in a translucent colour. */
  redraw() {
    const ctx = this.view.getContext("2d");
    ctx.clearRect(0, 0, this.view.width, this.view.height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.image, 0, 0, this.view.width, this.view.height);
    if (!this.tint) {
      this.tint = document.createElement("canvas");
    }
    this.tint.width = this.mask.width;
    this.tint.height = this.mask.height;
    const tctx = this.tint.getContext("2d");
    tctx.drawImage(this.mask, 0, 0);
    tctx.globalCompositeOperation = "source-in";
    tctx.fillStyle = "rgba(230, 40, 90, 0.7)";
    tctx.fillRect(0, 0, this.tint.width, this.tint.height);
    ctx.drawImage(this.tint, 0, 0, this.view.width, this.view.height);
  }

  imagePoint(event) {
    const rect = this.view.getBoundingClientRect();
    return [(event.clientX - rect.left) / this.scale, (event.clientY - rect.top) / this.scale];
  }

  pushUndo() {
    this.undoStack.push(this.maskCtx.getImageData(0, 0, this.mask.width, this.mask.height));
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
  }

  strokeStart(event) {
    if (event.button !== 0) return;
    this.view.setPointerCapture(event.pointerId);
    this.pushUndo();
    this.last = this.imagePoint(event);
    this.dab(...this.last);
    this.redraw();
  }

  strokeMove(event) {
    if (!this.last || !(event.buttons & 1)) return;
    const [x, y] = this.imagePoint(event);
    const [x0, y0] = this.last;
    const radius = this.size / 2;
    const steps = Math.max(1, Math.ceil(Math.hypot(x - x0, y - y0) / Math.max(1, radius / 3)));
    for (let i = 1; i <= steps; i++) this.dab(x0 + ((x - x0) * i) / steps, y0 + ((y - y0) * i) / steps);
    this.last = [x, y];
    this.redraw();
  }

  /** One round dab: full strength inside `hardness` of the radius, fading to nothing at the edge. */
  dab(x, y) {
    const ctx = this.maskCtx;
    const radius = Math.max(0.5, this.size / 2);
    const gradient = ctx.createRadialGradient(x, y, radius * Math.min(this.hardness, 0.999), x, y, radius);
    gradient.addColorStop(0, "rgba(255,255,255,1)");
    gradient.addColorStop(1, "rgba(255,255,255,0)");
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.fillStyle = gradient;
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, Math.PI * 2);
    ctx.fill();
    ctx.restore();
  }

  undo() {
    const previous = this.undoStack.pop();
    if (!previous) return;
    this.maskCtx.putImageData(previous, 0, 0);
    this.redraw();
  }

  invert() {
    this.pushUndo();
    const data = this.maskCtx.getImageData(0, 0, this.mask.width, this.mask.height);
    for (let i = 0; i < data.data.length; i += 4) {
      data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
      data.data[i + 3] = 255 - data.data[i + 3];
    }
    this.maskCtx.putImageData(data, 0, 0);
    this.redraw();
  }

  clear() {
    this.pushUndo();
    this.maskCtx.clearRect(0, 0, this.mask.width, this.mask.height);
    this.redraw();
  }

  /** How much of the picture is masked, 0..1 (mean mask value). */
  coverage() {
    const data = this.maskCtx.getImageData(0, 0, this.mask.width, this.mask.height).data;
    let sum = 0;
    for (let i = 3; i < data.length; i += 4) sum += data[i];
    return sum / (255 * (data.length / 4));
  }

  /** Upload the mask (as the alpha: 0 where painted) against the original picture; the node takes the result. */
  async save() {
    const out = document.createElement("canvas");
    out.width = this.mask.width;
    out.height = this.mask.height;
    const ctx = out.getContext("2d");
    const source = this.maskCtx.getImageData(0, 0, out.width, out.height);
    const pixels = ctx.createImageData(out.width, out.height);
    for (let i = 3; i < source.data.length; i += 4) pixels.data[i] = 255 - source.data[i];
    ctx.putImageData(pixels, 0, 0);
    const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("image", blob, `clipspace-mask-${Date.now()}.png`);
    form.append("original_ref", JSON.stringify(this.ref));
    form.append("type", "input");
    form.append("subfolder", "clipspace");
    try {
      const saved = await this.editor.api.request("/upload/mask", { method: "POST", body: form });
      if (this.onSaved) this.onSaved(saved);
      this.editor.notify(`Mask saved as ${saved.subfolder ? `${saved.subfolder}/` : ""}${saved.name}`);
      this.close();
    } catch (err) {
      this.editor.notify(`Could not save the mask: ${err.message}`, "error");
    }
  }

  close() {
    if (this.onResize) window.removeEventListener("resize", this.onResize);
    if (this.overlay) this.overlay.remove();
    this.overlay = null;
    this.last = null;
  }
}

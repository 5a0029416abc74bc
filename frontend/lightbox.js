// The lightbox: one result image over the page at its full size (or fitted), with the images around it a key
// press away (arrows), zoom (wheel, + / -, 0 to fit, 1 for 100 %), pan by dragging, download, "load this
// image's workflow" and "send to LoadImage". Keys go to the lightbox alone while it is open.

import { loadImageWorkflow, sendToLoadImage } from "./run_results.js";

const ZOOM_STEPS = [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8];

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, action, title) {
  const node = el("button", "small", label);
  node.dataset.action = action;
  node.title = title;
  return node;
}

export class Lightbox {
  constructor(editor) {
    this.editor = editor;
    this.items = [];
    this.index = 0;
    this.zoom = null; // null: fitted to the window
    this.root = el("div", "lightbox");
    this.root.hidden = true;
    this.root.setAttribute("role", "dialog");
    this.root.setAttribute("aria-label", "Image viewer");
    const bar = el("div", "lightbox-bar");
    this.caption = el("span", "lightbox-caption");
    this.counter = el("span", "lightbox-counter");
    this.zoomLabel = el("span", "lightbox-zoom");
    this.download = el("a", "lightbox-download small-link", "Download");
    this.download.dataset.action = "download";
    bar.append(
      button("‹", "prev", "Previous image (←)"), this.counter, button("›", "next", "Next image (→)"), this.caption,
      button("−", "zoom-out", "Zoom out (-)"), this.zoomLabel, button("+", "zoom-in", "Zoom in (+)"),
      button("Fit", "zoom-fit", "Fit to the window (0)"), button("1:1", "zoom-actual", "Actual size (1)"),
      this.download,
      button("Load workflow", "load-workflow", "Load the workflow that made this image (L)"),
      button("Send to LoadImage", "send-to-load-image", "Upload this image to the input folder and pick it on a LoadImage node"),
      button("×", "close", "Close (Esc)"),
    );
    this.stage = el("div", "lightbox-stage");
    this.img = el("img", "lightbox-image");
    this.img.alt = "";
    this.img.draggable = false;
    this.stage.appendChild(this.img);
    this.root.append(bar, this.stage);
    document.body.appendChild(this.root);
    this.img.addEventListener("load", () => this.applyZoom());
    bar.addEventListener("click", (event) => {
      const action = event.target.closest("[data-action]");
      if (action && action.tagName === "BUTTON") this.act(action.dataset.action);
    });
    this.stage.addEventListener("click", (event) => {
      if (event.target === this.stage && !this.dragged) this.close();
    });
    this.stage.addEventListener("wheel", (event) => this.onWheel(event), { passive: false });
    this.installPan();
    window.addEventListener("keydown", (event) => this.onKey(event), true);
  }

  get visible() {
    return !this.root.hidden;
  }

  get current() {
    return this.items[this.index] || null;
  }

  /** Show `items[index]`; `items` are {filename, subfolder, type, promptId?, nodeId?}. */
  open(items, index = 0) {
    if (!items.length) return;
    this.items = items;
    this.root.hidden = false;
    this.show(index);
  }

  close() {
    this.root.hidden = true;
    this.editor.canvas.el.focus();
  }

  show(index) {
    const count = this.items.length;
    this.index = ((index % count) + count) % count;
    const item = this.current;
    const url = this.editor.api.viewUrl(item);
    this.zoom = null;
    this.img.src = url;
    this.img.dataset.filename = item.filename;
    this.caption.textContent = item.subfolder ? `${item.subfolder}/${item.filename}` : item.filename;
    this.counter.textContent = `${this.index + 1} / ${count}`;
    this.download.href = url;
    this.download.download = item.filename;
    this.applyZoom();
  }

  /** The scale that fits the image in the stage (never above 1: small images stay sharp at 100 %). */
  fitScale() {
    const w = this.img.naturalWidth || 1;
    const h = this.img.naturalHeight || 1;
    return Math.min(1, (this.stage.clientWidth - 16) / w, (this.stage.clientHeight - 16) / h);
  }

  applyZoom() {
    const scale = this.zoom ?? this.fitScale();
    if (this.img.naturalWidth) {
      this.img.style.width = `${Math.round(this.img.naturalWidth * scale)}px`;
      this.img.style.height = `${Math.round(this.img.naturalHeight * scale)}px`;
    }
    this.zoomLabel.textContent = this.zoom === null ? "fit" : `${Math.round(scale * 100)}%`;
    this.root.dataset.zoom = String(scale);
  }

  zoomBy(direction) {
    const now = this.zoom ?? this.fitScale();
    const next = direction > 0 ? ZOOM_STEPS.find((z) => z > now + 1e-6) : [...ZOOM_STEPS].reverse().find((z) => z < now - 1e-6);
    if (next !== undefined) this.zoom = next;
    this.applyZoom();
  }

  act(action) {
    const item = this.current;
    switch (action) {
      case "prev": return this.show(this.index - 1);
      case "next": return this.show(this.index + 1);
      case "zoom-in": return this.zoomBy(1);
      case "zoom-out": return this.zoomBy(-1);
      case "zoom-fit": this.zoom = null; return this.applyZoom();
      case "zoom-actual": this.zoom = 1; return this.applyZoom();
      case "close": return this.close();
      case "load-workflow":
        return loadImageWorkflow(this.editor, item).then((ok) => ok && this.close());
      case "send-to-load-image":
        return sendToLoadImage(this.editor, item).then((id) => id !== null && this.close());
      default: return undefined;
    }
  }

  onKey(event) {
    if (!this.visible) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
    const actions = {
      ArrowLeft: "prev", ArrowRight: "next", Escape: "close", "+": "zoom-in", "=": "zoom-in", "-": "zoom-out",
      "0": "zoom-fit", "1": "zoom-actual", l: "load-workflow",
    };
    const action = actions[event.key];
    // the editor's shortcuts stay off while the lightbox is open
    event.stopImmediatePropagation();
    if (!action || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    this.act(action);
  }

  onWheel(event) {
    event.preventDefault();
    this.zoomBy(event.deltaY < 0 ? 1 : -1);
  }

  /** Drag the image to scroll a zoomed-in view. */
  installPan() {
    let start = null;
    this.stage.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      this.dragged = false;
      start = { x: event.clientX, y: event.clientY, left: this.stage.scrollLeft, top: this.stage.scrollTop };
    });
    window.addEventListener("pointermove", (event) => {
      if (!start) return;
      const dx = event.clientX - start.x;
      const dy = event.clientY - start.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) this.dragged = true;
      this.stage.scrollLeft = start.left - dx;
      this.stage.scrollTop = start.top - dy;
    });
    window.addEventListener("pointerup", () => {
      start = null;
    });
  }
}

// The queue/history side panel sits beside the canvas instead of over it: while it is open the canvas is
// narrowed by the panel's width (the canvas's ResizeObserver redraws it), and dragging the panel's left edge
// resizes both. The width is kept in localStorage.

const WIDTH_KEY = "nodegraph.sidePanelWidth";
const MIN_WIDTH = 240;
const DEFAULT_WIDTH = 340;

export class SidePanel {
  constructor(editor, panel) {
    this.editor = editor;
    this.panel = panel;
    this.workspace = panel.parentElement;
    this.width = Number(localStorage.getItem(WIDTH_KEY)) || DEFAULT_WIDTH;
    this.handle = document.createElement("div");
    this.handle.className = "side-resizer";
    this.handle.title = "Drag to resize the panel";
    this.workspace.appendChild(this.handle); // beside the panel, not in it: it stays put when the panel scrolls
    this.installDrag();
    // QueuePanel shows and hides the panel through its `hidden` attribute: follow it
    new MutationObserver(() => this.apply()).observe(panel, { attributes: true, attributeFilter: ["hidden"] });
    window.addEventListener("resize", () => this.apply());
    this.apply();
  }

  /** The widest the panel may be: the canvas keeps at least a third of the workspace. */
  clamp(width) {
    const most = Math.max(MIN_WIDTH, this.workspace.clientWidth * 0.67);
    return Math.round(Math.min(most, Math.max(MIN_WIDTH, width)));
  }

  apply() {
    const open = !this.panel.hidden;
    const width = this.clamp(this.width);
    this.workspace.style.setProperty("--side-panel-w", `${width}px`);
    this.workspace.classList.toggle("with-side-panel", open);
  }

  installDrag() {
    let dragging = false;
    this.handle.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      dragging = true;
      this.handle.setPointerCapture(event.pointerId);
      this.workspace.classList.add("side-resizing");
      event.preventDefault();
    });
    this.handle.addEventListener("pointermove", (event) => {
      if (!dragging) return;
      const right = this.workspace.getBoundingClientRect().right;
      this.width = this.clamp(right - event.clientX);
      this.apply();
    });
    const stop = () => {
      if (!dragging) return;
      dragging = false;
      this.workspace.classList.remove("side-resizing");
      localStorage.setItem(WIDTH_KEY, String(this.width));
    };
    this.handle.addEventListener("pointerup", stop);
    this.handle.addEventListener("pointercancel", stop);
  }
}

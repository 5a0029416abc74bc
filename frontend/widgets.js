// Widgets drawn inside nodes (numbers, combos, toggles, text, seed control, upload) and how the
// mouse edits them: arrows step, a horizontal drag scrubs a number, a click types or picks.

import { SEED_CONTROLS, normaliseNumber } from "./defs.js";
import { rangeProblem, typedNumber } from "./error_panel.js";
import { FONT, SMALL_FONT, shownValue, textWidth } from "./layout.js";

const ARROW_W = 18;
const DRAG_THRESHOLD = 3;

/** `text` shortened with an ellipsis to fit `width` pixels in `font`. */
export function fitText(text, width, font = FONT) {
  if (textWidth(text, font) <= width) return text;
  let lo = 0, hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (textWidth(text.slice(0, mid) + "…", font) <= width) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + "…";
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, r);
}

function arrows(ctx, x, y, w, h) {
  ctx.fillStyle = "#aaa";
  const cy = y + h / 2;
  ctx.beginPath();
  ctx.moveTo(x + 12, cy - 5);
  ctx.lineTo(x + 6, cy);
  ctx.lineTo(x + 12, cy + 5);
  ctx.moveTo(x + w - 12, cy - 5);
  ctx.lineTo(x + w - 6, cy);
  ctx.lineTo(x + w - 12, cy + 5);
  ctx.fill();
}

/** Draw one widget row in node-local coordinates; `state` carries error/highlight flags. */
export function drawWidget(ctx, node, widget, x, width, state = {}) {
  const { y, h, spec, kind } = widget;
  const value = kind === "control" ? node.controls[widget.name] || "fixed" : node.widgets[widget.name];
  roundRect(ctx, x, y, width, h, kind === "multiline" ? 6 : h / 2);
  ctx.fillStyle = state.highlight ? "#2f4a2f" : "#1e1e1e";
  ctx.fill();
  ctx.lineWidth = state.error ? 2 : 1;
  ctx.strokeStyle = state.error ? "#ff5050" : state.highlight ? "#8f8" : "#5a5a5a";
  ctx.stroke();
  if (state.lowDetail) return;
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  const cy = y + h / 2;
  const label = kind === "control" ? "control after generate" : widget.name;
  if (kind === "multiline") {
    const text = String(value ?? "");
    ctx.fillStyle = text ? "#ddd" : "#777";
    ctx.font = SMALL_FONT;
    const lines = wrapLines(text || widget.name, width - 12, 4);
    lines.forEach((line, i) => ctx.fillText(line, x + 6, y + 10 + i * 16));
    return;
  }
  if (kind === "upload") {
    ctx.fillStyle = "#ddd";
    ctx.textAlign = "center";
    ctx.fillText("choose file to upload", x + width / 2, cy);
    ctx.textAlign = "left";
    return;
  }
  if (kind === "toggle") {
    ctx.fillStyle = "#999";
    ctx.fillText(fitText(label, width - 70), x + 12, cy);
    const on = Boolean(value);
    ctx.fillStyle = on ? "#89c" : "#444";
    ctx.beginPath();
    ctx.arc(x + width - 16, cy, 6, 0, Math.PI * 2);
    ctx.fill();
    ctx.fillStyle = "#ddd";
    ctx.textAlign = "right";
    ctx.fillText(on ? "true" : "false", x + width - 28, cy);
    ctx.textAlign = "left";
    return;
  }
  const stepped = kind === "number" || kind === "combo" || kind === "control";
  if (stepped && !spec.readonly) arrows(ctx, x, y, width, h);
  const inset = stepped ? ARROW_W + 2 : 12;
  const shown = shownValue(spec, value);
  const avail = width - 2 * inset - 10;
  const valueW = Math.min(textWidth(shown, FONT), Math.max(avail * 0.5, avail - textWidth(label, FONT)));
  ctx.fillStyle = "#999";
  ctx.fillText(fitText(label, avail - valueW), x + inset, cy);
  ctx.fillStyle = "#e8e8e8";
  ctx.textAlign = "right";
  ctx.fillText(fitText(shown, valueW + 1), x + width - inset, cy);
  ctx.textAlign = "left";
}

export function wrapLines(text, width, maxLines) {
  const lines = [];
  for (const para of String(text).split("\n")) {
    let line = "";
    for (const word of para.split(" ")) {
      const next = line ? `${line} ${word}` : word;
      if (textWidth(next, SMALL_FONT) > width && line) {
        lines.push(line);
        line = word;
      } else line = next;
      if (lines.length >= maxLines) break;
    }
    lines.push(line);
    if (lines.length >= maxLines) break;
  }
  return lines.slice(0, maxLines).map((line) => fitText(line, width, SMALL_FONT));
}

// ---- editing ---------------------------------------------------------------------------------

/** Open an <input>/<textarea> over a screen rectangle; Enter (Ctrl+Enter for text areas) commits. */
export function openTextEditor(editor, { rect, value, multiline = false, numeric = false, onCommit }) {
  closeTextEditor(editor);
  const field = document.createElement(multiline ? "textarea" : "input");
  field.className = "inline-editor";
  field.value = value;
  if (numeric) field.inputMode = "decimal";
  Object.assign(field.style, {
    left: `${rect[0]}px`, top: `${rect[1]}px`, width: `${Math.max(120, rect[2])}px`,
    height: `${Math.max(multiline ? 80 : 22, rect[3])}px`,
  });
  let done = false;
  const finish = (commit) => {
    if (done) return;
    done = true;
    const text = field.value;
    field.remove();
    editor.textEditor = null;
    if (commit) onCommit(text);
    editor.canvas.el.focus();
  };
  field.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Escape") finish(false);
    else if (event.key === "Enter" && (!multiline || event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      finish(true);
    }
  });
  field.addEventListener("blur", () => finish(true));
  document.body.appendChild(field);
  editor.textEditor = { field, finish };
  field.focus();
  field.select();
  return field;
}

export function closeTextEditor(editor, commit = true) {
  if (editor.textEditor) editor.textEditor.finish(commit);
}

function setValue(editor, node, name, value) {
  editor.graph.change(() => editor.graph.setWidget(node, name, value));
  editor.execution.clearErrors(node.id, name);
}

function stepNumber(spec, value, direction) {
  const step = spec.step || (spec.type === "INT" ? 1 : 0.1);
  return normaliseNumber(spec, Number(value) + direction * step);
}

function cycle(list, current, direction) {
  const index = list.indexOf(current);
  const next = index < 0 ? 0 : (index + direction + list.length) % list.length;
  return list[next];
}

function widgetScreenRect(editor, node, widget, lay) {
  const [sx, sy] = editor.canvas.toScreen(node.pos[0] + 10, node.pos[1] + widget.y);
  const s = editor.canvas.scale;
  const r = editor.canvas.el.getBoundingClientRect();
  return [r.left + sx, r.top + sy, (lay.w - 20) * s, widget.h * s];
}

/**
 * Start editing a widget at a pointer press. Returns a drag handler {move(dx), up(moved)} or null.
 * `hit` comes from layout.hitPart: {widget, x (node-local from the widget's left), width}.
 */
export function widgetPointerDown(editor, node, hit, lay, event) {
  const { widget, x, width } = hit;
  const { spec, kind, name } = widget;
  const graph = editor.graph;
  const onLeft = x < ARROW_W;
  const onRight = x > width - ARROW_W;
  if (kind === "readonly") return null;
  if (kind === "toggle") {
    setValue(editor, node, name, !node.widgets[name]);
    return null;
  }
  if (kind === "control") {
    if (onLeft || onRight) {
      const next = cycle(SEED_CONTROLS, node.controls[name] || "fixed", onLeft ? -1 : 1);
      graph.change(() => (node.controls[name] = next));
      return null;
    }
    editor.menu.open(event.clientX, event.clientY, SEED_CONTROLS.map((mode) => ({
      label: mode, checked: node.controls[name] === mode,
      action: () => graph.change(() => (node.controls[name] = mode)),
    })));
    return null;
  }
  if (kind === "combo") {
    const options = spec.options || [];
    if ((onLeft || onRight) && options.length) {
      setValue(editor, node, name, cycle(options, node.widgets[name], onLeft ? -1 : 1));
      return null;
    }
    editor.menu.open(event.clientX, event.clientY, options.map((option) => ({
      label: option, checked: node.widgets[name] === option, action: () => setValue(editor, node, name, option),
    })), { filter: options.length > 8, className: "combo-menu" });
    return null;
  }
  if (kind === "upload") {
    editor.uploadImageFor(node, name);
    return null;
  }
  if (kind === "text" || kind === "multiline") {
    openTextEditor(editor, {
      rect: widgetScreenRect(editor, node, widget, lay), value: String(node.widgets[name] ?? ""),
      multiline: kind === "multiline", onCommit: (text) => setValue(editor, node, name, text),
    });
    return null;
  }
  // number
  if (onLeft || onRight) {
    setValue(editor, node, name, stepNumber(spec, node.widgets[name], onLeft ? -1 : 1));
    return null;
  }
  const start = Number(node.widgets[name]) || 0;
  let dragged = false;
  return {
    move(dx) {
      if (!dragged && Math.abs(dx) < DRAG_THRESHOLD) return;
      if (!dragged) graph.beginChange();
      dragged = true;
      const step = spec.step || (spec.type === "INT" ? 1 : 0.01);
      graph.setWidget(node, name, normaliseNumber(spec, start + Math.round(dx / 2) * step));
      graph.emit("move");
    },
    up() {
      if (dragged) {
        graph.endChange();
        editor.execution.clearErrors(node.id, name);
        return;
      }
      openTextEditor(editor, {
        rect: widgetScreenRect(editor, node, widget, lay), value: shownValue(spec, node.widgets[name]), numeric: true,
        onCommit: (text) => {
          const parsed = Number(String(text).trim());
          if (String(text).trim() === "" || !Number.isFinite(parsed)) {
            editor.notify(`${name}: "${text}" is not a number`, "error");
            return;
          }
          const problem = rangeProblem(spec, parsed);
          if (problem) editor.notify(`${name}: ${problem} (kept as typed; the prompt will not validate)`, "warn");
          setValue(editor, node, name, typedNumber(spec, parsed));
        },
      });
    },
  };
}

/** The value after a "control after generate" mode, applied to a seed after each queue. */
export function controlledValue(spec, value, mode) {
  const v = Number(value) || 0;
  const min = spec.min ?? 0;
  // ComfyUI caps random seeds at 2^50 so they stay exact JavaScript numbers.
  const max = Math.min(spec.max ?? 1125899906842624, 1125899906842624);
  const step = spec.step || 1;
  if (mode === "increment") return Math.min(max, v + step);
  if (mode === "decrement") return Math.max(min, v - step);
  if (mode === "randomize") {
    const range = Math.floor((max - min) / step);
    return min + Math.floor(Math.random() * (range + 1)) * step;
  }
  return v;
}

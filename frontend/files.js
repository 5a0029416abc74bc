// Files in and out: download our workflow or the API prompt, open a JSON or PNG workflow from a file
// dialog or by dropping it on the page, and upload images for image inputs.

import { workflowFromPng } from "./png.js";

export function download(filename, text, mime = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type: mime }));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** The workflow data in a dropped/opened file: JSON, or a PNG's text chunks. Throws with the reason. */
export async function readWorkflowFile(file) {
  const isPng = file.type === "image/png" || /\.png$/i.test(file.name);
  if (isPng) {
    const found = await workflowFromPng(await file.arrayBuffer());
    if (!found) throw new Error(`${file.name} carries no workflow (no nodegraph_workflow, workflow or prompt text chunk)`);
    return found.data;
  }
  const text = await file.text();
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${file.name} is not JSON: ${err.message}`);
  }
}

/** Ask for one file (resolves null when the dialog is dismissed). */
export function pickFile(input, accept) {
  return new Promise((resolve) => {
    input.accept = accept;
    input.value = "";
    input.onchange = () => resolve(input.files && input.files[0] ? input.files[0] : null);
    input.click();
  });
}

/** Dropping a .json or .png anywhere on the page loads its workflow. */
export function installDrop(editor) {
  const target = document.body;
  target.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    target.classList.add("dropping");
  });
  target.addEventListener("dragleave", () => target.classList.remove("dropping"));
  target.addEventListener("drop", (event) => {
    event.preventDefault();
    target.classList.remove("dropping");
    if (editor.dropHandler && editor.dropHandler(event)) return;
    const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) editor.actions.loadFile(file);
  });
}

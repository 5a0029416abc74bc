// What the gallery and the lightbox do with a finished run's image: load the workflow that made it (from the
// history entry, else the PNG's own text chunks) with its images back on its output nodes, and send an
// image to a LoadImage node (uploaded to the input folder through /upload/image).

import { workflowFromPng } from "./png.js";

/** The workflow a history entry ran: our own graph if it rode along, else ComfyUI's UI format, else the prompt. */
export function workflowOfEntry(entry) {
  const prompt = entry && entry.prompt;
  if (!prompt) return null;
  const pnginfo = (prompt[3] && prompt[3].extra_pnginfo) || {};
  return pnginfo.nodegraph_workflow || pnginfo.workflow || prompt[2] || null;
}

/** Every image of a history entry's outputs as gallery items, in output-node order. */
export function imagesOfEntry(promptId, entry) {
  const items = [];
  for (const [nodeId, output] of Object.entries((entry && entry.outputs) || {})) {
    for (const image of output.images || []) {
      if (image && image.filename) items.push({ ...image, type: image.type || "output", promptId, nodeId });
    }
  }
  return items;
}

/** Put a finished run's outputs (images, text) back on the output nodes of the graph now loaded. */
export function showEntryOutputs(editor, entry) {
  const execution = editor.execution;
  let shown = 0;
  for (const [nodeId, output] of Object.entries((entry && entry.outputs) || {})) {
    if (!editor.graph.nodes.has(String(nodeId))) continue;
    if (output.images && output.images.length) {
      execution.loadImages(String(nodeId), output.images);
      shown++;
    }
    if (output.text) execution.ensure(String(nodeId)).text = output.text.map(String);
  }
  editor.canvas.setDirty();
  return shown;
}

/** Load a history entry's workflow and show its results on its nodes. */
export function restoreRun(editor, promptId, entry, label = null) {
  const workflow = workflowOfEntry(entry);
  if (!workflow) {
    editor.notify(`Prompt ${promptId} carries no workflow`, "error");
    return false;
  }
  const number = entry.prompt ? entry.prompt[0] : "?";
  if (!editor.actions.loadData(workflow, label || `prompt #${number}`)) return false;
  showEntryOutputs(editor, entry);
  return true;
}

/** The history entry of a prompt, or null (the server keeps a bounded history). */
async function historyEntry(editor, promptId) {
  if (!promptId) return null;
  try {
    const found = await editor.api.getHistoryEntry(promptId);
    return (found && found[promptId]) || null;
  } catch {
    return null;
  }
}

/** "Load this image's workflow": the run's history entry when the server still has it, else the PNG's chunks. */
export async function loadImageWorkflow(editor, item) {
  const entry = await historyEntry(editor, item.promptId);
  if (entry && workflowOfEntry(entry)) return restoreRun(editor, item.promptId, entry, item.filename);
  try {
    const response = await fetch(editor.api.viewUrl(item));
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const found = await workflowFromPng(await response.arrayBuffer());
    if (!found) throw new Error("it carries no workflow");
    return editor.actions.loadData(found.data, item.filename);
  } catch (err) {
    editor.notify(`Could not load the workflow of ${item.filename}: ${err.message}`, "error");
    return false;
  }
}

/** The LoadImage node to receive an image: a selected one, else the first in the graph, else a new one in view. */
function targetLoadImage(editor) {
  const graph = editor.graph;
  const isLoader = (node) => node && node.type === "LoadImage";
  for (const id of editor.selection) if (isLoader(graph.nodes.get(id))) return { node: graph.nodes.get(id), created: false };
  const first = [...graph.nodes.values()].find(isLoader);
  if (first) return { node: first, created: false };
  if (!graph.defs.has("LoadImage")) return null;
  const [x, y] = editor.canvas.toWorld(editor.canvas.width * 0.35, editor.canvas.height * 0.35);
  return { node: graph.makeNode("LoadImage", [x, y]), created: true };
}

/** "Send to LoadImage": upload the image to the input folder and pick it on a LoadImage node. */
export async function sendToLoadImage(editor, item) {
  try {
    const response = await fetch(editor.api.viewUrl(item));
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const blob = await response.blob();
    const file = new File([blob], item.filename, { type: blob.type || "image/png" });
    const result = await editor.api.uploadImage(file);
    const value = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
    const target = targetLoadImage(editor);
    if (!target) throw new Error("this server has no LoadImage node");
    const { node, created } = target;
    editor.graph.change(() => {
      if (created) editor.graph.addNode(node);
      const spec = editor.graph.inputSpec(node, "image");
      if (spec && spec.options && !spec.options.includes(value)) spec.options.push(value);
      editor.graph.setWidget(node, "image", value);
    });
    editor.select([node.id]);
    editor.notify(`${value} is on Load Image #${node.id}`);
    return node.id;
  } catch (err) {
    editor.notify(`Could not send ${item.filename} to LoadImage: ${err.message}`, "error");
    return null;
  }
}

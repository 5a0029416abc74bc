// Workflows on the server: the user's saved files under /userdata (workflows/NAME.json, in ComfyUI's UI format,
// the same store and format ComfyUI's own editor uses, so a file saved in one opens in the other), the shipped
// templates (/templates/index.json), and conversion through the server's one converter.

const FOLDER = "workflows";

/** The /userdata path of a saved workflow: "workflows%2F<name>.json" (folders inside the name kept as %2F). */
export function userdataPath(name) {
  const clean = name.replace(/\.json$/i, "");
  return encodeURIComponent(`${FOLDER}/${clean}.json`);
}

/** A name a user typed, as a file name: trimmed, no leading slashes or dots, ".json" dropped. */
export function cleanName(name) {
  return String(name || "").trim().replace(/^[/.]+/, "").replace(/\.json$/i, "").trim();
}

export class WorkflowStore {
  constructor(api) {
    this.api = api;
  }

  /** Saved workflows: [{path, size, modified}] with `path` relative to workflows/, newest first. */
  async list() {
    const query = new URLSearchParams({ dir: FOLDER, recurse: "true", split: "false", full_info: "true" });
    let files;
    try {
      files = await this.api.request(`/userdata?${query}`);
    } catch (err) {
      if (err.status === 404) return []; // nothing saved yet: the folder does not exist
      throw err;
    }
    return (files || [])
      .map((file) => (typeof file === "string" ? { path: file } : file))
      .filter((file) => /\.json$/i.test(file.path))
      .sort((a, b) => (b.modified || 0) - (a.modified || 0));
  }

  /** A saved workflow's JSON (ComfyUI UI format, or whatever was saved there). */
  load(name) {
    return this.api.request(`/userdata/${userdataPath(name)}`);
  }

  /** Write `data` as workflows/NAME.json; refuses to replace an existing file unless `overwrite`. */
  save(name, data, overwrite = false) {
    const query = new URLSearchParams({ overwrite: String(overwrite), full_info: "true" });
    return this.api.request(`/userdata/${userdataPath(name)}?${query}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data),
    });
  }

  remove(name) {
    return this.api.request(`/userdata/${userdataPath(name)}`, { method: "DELETE" });
  }

  /** A workflow of any format as "native", "ui" (ComfyUI's editor format) or "api" (a /prompt body). */
  convert(workflow, to) {
    return this.api.postJson("/nodegraph/workflow/convert", { workflow, to });
  }

  /** The shipped templates: [{name, title, description, thumbnail}]. */
  async templates() {
    const index = await this.api.request("/templates/index.json");
    const found = [];
    for (const category of index || []) {
      for (const template of category.templates || []) {
        found.push({
          name: template.name, title: template.title || template.name, description: template.description || "",
          thumbnail: `/templates/${encodeURIComponent(template.name)}-1.${template.mediaSubtype || "png"}`,
        });
      }
    }
    return found;
  }

  template(name) {
    return this.api.request(`/templates/${encodeURIComponent(name)}.json`);
  }
}

// The templates browser: our shipped workflows as ComfyUI's frontend sees them (/templates/index.json with a
// thumbnail each); click a card to open the template in a new tab.

export class TemplatesBrowser {
  constructor(editor, store, files) {
    this.editor = editor;
    this.store = store;
    this.files = files;
    this.element = document.createElement("section");
    this.element.className = "templates-browser";
    this.grid = document.createElement("div");
    this.grid.className = "template-grid";
    this.element.appendChild(this.grid);
    this.loaded = false;
  }

  async refresh() {
    if (this.loaded) return;
    let templates;
    try {
      templates = await this.store.templates();
    } catch (err) {
      this.grid.textContent = `Could not read the templates: ${err.message}`;
      return;
    }
    this.loaded = true;
    this.grid.replaceChildren();
    for (const template of templates) {
      const card = document.createElement("button");
      card.className = "template-card";
      card.dataset.name = template.name;
      card.title = template.description;
      const image = document.createElement("img");
      image.alt = "";
      image.loading = "lazy";
      image.src = template.thumbnail;
      image.addEventListener("error", () => image.classList.add("missing"));
      const title = document.createElement("span");
      title.className = "template-title";
      title.textContent = template.title;
      const description = document.createElement("span");
      description.className = "template-description";
      description.textContent = template.description;
      card.append(image, title, description);
      card.addEventListener("click", () => this.files.openTemplate(template.name, template.title));
      this.grid.appendChild(card);
    }
  }
}

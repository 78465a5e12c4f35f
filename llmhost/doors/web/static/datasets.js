// Datasets: document collections for retrieval (/v1/datasets). Create one, upload files with a progress
// bar (multipart, XMLHttpRequest upload progress) or paste text, list and delete documents, and search
// (hybrid, vector or text) with each hit's citation: document, chunk, character offsets, score.

import { api, call, upload } from "./api.js";
import { clear, errorText, field, fmtBytes, fmtNumber, fmtTime, h, notice, table, toast } from "./dom.js";

const path = (name) => `/v1/datasets/${encodeURIComponent(name)}`;

export function render(view, ctx) {
  const selected = ctx.params[0] || null;
  const errors = h("div");
  const listEl = h("div", {}, h("p", { class: "muted" }, "Loading the datasets…"));
  const detailEl = h("div");

  /** The list; with `detail`, the selected dataset's part of the page too (not after an upload into it,
   * which would wipe the upload's own status). */
  async function loadList({ detail = true } = {}) {
    clear(errors);
    try {
      const answer = await api("/v1/datasets");
      drawList(answer.data);
      if (selected && detail) {
        const found = answer.data.find((d) => d.name === selected);
        if (found) drawDetail(found);
        else clear(detailEl).append(notice("error", `no dataset named “${selected}”`));
      }
    } catch (error) {
      clear(listEl);
      errors.append(notice("error", errorText(error)));
    }
  }

  function drawList(datasets) {
    clear(listEl);
    if (!datasets.length) {
      listEl.append(h("p", { class: "muted" }, "No datasets yet: create one below."));
      return;
    }
    listEl.append(
      table(
        ["Name", "Description", "Documents", "Chunks", "Embedding model", "Created"],
        datasets.map((d) => [
          h("a", { href: `#/datasets/${encodeURIComponent(d.name)}`, "aria-current": d.name === selected ? "true" : null }, d.name),
          d.description || "–",
          fmtNumber(d.documents),
          fmtNumber(d.chunks),
          h("span", { class: "mono" }, d.embedding_model),
          fmtTime(d.created),
        ]),
        { caption: "Datasets", numeric: [2, 3] },
      ),
    );
  }

  function drawDetail(dataset) {
    const docsEl = h("div", {}, h("p", { class: "muted" }, "Loading the documents…"));
    const file = h("input", { type: "file", name: "file", accept: ".txt,.md,.html,.htm,.pdf,.jsonl,.csv,text/*,application/pdf" });
    const docName = h("input", { type: "text", name: "name", placeholder: "the file's name", autocomplete: "off" });
    const uploadButton = h("button", { type: "submit" }, "Upload");
    const bar = h("progress", { max: 1, value: 0, "aria-label": "Upload progress", hidden: true });
    const uploadStatus = h("div", { class: "small", role: "status", "aria-live": "polite" });
    const uploadErrors = h("div");
    const textName = h("input", { type: "text", name: "text_name", placeholder: "notes.md", autocomplete: "off" });
    const text = h("textarea", { name: "text", rows: 4 });
    const textErrors = h("div");
    const query = h("input", { type: "search", name: "query", required: true, autocomplete: "off" });
    const k = h("input", { type: "number", name: "k", min: "1", max: "100", value: "5" });
    const mode = h("select", { name: "mode" }, [["hybrid", "Hybrid (vector + text)"], ["vector", "Vector"], ["text", "Text (BM25)"]].map(([v, l]) => h("option", { value: v }, l)));
    const resultsEl = h("div", { "aria-live": "polite" });

    async function loadDocs() {
      try {
        const answer = await api(`${path(dataset.name)}/documents`);
        clear(docsEl).append(
          answer.data.length
            ? table(
                ["Document", "Format", "Size", "Chunks", "Added", ""],
                answer.data.map((d) => [
                  d.name,
                  d.format,
                  fmtBytes(d.bytes),
                  fmtNumber(d.chunks),
                  fmtTime(d.created),
                  h("button", { type: "button", class: "ghost small", "aria-label": `Delete ${d.name}`, onclick: () => removeDoc(d) }, "Delete"),
                ]),
                { caption: "Documents", numeric: [2, 3] },
              )
            : h("p", { class: "muted" }, "No documents yet."),
        );
      } catch (error) {
        clear(docsEl).append(notice("error", errorText(error)));
      }
    }

    async function removeDoc(d) {
      if (!window.confirm(`Delete “${d.name}” and its chunks?`)) return;
      try {
        await call(`${path(dataset.name)}/documents/${encodeURIComponent(d.id)}`, { method: "DELETE" });
        toast("ok", `${d.name} deleted`);
      } catch (error) {
        toast("error", errorText(error));
      }
      await loadDocs();
    }

    const uploadForm = h(
      "form",
      { class: "card stack", "aria-labelledby": "upload-title" },
      h("h3", { id: "upload-title" }, "Upload a file"),
      h("div", { class: "row" }, field("File", file, "txt, md, html, pdf, jsonl or csv; the same name again replaces it"), field("Document name", docName)),
      h("div", { class: "row" }, uploadButton),
      bar,
      uploadStatus,
      uploadErrors,
    );
    uploadForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      clear(uploadErrors);
      if (!file.files.length) {
        uploadErrors.append(notice("error", "choose a file first"));
        return;
      }
      const form = new FormData();
      form.append("file", file.files[0]);
      if (docName.value.trim()) form.append("name", docName.value.trim());
      uploadButton.disabled = true;
      bar.hidden = false;
      bar.value = 0;
      uploadStatus.textContent = "Uploading…";
      try {
        const doc = await upload(`${path(dataset.name)}/documents`, form, (loaded, total) => {
          bar.max = total;
          bar.value = loaded;
          uploadStatus.textContent = loaded < total ? `Uploading: ${fmtBytes(loaded)} of ${fmtBytes(total)}` : "Uploaded; chunking and embedding…";
        });
        bar.max = 1;
        bar.value = 1;
        uploadStatus.textContent = `Added ${doc.name}: ${fmtNumber(doc.chunks)} chunks`;
        uploadForm.reset();
        await Promise.all([loadDocs(), loadList({ detail: false })]);
      } catch (error) {
        bar.hidden = true;
        uploadStatus.textContent = "";
        uploadErrors.append(notice("error", errorText(error)));
      } finally {
        uploadButton.disabled = false;
      }
    });

    const textForm = h(
      "form",
      { class: "card stack", "aria-labelledby": "text-title" },
      h("h3", { id: "text-title" }, "Add text"),
      field("Document name", textName),
      field("Text", text),
      textErrors,
      h("div", { class: "row" }, h("button", { type: "submit" }, "Add")),
    );
    textForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      clear(textErrors);
      try {
        const doc = await api(`${path(dataset.name)}/documents`, { method: "POST", json: { name: textName.value.trim(), text: text.value } });
        toast("ok", `Added ${doc.name}: ${doc.chunks} chunks`);
        textForm.reset();
        await Promise.all([loadDocs(), loadList({ detail: false })]);
      } catch (error) {
        textErrors.append(notice("error", errorText(error)));
      }
    });

    const searchForm = h(
      "form",
      { class: "card stack", role: "search", "aria-labelledby": "search-title" },
      h("h3", { id: "search-title" }, "Search"),
      h("div", { class: "row end" }, field("Query", query), field("Results", k), field("Mode", mode), h("button", { type: "submit" }, "Search")),
      resultsEl,
    );
    searchForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      clear(resultsEl).append(h("p", { class: "muted" }, "Searching…"));
      try {
        const answer = await api(`${path(dataset.name)}/search`, { method: "POST", json: { query: query.value, k: Number.parseInt(k.value, 10) || 5, mode: mode.value } });
        clear(resultsEl).append(
          answer.data.length
            ? h(
                "ol",
                { class: "results", "aria-label": "Search results" },
                answer.data.map((hit) =>
                  h(
                    "li",
                    {},
                    h("strong", {}, hit.document),
                    h("div", { class: "where" }, `chunk ${hit.chunk}, characters ${hit.start}–${hit.end} · score ${fmtNumber(hit.score, 4)} · vector rank ${hit.vector_rank ?? "–"}, text rank ${hit.text_rank ?? "–"}`),
                    h("div", { class: "text" }, hit.text),
                  ),
                ),
              )
            : h("p", { class: "muted" }, "Nothing found."),
        );
      } catch (error) {
        clear(resultsEl).append(notice("error", errorText(error)));
      }
    });

    async function removeDataset() {
      if (!window.confirm(`Delete the dataset “${dataset.name}” with all its documents?`)) return;
      try {
        await call(path(dataset.name), { method: "DELETE" });
        toast("ok", `${dataset.name} deleted`);
        location.hash = "#/datasets";
      } catch (error) {
        toast("error", errorText(error));
      }
    }

    clear(detailEl).append(
      h(
        "section",
        { class: "stack", "aria-labelledby": "dataset-title" },
        h(
          "div",
          { class: "page-head" },
          h("h2", { id: "dataset-title" }, `Dataset ${dataset.name}`),
          h("span", { class: "muted small" }, `${fmtNumber(dataset.documents)} documents · ${fmtNumber(dataset.chunks)} chunks · ${dataset.chunk_tokens}-token chunks, ${dataset.chunk_overlap} overlap · ${dataset.embedding_model}`),
          h("div", { class: "actions" }, h("button", { type: "button", class: "danger small", onclick: removeDataset }, "Delete dataset")),
        ),
        h("div", { class: "grid" }, uploadForm, textForm),
        searchForm,
        h("section", { class: "card", "aria-labelledby": "docs-title" }, h("h3", { id: "docs-title" }, "Documents"), docsEl),
      ),
    );
    loadDocs();
  }

  const newName = h("input", { type: "text", name: "name", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}", autocomplete: "off" });
  const description = h("input", { type: "text", name: "description", autocomplete: "off" });
  const embedding = h("input", { type: "text", name: "embedding_model", placeholder: "the server's default", autocomplete: "off" });
  const chunkTokens = h("input", { type: "number", name: "chunk_tokens", min: "16", value: "256" });
  const overlap = h("input", { type: "number", name: "chunk_overlap", min: "0", value: "32" });
  const createErrors = h("div");
  const createForm = h(
    "form",
    { class: "card stack", "aria-labelledby": "new-dataset" },
    h("h2", { id: "new-dataset" }, "Create a dataset"),
    h("div", { class: "row" }, field("Name", newName, "Letters, digits, . _ -"), field("Description", description), field("Embedding model", embedding), field("Chunk tokens", chunkTokens), field("Overlap", overlap)),
    createErrors,
    h("div", { class: "row" }, h("button", { type: "submit" }, "Create")),
  );
  createForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(createErrors);
    const body = { name: newName.value.trim(), description: description.value, chunk_tokens: Number.parseInt(chunkTokens.value, 10), chunk_overlap: Number.parseInt(overlap.value, 10) };
    if (embedding.value.trim()) body.embedding_model = embedding.value.trim();
    try {
      const made = await api("/v1/datasets", { method: "POST", json: body });
      toast("ok", `Dataset ${made.name} created`);
      location.hash = `#/datasets/${encodeURIComponent(made.name)}`;
    } catch (error) {
      createErrors.append(notice("error", errorText(error)));
    }
  });

  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Datasets")),
    errors,
    h("section", { class: "card", "aria-labelledby": "datasets-list" }, h("h2", { id: "datasets-list" }, "Datasets"), listEl),
    detailEl,
    selected ? null : createForm,
  );
  loadList();
}

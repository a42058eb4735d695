// Admin page: model upload with a progress bar (XHR upload events; the class names, labels
// file, architecture and preprocessing fields go along in the same form), "try an image"
// against any stored model, "switching…" until this worker serves a newly active model,
// and a confirmation before deleting.  Every form also works
// without JavaScript; these calls go to /admin/api/* with the session cookie and the
// page's CSRF token in the X-CSRFToken header (api.js).
import { _ } from "./i18n.js";
import { errorOf, fillUrl, headers, pictureForm, request, withQuery } from "./api.js";
import { predictionList, unsure } from "./bars.js";
import { confirmForms } from "./confirm.js";

// ---------------------------------------------------------------- upload
const upload = document.getElementById("upload-form");
if (upload) {
  const progress = document.getElementById("upload-progress");
  const bar = document.getElementById("upload-bar");
  const status = document.getElementById("upload-status");
  const errorBox = document.getElementById("upload-error");
  const button = document.getElementById("upload-button");

  function setProgress(pct) {
    bar.style.width = pct.toFixed(0) + "%";
    progress.setAttribute("aria-valuenow", pct.toFixed(0));
  }

  upload.addEventListener("submit", function (event) {
    const input = document.getElementById("checkpoint-input");
    if (!input.files || !input.files.length) return;
    event.preventDefault();
    errorBox.classList.add("d-none");
    progress.classList.remove("d-none");
    bar.classList.remove("bg-danger");
    setProgress(0);
    button.disabled = true;
    status.textContent = _("Uploading…");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", upload.dataset.api);
    Object.entries(headers()).forEach(function ([name, value]) {
      xhr.setRequestHeader(name, value);
    });
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      const pct = (e.loaded / e.total) * 100;
      setProgress(pct);
      const mb = function (n) { return (n / 1e6).toFixed(1); };
      status.textContent = pct >= 100
        ? _("Uploaded; validating the checkpoint…")
        : _("Uploading… {done} of {total} MB", { done: mb(e.loaded), total: mb(e.total) });
    });
    xhr.addEventListener("load", function () {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = null; }
      if (xhr.status === 201 && data && data.id) {
        // The table row shows the same summary after the reload.
        status.textContent = data.summary
          ? _("Stored as {id} ({summary}).", { id: data.id, summary: data.summary })
          : _("Stored as {id}.", { id: data.id });
        window.location.assign(withQuery(window.location.pathname, { added: data.id }));
        return;
      }
      bar.classList.add("bg-danger");
      status.textContent = "";
      errorBox.textContent = errorOf(data, xhr.status);
      errorBox.classList.remove("d-none");
      button.disabled = false;
    });
    xhr.addEventListener("error", function () {
      bar.classList.add("bg-danger");
      status.textContent = "";
      errorBox.textContent = _("The upload was interrupted (is the file larger than the limit?).");
      errorBox.classList.remove("d-none");
      button.disabled = false;
    });
    xhr.send(new FormData(upload));
  });
}

// ---------------------------------------------------------------- try an image
const trial = document.getElementById("try-form");
if (trial) {
  const result = document.getElementById("try-result");
  const errorBox = document.getElementById("try-error");
  const button = document.getElementById("try-button");

  function bars(predictions, model, unknown) {
    const list = predictionList(predictions, { unknown: unknown });
    list.id = "predictions";
    const meta = document.createElement("p");
    meta.className = "small text-body-secondary mb-0";
    meta.textContent = _("Answered by {name} ({id})", { name: model.name, id: model.id });
    result.replaceChildren(...(unknown ? [unsure(), list, meta] : [list, meta]));
  }

  trial.addEventListener("submit", async function (event) {
    const image = document.getElementById("try-image");
    if (!image.files || !image.files.length) return;
    event.preventDefault();
    errorBox.classList.add("d-none");
    button.disabled = true;
    result.replaceChildren();
    const modelId = document.getElementById("try-model").value;
    try {
      const answer = await request("POST", fillUrl(trial.dataset.api, { id: modelId }),
        pictureForm(image.files[0], image.files[0].name, { topk: 3 }));
      const data = answer.data;
      if (!answer.ok || !data || !data.predictions) {
        errorBox.textContent = errorOf(data, answer.status);
        errorBox.classList.remove("d-none");
        return;
      }
      bars(data.predictions, data.model, data.unknown === true);
    } catch (err) {
      errorBox.textContent = _("Could not reach the server: {reason}", { reason: err.message });
      errorBox.classList.remove("d-none");
    } finally {
      button.disabled = false;
    }
  });
}

// ---------------------------------------------------------------- switching
// Right after "Activated …" this worker may still serve the model before it for a
// moment (it loads the new one in the background): the page says "Switching to …" and
// asks /admin/api/models until this worker serves the active model.
const serving = document.getElementById("serving");
if (serving && serving.dataset.state === "switching") {
  const POLL_MS = 500, GIVE_UP_MS = 120000;
  const started = Date.now();

  function describe(info) {
    serving.textContent = _("This worker (pid {pid}) serves {name} {id}, version {version}, {quantization} quantization.", {
      pid: info.pid, name: info.name, id: info.id, version: info.version,
      quantization: info.quantization });
  }

  async function check() {
    let data = null;
    try {
      const answer = await request("GET", serving.dataset.poll);
      if (answer.ok) data = answer.data;
    } catch { data = null; }
    if (data && data.serving && data.serving.id === data.active) {
      describe(data.serving);
      serving.dataset.state = "serving";
      return;
    }
    if (data && data.serving && data.serving.notice) {
      serving.textContent = data.serving.notice;
      serving.dataset.state = "failed";
      return;
    }
    if (Date.now() - started < GIVE_UP_MS) setTimeout(check, POLL_MS);
  }
  setTimeout(check, POLL_MS);
}

confirmForms();

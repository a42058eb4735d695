// Upload page: the "How the model sees it" switch.  When it is on, every classified photo
// is also sent to POST /explain (the switch's data-explain-url) and the steps and heatmap
// are drawn below the answer.  app.js tells us about photos with the "image-classifying"
// / "image-classified" events.
import { _ } from "./i18n.js";
import { renderExplanation, requestExplanation } from "./explain-view.js";

function setUp(toggle, section, panel) {
  toggle.closest(".explain-switch").hidden = false;  // the switch needs JavaScript
  let file = null;
  let drawnFor = null;

  async function show() {
    if (!toggle.checked || !file) { section.hidden = true; return; }
    section.hidden = false;
    if (drawnFor === file) return;
    const current = file;
    panel.replaceChildren();
    panel.textContent = _("Looking closer…");
    try {
      const data = await requestExplanation(toggle.dataset.explainUrl, current, current.name);
      if (current !== file) return;
      renderExplanation(panel, data);
      drawnFor = current;
    } catch (err) {
      if (current === file) {
        panel.textContent = _("Sorry, that did not work. {reason}", { reason: err.message });
      }
    }
  }

  document.addEventListener("image-classifying", function () {
    file = null;
    drawnFor = null;
    section.hidden = true;
    panel.replaceChildren();
  });
  document.addEventListener("image-classified", function (event) {
    file = event.detail.file;
    show();
  });
  toggle.addEventListener("change", show);
}

const toggle = document.getElementById("explain-toggle");
const section = document.getElementById("explain-section");
const panel = document.getElementById("explain-panel");
if (toggle && section && panel) setUp(toggle, section, panel);

// The pages' words in the visitor's language.  Every page carries the translations its
// scripts need (JSON in <html data-messages>, made by the server from the same gettext
// catalogs as the templates: webapp/i18n.py), and scripts ask:
//   _("Starting over in {n} s…", {n: 4})              a sentence, with named parameters
//   ngettext("{n} picture", "{n} pictures", n, {n})    a sentence whose form depends on n
// (the names pybabel looks for, so `make i18n-extract` finds every message here).
// The English text is the key, so a message with no translation shows in English.
(function () {
  "use strict";

  let table = {};
  try { table = JSON.parse(document.documentElement.dataset.messages || "{}") || {}; }
  catch (e) { table = {}; }
  const lang = document.documentElement.lang || "en";
  let plural = null;
  try { plural = new Intl.PluralRules(lang); } catch (e) { plural = null; }

  function fill(text, params) {
    if (!params) return text;
    return text.replace(/\{(\w+)\}/g, function (whole, name) {
      return Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : whole;
    });
  }

  function gettext(message, params) {
    const found = table[message];
    return fill(typeof found === "string" ? found : message, params);
  }

  function ngettext(singular, pluralText, n, params) {
    const one = plural ? plural.select(n) === "one" : n === 1;
    const forms = table[singular];
    let text = one ? singular : pluralText;
    if (Array.isArray(forms) && forms.length) {
      text = forms[Math.min(one ? 0 : 1, forms.length - 1)];
    }
    return fill(text, Object.assign({ n: n }, params || {}));
  }

  // A list of names as the language writes one: "a, b, c" / "a、b、c".
  function joinNames(items) {
    try {
      return new Intl.ListFormat(lang, { type: "conjunction", style: "narrow" }).format(items);
    } catch (e) {
      return items.join(", ");
    }
  }

  // Moments the server sends (ISO 8601, UTC: <time class="local-time" datetime="...">) in
  // the viewer's own time zone and language.
  function localTimes(root) {
    let format = null;
    try {
      format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
    } catch (e) {
      return;
    }
    (root || document).querySelectorAll("time.local-time[datetime]").forEach(function (el) {
      const when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when.getTime())) el.textContent = format.format(when);
    });
  }

  window._ = gettext;
  window.ngettext = ngettext;
  window.joinNames = joinNames;
  window.localTimes = localTimes;
  window.i18nLang = lang;
  document.addEventListener("DOMContentLoaded", function () { localTimes(); });
})();

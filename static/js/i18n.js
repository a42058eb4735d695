// The pages' words in the visitor's language.  Every page carries the translations its
// scripts need (JSON in <html data-messages>, made by the server from the same gettext
// catalogs as the templates: webapp/i18n.py), and scripts import and ask:
//   _("Starting over in {n} s…", {n: 4})              a sentence, with named parameters
//   ngettext("{n} picture", "{n} pictures", n, {n})    a sentence whose form depends on n
// (the names pybabel looks for, so `make i18n-extract` finds every message here).
// The English text is the key, so a message with no translation shows in English (and
// outside a page, in Node's tests, every message is English).

// A translator for one catalog ({english: translation or [singular, plural forms]}) and
// language (BCP 47).
export function translator(table, language) {
  let plural = null;
  try { plural = new Intl.PluralRules(language); } catch { plural = null; }

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

  return { gettext, ngettext };
}

// "{name}" in ``text`` replaced by params.name (left as it is when params has no name).
export function fill(text, params) {
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, function (whole, name) {
    return Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : whole;
  });
}

const page = globalThis.document ? document.documentElement : null;
let table = {};
try { table = JSON.parse((page && page.dataset.messages) || "{}") || {}; } catch { table = {}; }

// The page's language (BCP 47).
export const lang = (page && page.lang) || "en";
const words = translator(table, lang);
export const _ = words.gettext;
export const ngettext = words.ngettext;

// A list of names as the language writes one: "a, b, c" / "a、b、c".
export function joinNames(items, language) {
  try {
    return new Intl.ListFormat(language || lang, { type: "conjunction", style: "narrow" })
      .format(items);
  } catch {
    return items.join(", ");
  }
}

// Moments the server sends (ISO 8601, UTC: <time class="local-time" datetime="...">) in
// the viewer's own time zone and language.
export function localTimes(root) {
  let format = null;
  try {
    format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
  } catch {
    return;
  }
  (root || document).querySelectorAll("time.local-time[datetime]").forEach(function (el) {
    const when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when.getTime())) el.textContent = format.format(when);
  });
}

if (page) document.addEventListener("DOMContentLoaded", function () { localTimes(); });

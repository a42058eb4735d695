// The server's addresses and the calls to them, in one place.
//
// * Addresses come from the page: the templates render them with Flask's url_for into
//   data-* attributes, those with a part the script fills in (a model's id) as templates
//   made with a placeholder, url_for(..., model_id="{id}"), which url_for writes as
//   "%7Bid%7D".  fillUrl(template, {id: "m 1"}) puts the value in, escaped.
// * The admin pages carry their CSRF token in their forms (<input name="csrf_token">,
//   Flask-WTF); every call from such a page sends it in the X-CSRFToken header.

import { _ } from "./i18n.js";

// ``template`` with every {name} (or url_for's %7Bname%7D) replaced by params.name,
// escaped as one part of a path.  A name params lacks is an error: a wrong address
// should not be asked.
export function fillUrl(template, params) {
  return template.replace(/\{(\w+)\}|%7B(\w+)%7D/gi, function (whole, plain, quoted) {
    const name = plain || quoted;
    if (!params || !Object.prototype.hasOwnProperty.call(params, name)) {
      throw new Error("no value for {" + name + "} in " + template);
    }
    return encodeURIComponent(String(params[name]));
  });
}

// ``url`` with a query string of ``params`` ({name: value}) added.
export function withQuery(url, params) {
  const query = new URLSearchParams(params).toString();
  if (!query) return url;
  return url + (url.indexOf("?") >= 0 ? "&" : "?") + query;
}

// The page's CSRF token ("" on pages without one: the public pages).
export function csrfToken() {
  const field = globalThis.document && document.querySelector("input[name=csrf_token]");
  return field ? field.value : "";
}

// The headers of a call: JSON answers, and the CSRF token when the page has one.
export function headers(extra) {
  const token = csrfToken();
  return Object.assign({ "Accept": "application/json" },
    token ? { "X-CSRFToken": token } : {}, extra || {});
}

// One call: {ok, status, data} (data: the JSON body, null when there is none).  Throws
// only when the server cannot be reached.  body: FormData, or an object sent as JSON.
export async function request(method, url, body, options) {
  const json = body !== undefined && body !== null && !(body instanceof FormData);
  const response = await fetch(url, Object.assign({
    method: method,
    body: json ? JSON.stringify(body) : body,
    headers: headers(json ? { "Content-Type": "application/json" } : null),
    credentials: "same-origin",
  }, options || {}));
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  return { ok: response.ok, status: response.status, data: data };
}

// What went wrong, in words: the answer's error.message, or "The server answered 500."
export function errorOf(data, status) {
  return data && data.error && data.error.message ? data.error.message
    : _("The server answered {status}.", { status: status });
}

// A call whose answer is the JSON body; an Error with the server's message (and .status)
// when it answers anything but 2xx.
export async function call(method, url, body) {
  const answer = await request(method, url, body);
  if (!answer.ok) {
    const error = new Error(errorOf(answer.data, answer.status));
    error.status = answer.status;
    throw error;
  }
  return answer.data;
}

// A picture for /predict (or a model's predict): the form it is sent as.
export function pictureForm(blob, name, fields) {
  const body = new FormData();
  body.append("image", blob, name);
  Object.keys(fields || {}).forEach(function (key) { body.append(key, String(fields[key])); });
  return body;
}

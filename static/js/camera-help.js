// Why a page has no camera, and what to do about it, in words (the kiosk and Teach).
//   const help = explain(error, "kiosk" | "teach");  // {code, reason, action}
//   show(element, help);   // the reason, then what to do, in that element
// `error` is what getUserMedia rejected with, or null when the browser offers no camera
// at all.  Browsers give a page the camera only in a secure context (https, or
// http://127.0.0.1 on the machine itself): over plain http from another machine
// navigator.mediaDevices does not even exist, so that case is named first.
import { _ } from "./i18n.js";

// secure: the page's context is secure (https, or 127.0.0.1).
export function reasonOf(error, secure) {
  if (!secure) return "insecure";
  if (!error) return "unsupported";
  switch (error.name) {
    case "NotAllowedError": case "PermissionDeniedError": case "SecurityError":
      return "denied";
    case "NotFoundError": case "DevicesNotFoundError": case "OverconstrainedError":
      return "missing";
    case "NotReadableError": case "TrackStartError": case "AbortError":
      return "busy";
    default:
      return "failed";
  }
}

export function explain(error, where, secure) {
  const code = reasonOf(error, secure === undefined ? globalThis.isSecureContext : secure);
  const teach = where === "teach";
  const reasons = {
    insecure: _("The browser gives this page no camera, because the page came over plain http from another computer."),
    unsupported: _("This browser cannot use a camera here."),
    denied: _("The camera is switched off for this page."),
    missing: _("There is no camera here."),
    busy: _("The camera is busy in another program, or it could not start."),
    failed: _("The camera could not start."),
  };
  const actions = teach ? {
    insecure: _("Start the server in classroom mode (CLASSROOM=1) and open its https address, or open this page on the server computer at http://127.0.0.1. Meanwhile, add pictures with Add files."),
    unsupported: _("Open this page in another browser, or add pictures with Add files."),
    denied: _("Allow the camera for this site in the browser (the icon next to the address), then reload the page; or add pictures with Add files."),
    missing: _("Connect a camera and reload the page, or add pictures with Add files."),
    busy: _("Close the other program that uses the camera and reload the page, or add pictures with Add files."),
    failed: _("Reload the page to try again, or add pictures with Add files."),
  } : {
    insecure: _("Open the https address shown on the classroom screen (scan its QR code), or choose a photo."),
    unsupported: _("Open this page in another browser, or choose a photo."),
    denied: _("Allow the camera for this site in the browser (the icon next to the address), then reload the page; or choose a photo."),
    missing: _("Connect a camera and reload the page, or choose a photo."),
    busy: _("Close the other program that uses the camera and reload the page, or choose a photo."),
    failed: _("Reload the page to try again, or choose a photo."),
  };
  return { code: code, reason: reasons[code], action: actions[code] };
}

export function show(element, help) {
  if (!element) return;
  const action = document.createElement("span");
  action.className = "camera-help-action";
  action.textContent = help.action;
  element.textContent = help.reason + " ";
  element.appendChild(action);
  element.dataset.cameraProblem = help.code;
}

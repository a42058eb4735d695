// The admin pages' forms that ask first: <form data-confirm="Delete …?"> is sent only
// when the question is answered OK (without JavaScript, it is sent at once).
export function confirmForms(root) {
  (root || document).querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

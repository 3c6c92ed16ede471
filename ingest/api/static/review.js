// Keyboard shortcuts on the item page: R / F / S press the REAL / FAKE / SKIP buttons.
(function () {
  "use strict";
  var form = document.getElementById("label-form");
  if (!form) { return; }
  var sent = false;
  document.addEventListener("keydown", function (ev) {
    if (sent || ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    var t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) { return; }
    var button = form.querySelector('button[data-key="' + ev.key.toLowerCase() + '"]');
    if (!button) { return; }
    ev.preventDefault();
    sent = true;  // one label per page: a held key must not label the next item twice
    form.requestSubmit(button);
  });
})();

// The console's only script: live overview numbers by short polling a JSON endpoint,
// and "select all" on the failed-events list. No inline scripts (the CSP forbids them).
"use strict";
(function () {
  var root = document.querySelector("[data-poll]");
  if (root) {
    var url = root.getAttribute("data-poll");
    var charts = document.querySelectorAll("img.chart[data-src]");
    var tick = function () {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          document.querySelectorAll("[data-k]").forEach(function (el) {
            var path = el.getAttribute("data-k").split(".");
            var v = data;
            path.forEach(function (p) { v = v == null ? null : v[p]; });
            el.textContent = v == null ? "-" : String(v);
          });
          charts.forEach(function (img) {
            var src = img.getAttribute("data-src");
            img.src = src + (src.indexOf("?") < 0 ? "?" : "&") + "t=" + Date.now();
          });
          root.setAttribute("data-updated", String(Date.now()));
        })
        .catch(function () {});
    };
    setInterval(tick, 2000);
  }
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
    });
  }
})();

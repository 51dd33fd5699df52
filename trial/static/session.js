// The idle warning (trial/websession.py): a minute before this page's session would end without
// activity (or reach its absolute lifetime), show the notice in #session-warning; "Stay signed in"
// posts to the keep-alive route, which counts as activity. The page says only the idle limit; the
// server tells how long is left (asking is no activity) when the page loads and again before
// warning: another tab may have kept the session alive. At the end, load the page again: the server
// sends it to the login page with the reason. No inline script: the Content-Security-Policy allows
// scripts from this site only.
(function () {
  "use strict";
  var box = document.getElementById("session-warning");
  if (!box) { return; }
  var url = box.getAttribute("data-alive");
  var token = document.querySelector("input[name=csrf_token]");  // the logout form's
  var warnBefore = Number(box.getAttribute("data-warn")) * 1000;
  var stay = box.querySelector("button");
  var idleText = box.querySelector("[data-why=idle]");
  var endText = box.querySelector("[data-why=absolute]");
  var timers = [];

  function clear() { timers.forEach(clearTimeout); timers = []; }

  function schedule(state) {
    clear();
    box.hidden = true;
    var idleLeft = state.idle_left * 1000;
    var absoluteLeft = state.absolute_left * 1000;
    var left = Math.min(idleLeft, absoluteLeft);
    timers.push(setTimeout(recheck, Math.max(0, left - warnBefore)));
    timers.push(setTimeout(function () { window.location.reload(); }, left + 1500));
  }

  function show(absolute) {
    idleText.hidden = absolute;
    endText.hidden = !absolute;
    stay.hidden = absolute;
    box.hidden = false;
    if (!absolute) { stay.focus(); }
  }

  function ask(method) {
    var headers = {"Accept": "application/json"};
    if (method === "POST" && token) { headers["X-CSRFToken"] = token.value; }
    return fetch(url, {method: method, credentials: "same-origin", headers: headers}).then(function (r) {
      if (!r.ok) { window.location.reload(); throw new Error("signed out"); }
      return r.json();
    });
  }

  function recheck() {
    ask("GET").then(function (state) {
      var left = Math.min(state.idle_left, state.absolute_left) * 1000;
      if (left > warnBefore + 2000) { schedule(state); } else { show(state.absolute_left <= state.idle_left); }
    }).catch(function () {});
  }

  stay.addEventListener("click", function () { ask("POST").then(schedule).catch(function () {}); });
  var idle = Number(box.getAttribute("data-idle"));
  schedule({idle_left: idle, absolute_left: idle});  // this page's request was activity
  ask("GET").then(schedule).catch(function () {});
}());

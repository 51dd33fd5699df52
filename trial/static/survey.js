/* The parent's survey page (templates/survey/page.html). Without this script the whole form is
   shown and posted as it is. With it: the answers are kept as a draft in this device's storage
   (under a key derived from the link, never the link itself; nothing is sent before "Send"),
   restored on the next visit with a notice and cleared after the answers were saved, on a page
   saying the link is unknown, answered, expired or revoked, and (on any survey page of this device)
   once the link's last moment has passed: a shared tablet keeps no family's answers; each answer
   is checked before sending; a "one question at a time" form steps through its questions. */
(function () {
  'use strict';
  var SENT = 'survey-sent';

  function draftKey(path) {
    if (!window.crypto || !crypto.subtle || !window.TextEncoder) return Promise.resolve(null);
    return crypto.subtle.digest('SHA-256', new TextEncoder().encode('survey-draft:' + path)).then(function (buf) {
      return PREFIX + Array.prototype.map.call(new Uint8Array(buf), function (b) {
        return ('0' + b.toString(16)).slice(-2);
      }).join('');
    }).catch(function () { return null; });
  }
  function store(kind) {
    try { var s = window[kind]; s.getItem('x'); return s; } catch (e) { return null; }
  }

  var PREFIX = 'survey-draft-';
  function purgeExpired() {  // every draft past its link's expiry (or of an older form without one) goes
    var ls = store('localStorage');
    if (!ls) return;
    var now = Date.now(), gone = [];
    for (var i = 0; i < ls.length; i++) {
      var k = ls.key(i);
      if (!k || k.indexOf(PREFIX) !== 0) continue;
      var d = null;
      try { d = JSON.parse(ls.getItem(k) || 'null'); } catch (e) { d = null; }
      if (!d || typeof d.expires !== 'number' || d.expires <= now) gone.push(k);
    }
    gone.forEach(function (k) { ls.removeItem(k); });
  }
  function forget() {  // a refusal that ends the link (unknown, answered, expired, revoked): its draft goes
    var ls = store('localStorage');
    if (!ls) return;
    draftKey(window.location.pathname).then(function (k) { if (k) ls.removeItem(k); });
  }

  function done() {  // the thank-you page: the draft of the answers just saved goes
    var ss = store('sessionStorage'), ls = store('localStorage');
    if (!ss) return;
    var key = ss.getItem(SENT);
    if (key && ls) ls.removeItem(key);
    ss.removeItem(SENT);
  }

  function fill(tpl, values) {
    return tpl.replace(/\{(\w+)\}/g, function (m, k) { return values[k] !== undefined ? values[k] : m; });
  }

  function setup(form) {
    var questions = Array.prototype.slice.call(form.querySelectorAll('.question'));
    var summary = document.getElementById('summary');
    var steps = form.getAttribute('data-layout') === 'one_question' && questions.length > 1 &&
      !form.querySelector('.question.invalid');
    var current = 0, key = null;
    var ls = store('localStorage'), ss = store('sessionStorage');

    function inputs(q) { return Array.prototype.slice.call(q.querySelectorAll('input, textarea')); }
    function valueOf(q) {
      var v = '';
      inputs(q).forEach(function (i) {
        if (i.type === 'radio') { if (i.checked) v = i.value; } else v = i.value.trim();
      });
      return v;
    }
    function label(q) {
      var l = q.querySelector('.label');
      var t = l.cloneNode(true), o = t.querySelector('.optional');
      if (o) t.removeChild(o);
      return t.textContent.trim();
    }
    function problem(q) {
      var v = valueOf(q), type = q.getAttribute('data-type');
      if (v === '') return q.getAttribute('data-required') ? form.getAttribute('data-msg-required') : '';
      if (type !== 'integer' && type !== 'number') return '';
      var n = Number(v.replace(',', '.'));
      if (!/^-?\d+([.,]\d+)?$/.test(v) || isNaN(n)) {
        return form.getAttribute(type === 'integer' ? 'data-msg-whole' : 'data-msg-number');
      }
      if (type === 'integer' && !/^-?\d+$/.test(v)) return form.getAttribute('data-msg-whole');
      var lo = q.getAttribute('data-min'), hi = q.getAttribute('data-max');
      var low = lo !== null && n < Number(lo), high = hi !== null && n > Number(hi);
      if (!low && !high) return '';
      if (lo !== null && hi !== null) return fill(form.getAttribute('data-msg-range'), {lo: lo, hi: hi});
      return low ? fill(form.getAttribute('data-msg-min'), {lo: lo}) : fill(form.getAttribute('data-msg-max'), {hi: hi});
    }
    function mark(q, message) {
      var k = q.id.slice(2), id = 'e-' + k, p = document.getElementById(id);
      var hint = document.getElementById('h-' + k);
      if (p) p.parentNode.removeChild(p);
      q.classList.toggle('invalid', !!message);
      var target = q.querySelector('fieldset') || q.querySelector('input, textarea');
      var described = (target.getAttribute('aria-describedby') || '').split(' ').filter(function (x) {
        return x && x !== id;
      });
      if (message) {
        p = document.createElement('p');
        p.className = 'error'; p.id = id; p.textContent = message;
        hint.parentNode.insertBefore(p, hint.nextSibling);
        described.push(id);
      }
      target.setAttribute('aria-describedby', described.join(' '));
      inputs(q).forEach(function (i) {
        if (i.type === 'radio') return;
        if (message) i.setAttribute('aria-invalid', 'true'); else i.removeAttribute('aria-invalid');
      });
    }
    function first(q) { return q.querySelector('input:checked') || q.querySelector('input, textarea'); }
    function showSummary(bad) {
      var ul = summary.querySelector('ul');
      ul.textContent = '';
      bad.forEach(function (b) {
        var li = document.createElement('li'), a = document.createElement('a');
        a.href = '#' + first(b.q).id;
        a.textContent = label(b.q) + ': ' + b.message;
        a.addEventListener('click', function (ev) {
          ev.preventDefault();
          if (steps) show(questions.indexOf(b.q));
          first(b.q).focus();
        });
        li.appendChild(a); ul.appendChild(li);
      });
      summary.hidden = false;
      summary.focus();
    }

    function show(i) {
      current = i;
      questions.forEach(function (q, n) { q.hidden = n !== i; });
      var progress = document.getElementById('progress');
      progress.textContent = fill(form.getAttribute('data-progress'), {n: i + 1, total: questions.length});
      progress.hidden = false;
      document.getElementById('back').hidden = i === 0;
      document.getElementById('next').hidden = i === questions.length - 1;
      document.getElementById('send').hidden = i !== questions.length - 1;
    }
    function next() {
      var q = questions[current], message = problem(q);
      mark(q, message);
      if (message) { first(q).focus(); return; }
      summary.hidden = true;
      show(current + 1);
      first(questions[current]).focus();
    }

    if (steps) {
      document.getElementById('steps').hidden = false;
      document.getElementById('next').addEventListener('click', next);
      document.getElementById('back').addEventListener('click', function () {
        show(current - 1);
        first(questions[current]).focus();
      });
      show(0);
    }

    form.addEventListener('submit', function (ev) {
      if (steps && current < questions.length - 1) { ev.preventDefault(); next(); return; }
      var bad = [];
      questions.forEach(function (q) {
        var message = problem(q);
        mark(q, message);
        if (message) bad.push({q: q, message: message});
      });
      if (bad.length) {
        ev.preventDefault();
        if (steps) show(questions.indexOf(bad[0].q));
        showSummary(bad);
        return;
      }
      if (key && ss) ss.setItem(SENT, key);
    });

    if (!summary.hidden) summary.focus();

    draftKey(form.getAttribute('data-token-path')).then(function (k) {
      key = k;
      if (!key || !ls) return;
      var saved = null;
      try { saved = JSON.parse(ls.getItem(key) || 'null'); } catch (e) { saved = null; }
      saved = saved && typeof saved === 'object' && typeof saved.values === 'object' ? saved.values : null;
      if (saved) {
        var restored = false;
        questions.forEach(function (q) {
          var name = 'v-' + q.id.slice(2), v = saved[name];
          if (typeof v !== 'string' || v === '' || valueOf(q) !== '') return;
          inputs(q).forEach(function (i) {
            if (i.type === 'radio') i.checked = i.value === v; else i.value = v;
          });
          restored = true;
        });
        if (restored) document.getElementById('draft-notice').hidden = false;
      }
      form.addEventListener('input', save);
      form.addEventListener('change', save);
    });
    function save() {
      var data = {};
      questions.forEach(function (q) { data['v-' + q.id.slice(2)] = valueOf(q); });
      var expires = Number(form.getAttribute('data-expires')) || Date.now();
      try {  // with the link's last moment: purged after it, whoever opens a survey page on this device
        ls.setItem(key, JSON.stringify({expires: expires, values: data}));
      } catch (e) { /* storage full or refused: no draft */ }
    }
  }

  document.addEventListener('DOMContentLoaded', function () {
    purgeExpired();
    if (document.getElementById('done')) done();
    var gone = document.getElementById('gone');
    if (gone && gone.getAttribute('data-forget-draft')) forget();
    var form = document.getElementById('survey');
    if (form) setup(form);
  });
})();

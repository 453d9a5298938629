// airlock reviewer console: live inbox (server-sent events), ticking ages, the session player.
// Pages work without it; it only keeps them current.
(function () {
  'use strict';

  function duration(ms) {
    if (ms < 0) ms = 0;
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + (s % 60) + 's';
    const h = Math.floor(m / 60);
    if (h < 48) return h + 'h ' + (m % 60) + 'm';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
  }

  function tick() {
    const now = Date.now();
    document.querySelectorAll('#inbox-rows tr').forEach(function (tr) {
      const created = Number(tr.dataset.created);
      const deadline = Number(tr.dataset.deadline);
      const age = tr.querySelector('.age');
      const left = tr.querySelector('.left');
      if (age) age.textContent = duration(now - created);
      if (left) {
        left.textContent = deadline > now ? duration(deadline - now) : 'due';
        left.classList.toggle('due', deadline <= now);
      }
    });
  }

  function recount() {
    const body = document.getElementById('inbox-rows');
    const n = body ? body.children.length : 0;
    const count = document.getElementById('pending-count');
    if (count) count.textContent = String(n);
    const empty = document.getElementById('inbox-empty');
    if (empty) empty.hidden = n > 0;
  }

  function rowFrom(html) {
    const t = document.createElement('tbody');
    t.innerHTML = html.trim();
    return t.firstElementChild;
  }

  // Keeps rows ordered oldest first.
  function place(body, tr) {
    const created = Number(tr.dataset.created);
    for (const other of body.children) {
      if (Number(other.dataset.created) > created) { body.insertBefore(tr, other); return; }
    }
    body.appendChild(tr);
  }

  function live() {
    const body = document.getElementById('inbox-rows');
    if (!body || !window.EventSource) return;
    const es = new EventSource('/events');
    es.addEventListener('reset', function (e) {
      body.innerHTML = e.data;
      recount(); tick();
      document.body.dataset.live = 'on';
    });
    es.addEventListener('upsert', function (e) {
      const msg = JSON.parse(e.data);
      const tr = rowFrom(msg.html);
      const old = document.getElementById('req-' + msg.id);
      if (old) { old.replaceWith(tr); } else { tr.classList.add('new'); place(body, tr); }
      recount(); tick();
    });
    es.addEventListener('remove', function (e) {
      const msg = JSON.parse(e.data);
      const old = document.getElementById('req-' + msg.id);
      if (old) old.remove();
      recount();
    });
    es.onerror = function () { document.body.dataset.live = 'reconnecting'; };
  }

  function player() {
    const el = document.getElementById('player');
    if (!el || !window.AsciinemaPlayer) return;
    window.consolePlayer = window.AsciinemaPlayer.create(el.dataset.cast, el, {
      fit: 'width', idleTimeLimit: 2, autoPlay: false, preload: true, theme: 'asciinema',
    });
    el.dataset.ready = 'yes';
  }

  document.addEventListener('DOMContentLoaded', function () {
    tick();
    if (document.getElementById('inbox-rows')) { setInterval(tick, 1000); live(); }
    player();
  });
})();

// Proveniq Core console: keys, countdowns, live refresh, claims. No framework, no build.
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  const page = document.body.dataset.page || "";
  const typing = (el) => el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));

  // --- times: countdowns and "4 min ago" stay true while the page is open ---
  function pad(n) { return String(n).padStart(2, "0"); }
  function hms(ms) {
    const s = Math.floor(Math.abs(ms) / 1000);
    return (ms < 0 ? "-" : "") + pad(Math.floor(s / 3600)) + ":" + pad(Math.floor(s / 60) % 60) + ":" + pad(s % 60);
  }
  function span(s) {
    s = Math.abs(s);
    if (s < 45) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 129600) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }
  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-countdown]").forEach((el) => {
      const left = Date.parse(el.dataset.countdown) - now;
      el.textContent = (el.dataset.prefix || "") + hms(left);
      el.classList.toggle("crit", left < 0 || left < Number(el.dataset.critical || 0));
    });
    document.querySelectorAll("time[data-ago]").forEach((el) => {
      const d = (now - Date.parse(el.getAttribute("datetime"))) / 1000;
      el.textContent = Math.abs(d) < 2 ? "just now" : d > 0 ? span(d) + " ago" : "in " + span(d);
    });
  }
  setInterval(tick, 1000);

  // --- copy an id with one click ---
  document.addEventListener("click", (e) => {
    const b = e.target.closest("[data-copy]");
    if (!b) return;
    navigator.clipboard?.writeText(b.dataset.copy).then(() => {
      const was = b.textContent; b.textContent = "copied"; setTimeout(() => (b.textContent = was), 1200);
    });
  });

  // --- live refresh: re-read the page and swap <main> unless someone is working in it ---
  const main = document.getElementById("main");
  const every = Number(main?.dataset.refresh || 0);
  if (every > 0) {
    setInterval(async () => {
      if (document.hidden || typing(document.activeElement) || main.querySelector("details[open]")) return;
      try {
        const r = await fetch(location.href, { headers: { "X-Console-Poll": "1" } });
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.getElementById("main");
        if (fresh) { main.innerHTML = fresh.innerHTML; tick(); }
      } catch (_) { /* offline a moment: try again next time */ }
    }, every * 1000);
  }

  // --- lists: j/k move, Enter opens ---
  function rows() { return Array.from(document.querySelectorAll("tr[data-href]")); }
  function move(d) {
    const all = rows(); if (!all.length) return;
    let i = all.findIndex((r) => r.classList.contains("selected"));
    i = Math.max(0, Math.min(all.length - 1, i < 0 ? 0 : i + d));
    all.forEach((r) => r.classList.remove("selected"));
    all[i].classList.add("selected"); all[i].scrollIntoView({ block: "nearest" });
  }

  // --- photos: click or z to zoom, click again for 200 % ---
  const zoom = document.getElementById("zoom");
  function openZoom(src, alt) {
    if (!zoom) return;
    const img = zoom.querySelector("img"); img.src = src; img.alt = alt || "";
    zoom.classList.remove("big"); zoom.showModal();
  }
  document.addEventListener("click", (e) => {
    const img = e.target.closest("img[data-zoom]");
    if (img) { openZoom(img.dataset.zoom, img.alt); return; }
    if (zoom && e.target.closest("#zoom img")) zoom.classList.toggle("big");
  });

  // --- the review item: claim kept while open, a/r arm, Enter confirms, Esc cancels ---
  const form = document.getElementById("decision");
  let submitting = false;
  if (page === "review" && form) {
    const id = form.dataset.review;
    const select = form.querySelector("select[name=reason]");
    const note = form.querySelector("input[name=note]");
    const decision = { value: "" };
    const state = form.querySelector(".armed");
    function arm(what) {
      form.dataset.armed = what; decision.value = what;
      Array.from(select.options).forEach((o) => { o.hidden = o.dataset.decision !== what; });
      const preferred = select.querySelector(`option[data-decision="${what}"][data-default]`);
      if (select.selectedOptions[0]?.dataset.decision !== what && preferred) select.value = preferred.value;
      note.required = what === "reject";
      state.textContent = what === "approve" ? "Approve: Enter to confirm, Esc to cancel"
        : "Reject: a note is required; Enter to confirm, Esc to cancel";
      (what === "reject" ? note : select).focus();
    }
    function disarm() {
      delete form.dataset.armed; decision.value = ""; state.textContent = "";
      document.activeElement?.blur();
    }
    function confirmDecision() {
      if (!decision.value) return;
      if (decision.value === "reject" && !note.value.trim()) { note.focus(); note.reportValidity(); return; }
      submitting = true; form.requestSubmit(form.querySelector(`button[data-arm="${decision.value}"]`));
    }
    form.addEventListener("submit", () => { submitting = true; });
    form.querySelectorAll("button[data-arm]").forEach((b) => b.addEventListener("click", (e) => {
      if (form.dataset.armed !== b.dataset.arm) { e.preventDefault(); arm(b.dataset.arm); }
    }));
    form.addEventListener("keydown", (e) => {
      if (e.target === select && (e.key === "a" || e.key === "r")) {
        e.preventDefault(); arm(e.key === "a" ? "approve" : "reject"); return;
      }
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); confirmDecision(); }
      if (e.key === "Escape") { e.preventDefault(); disarm(); }
    });
    if (form.dataset.mine === "true") {
      const post = (what, keepalive) => fetch(`/console/reviews/${id}/${what}`,
        { method: "POST", headers: { "X-CSRF-Token": csrf() }, keepalive: !!keepalive });
      // The lease is 15 minutes: renew it every 5 while the page is open.
      setInterval(async () => {
        const r = await post("claim");
        if (r.ok) { const body = await r.json(); document.querySelectorAll("[data-claim]").forEach((el) => (el.dataset.countdown = body.claimedUntil)); }
      }, 5 * 60 * 1000);
      window.addEventListener("pagehide", () => { if (!submitting) post("release", true); });
    }
    window.reviewKeys = { arm, disarm, confirmDecision };
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const help = document.getElementById("keys");
    if (e.key === "Escape" && zoom?.open) { zoom.close(); e.preventDefault(); return; }
    if (typing(e.target)) return;
    if (e.key === "?") { e.preventDefault(); help?.open ? help.close() : help?.showModal(); return; }
    if (help?.open) return;
    if (page === "review" && form) {
      const k = window.reviewKeys;
      if (e.key === "a" && !form.dataset.locked) { e.preventDefault(); k.arm("approve"); }
      else if (e.key === "r" && !form.dataset.locked) { e.preventDefault(); k.arm("reject"); }
      else if (e.key === "Enter" && form.dataset.armed) { e.preventDefault(); k.confirmDecision(); }
      else if (e.key === "Escape") {
        e.preventDefault();
        if (form.dataset.armed) k.disarm(); else location.href = "/console/reviews";
      }
    }
    if (page === "review") {
      const nav = (rel) => document.querySelector(`a[rel="${rel}"]`)?.click();
      if (e.key === "j") { e.preventDefault(); nav("next"); }
      else if (e.key === "k") { e.preventDefault(); nav("prev"); }
      else if (e.key === "z") { const img = document.querySelector("img[data-zoom]"); if (img) openZoom(img.dataset.zoom, img.alt); }
      return;
    }
    if (rows().length) {
      if (e.key === "j") { e.preventDefault(); move(1); }
      else if (e.key === "k") { e.preventDefault(); move(-1); }
      else if (e.key === "Enter") {
        const sel = document.querySelector("tr.selected[data-href]");
        if (sel) { e.preventDefault(); location.href = sel.dataset.href; }
      }
    }
  });
  tick();
})();

// rh_agents run viewer: live updates and filtering on top of pages rendered by the server.
// Every value that comes from a run is set with textContent (or an attribute), never parsed
// as HTML: an actor error holding "<script>" shows as text. And it goes through shown() first,
// as the server's pages show it (pages.esc).
"use strict";

(function () {
  const body = document.body;

  // As the server's pages show them (pages.esc): control characters (but tab and line breaks)
  // and lone surrogates as "?"; C1 controls and the bidirectional embeddings, overrides and
  // isolates as U+FFFD, as the terminal displays show them (core/safe_text.py): a name holding
  // U+202E showed the rest of its line reversed, so what was shown was not what ran.
  const UNSAFE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\ud800-\udfff]/gu;

  function shown(value) {
    return String(value).replace(UNSAFE, (c) =>
      (c >= "\u0080" && c <= "\u009f") || (c >= "\u202a" && c <= "\u2069") ? "\ufffd" : "?");
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return seconds.toFixed(2) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.floor(seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function fmtTime(timestamp) {
    if (timestamp === undefined) return "";
    // null: the server's JSON for a NaN; an Invalid Date: a time out of range (1e20). Both
    // come from a damaged store, and the server's page shows them as "?" too.
    const d = new Date(timestamp === null ? NaN : timestamp * 1000);
    if (isNaN(d.getTime())) return "?";
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function countsText(counts, running) {
    const keys = Object.keys(counts || {}).sort((a, b) =>
      (a !== "completed") - (b !== "completed") || (a < b ? -1 : a > b ? 1 : 0));
    const parts = keys.map((k) => counts[k] + " " + shown(k));
    if (running) parts.push(running + " running");
    return parts.length ? parts.join(" · ") : "no events yet";
  }

  function groupCountsText(g) {
    const known = g.total_known !== false;
    const parts = [g.total ? g.done + " of " + (known ? "" : "at least ") + g.total + " done"
      : (g.done || 0) + " done"];
    const reached = Boolean(g.quorum_reached);
    if (reached) parts.unshift("quorum of " + g.quorum + " reached");
    else if (g.quorum !== undefined && g.quorum !== null &&
      ["partial", "failed", "timed_out"].includes(g.status)) {
      parts.unshift("quorum of " + g.quorum + " not reached");
    }
    parts.push((g.succeeded || 0) + " ok");
    if (g.failed) parts.push(g.failed + " failed");
    for (const key of ["cancelled", "skipped", "missing"]) {
      if (!g[key]) continue;
      let label = key === "missing" ? "no checkpoint" : key;
      if (key === "cancelled" && reached) label = "cancelled (not needed)";
      parts.push(g[key] + " " + label);
    }
    return parts.join(" · ");
  }

  // A group that reached its quorum did what was asked: its badge says so (its status stays
  // "partial", the members it cancelled were not needed).
  function groupStatusText(g) {
    return g.quorum_reached ? "quorum reached" : g.status;
  }

  function metricsText(g) {
    const m = g.metrics;
    if (!m) return null;
    const parts = [];
    const run = m.run_time || {};
    if (run.count) {
      parts.push("run p50 " + fmtDuration(run.p50) + " · p95 " + fmtDuration(run.p95) +
        " · max " + fmtDuration(run.max));
    }
    const wait = m.queue_wait || {};
    if (wait.count) parts.push("wait p50 " + fmtDuration(wait.p50) + " · p95 " + fmtDuration(wait.p95));
    if (m.wall_time !== undefined && m.wall_time !== null) parts.push("wall " + fmtDuration(m.wall_time));
    if (m.concurrency_high_water !== undefined) {
      parts.push("peak " + m.concurrency_high_water + " of " + m.max_workers + " workers");
    }
    if (m.throughput) parts.push(m.throughput.toFixed(1) + " members/s");
    if (m.efficiency !== undefined && m.efficiency !== null) {
      parts.push("efficiency " + Math.round(m.efficiency * 100) + "%");
    }
    if (m.retries) parts.push(m.retries + (m.retries === 1 ? " retry" : " retries"));
    let text = parts.length ? parts.join(" · ") : "no member finished yet";
    if (g.metrics_source === "checkpoints") text += " (from checkpoints: durations only, no queue waits)";
    else if (g.metrics_source === "so far") text = "so far: " + text;
    return text;
  }

  function setStatus(el, status) {
    if (!el) return;
    for (const cls of Array.from(el.classList)) if (cls.startsWith("s-")) el.classList.remove(cls);
    el.classList.add("s-" + String(status).replace(/[^A-Za-z0-9_-]/g, "_"));
    el.textContent = shown(status);
  }

  function span(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    if (text) el.textContent = text;
    return el;
  }

  // --- the runs list ------------------------------------------------------------------------

  function runsPage() {
    const input = document.getElementById("filter");
    const select = document.getElementById("status-filter");
    const tbody = document.querySelector("#runs tbody");
    const empty = document.getElementById("empty");

    function apply() {
      const needle = (input.value || "").trim().toLowerCase();
      const status = select.value;
      let visible = 0;
      for (const row of tbody.rows) {
        const id = (row.dataset.runId || "").toLowerCase();
        const st = row.dataset.status || "";
        const ok = (!status || st === status) && (!needle || id.includes(needle) || st.includes(needle));
        row.classList.toggle("hidden", !ok);
        if (ok) visible += 1;
      }
      empty.classList.toggle("shown", visible === 0);
    }

    function row(run) {
      const tr = document.createElement("tr");
      tr.dataset.runId = shown(run.run_id);
      tr.dataset.status = shown(run.status);
      const id = document.createElement("td");
      id.className = "id";
      const link = document.createElement("a");
      link.href = "/runs/" + encodeURIComponent(run.run_id);
      link.textContent = shown(run.run_id);
      id.appendChild(link);
      if (run.live) id.appendChild(span("live", "live"));
      const status = document.createElement("td");
      const badge = span("status", "");
      setStatus(badge, run.status);
      status.appendChild(badge);
      const cells = [["when", fmtTime(run.created)], ["duration", fmtDuration(run.duration)],
        ["events", String(run.events || 0)], ["counts", countsText(run.counts, run.running)]];
      tr.append(id, status);
      for (const [cls, text] of cells) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    }

    async function refresh() {
      if (document.visibilityState !== "visible") return;
      try {
        const response = await fetch("/api/runs", { headers: { Accept: "application/json" } });
        if (!response.ok) return;
        const data = await response.json();
        tbody.replaceChildren(...data.runs.map(row));
        apply();
      } catch (e) {
        // the viewer stopped: keep what is shown
      }
    }

    input.addEventListener("input", apply);
    select.addEventListener("change", apply);
    apply();
    setInterval(refresh, 3000);
  }

  // --- a run --------------------------------------------------------------------------------

  function runPage() {
    const runId = body.dataset.runId;
    const memberLimit = Number(body.dataset.memberLimit || 0);
    const items = new Map();
    for (const li of document.querySelectorAll("li.item[data-address]")) items.set(li.dataset.address, li);
    const follow = document.getElementById("follow-state");
    const stale = new Set();
    const reloaded = new Map();

    function parentOf(address, kind) {
      if (kind === "member") {
        const m = /^(.*)\[\d+\]$/.exec(address);
        return m ? m[1] : null;
      }
      const at = address.lastIndexOf("::");
      return at < 0 ? null : address.slice(0, at);
    }

    function kindOfParent(childKind, parent) {
      if (childKind === "member") return "group";
      return /\[\d+\]$/.test(parent) ? "member" : "event";
    }

    function labelOf(address, kind) {
      if (kind === "member") {
        const m = /\[(\d+)\]$/.exec(address);
        return m ? "[" + m[1] + "]" : address;
      }
      const at = address.lastIndexOf("::");
      return at < 0 ? address : address.slice(at + 2);
    }

    function childList(li) {
      return li.querySelector(":scope > details > ul.children, :scope > details > div.body > ul.children");
    }

    // address: as the run has it (for links); on the page, and as the key of items, as
    // shown() shows it (the server's page has it so in data-address).
    function createItem(address, kind, label) {
      const li = document.createElement("li");
      li.className = "item " + kind;
      li.dataset.address = shown(address);
      label = shown(label);
      li.dataset.kind = kind;
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.className = "row";
      details.appendChild(summary);
      const children = document.createElement("ul");
      children.className = "children";
      if (kind === "group") {
        details.className = "group";
        const progress = document.createElement("progress");
        progress.max = 1;
        progress.value = 0;
        summary.append(span("name", label), span("kind", "group"), span("status s-running", "running"),
          span("counts", ""), progress);
        const inner = document.createElement("div");
        inner.className = "body";
        const metrics = document.createElement("p");
        metrics.className = "metrics";
        const timeline = document.createElement("div");
        timeline.className = "timeline";
        const href = "/runs/" + encodeURIComponent(runId) + "/timeline?group=" + encodeURIComponent(address);
        const link = document.createElement("a");
        link.className = "open-timeline";
        link.href = href;
        link.textContent = "Timeline of its members";
        const frame = document.createElement("iframe");
        frame.loading = "lazy";
        frame.title = "Timeline of " + shown(address);
        frame.src = href;
        timeline.append(link, frame);
        inner.append(metrics, timeline, children);
        details.appendChild(inner);
      } else {
        summary.append(span("name", label));
        if (kind === "member") summary.appendChild(span("actor", ""));
        summary.append(span("status s-unknown", "no checkpoint"), span("attempts", ""),
          span("duration", ""), span("error", ""), span("result", ""));
        details.appendChild(children);
      }
      li.appendChild(details);
      return li;
    }

    function indexOf(li) {
      const m = /\[(\d+)\]$/.exec(li.dataset.address || "");
      return m ? Number(m[1]) : -1;
    }

    function ensureItem(address, kind, parent, label) {
      const found = items.get(shown(address));
      if (found) return found;
      let list = document.getElementById("tree");
      if (parent) {
        const parentKind = kindOfParent(kind, parent);
        const parentLi = ensureItem(parent, parentKind, parentOf(parent, parentKind), labelOf(parent, parentKind));
        if (!parentLi) return null;
        list = childList(parentLi);
        if (kind === "member" && memberLimit && list.querySelectorAll(":scope > li.member").length >= memberLimit) {
          return null; // the page lists the first members only (see "list every member")
        }
      }
      const none = list.querySelector(":scope > li.none");
      if (none) none.remove();
      const li = createItem(address, kind, label || labelOf(address, kind));
      if (kind === "member") {
        const index = indexOf(li);
        const after = Array.from(list.children).find((other) => indexOf(other) > index);
        list.insertBefore(li, after || null);
      } else {
        list.appendChild(li);
      }
      items.set(li.dataset.address, li);
      return li;
    }

    function markStale(li) {
      for (let group = li.closest("li.group"); group; group = group.parentElement.closest("li.group")) {
        stale.add(group);
      }
    }

    function updateGroup(g) {
      const li = ensureItem(g.group_id, "group", g.parent, g.name);
      if (!li) return;
      const summary = li.querySelector(":scope > details > summary");
      setStatus(summary.querySelector(".status"), groupStatusText(g));
      summary.querySelector(".counts").textContent = groupCountsText(g);
      const progress = summary.querySelector("progress");
      progress.max = Math.max(g.total || 0, g.done || 0, 1);
      progress.value = g.done || 0;
      const text = metricsText(g);
      if (text !== null) li.querySelector(":scope > details > div.body > p.metrics").textContent = text;
      li.className = "item group s-" + String(g.status).replace(/[^A-Za-z0-9_-]/g, "_");
      markStale(li);
    }

    function updateNode(n) {
      const li = ensureItem(n.address, n.kind, n.parent, null);
      if (!li) return;
      const summary = li.querySelector(":scope > details > summary");
      if (n.kind === "member") {
        const m = /\[(\d+)\]$/.exec(n.address);
        summary.querySelector(".name").textContent = "[" + (m ? m[1] : "?") + "]" + (n.name ? " " + shown(n.name) : "");
        const actor = summary.querySelector(".actor");
        if (actor && n.actor) actor.textContent = shown(n.actor);
      }
      setStatus(summary.querySelector(".status"), n.status);
      summary.querySelector(".attempts").textContent = n.attempts > 1 ? n.attempts + " attempts" : "";
      summary.querySelector(".duration").textContent = fmtDuration(n.duration);
      const error = summary.querySelector(".error");
      const full = shown(n.error || "");
      error.textContent = full.length > 300 ? full.slice(0, 300) + "…" : full;
      // The tooltip holds at most 10,000 characters, as the server's page does (pages.py).
      if (full) error.title = full.length > 10000 ? full.slice(0, 10000) + "…" : full;
      else error.removeAttribute("title");
      summary.querySelector(".result").textContent = n.result ? shown(n.result) : "";
      li.className = "item " + n.kind + " s-" + String(n.status).replace(/[^A-Za-z0-9_-]/g, "_");
      markStale(li);
    }

    function updateRun(run) {
      setStatus(document.getElementById("run-status"), run.status);
      body.dataset.status = run.status;
      document.getElementById("run-duration").textContent = fmtDuration(run.duration);
      document.getElementById("run-events").textContent = String(run.events || 0);
      document.getElementById("run-counts").textContent = countsText(run.counts, run.running);
    }

    // Open timelines of groups that changed are reloaded, at most every 1.5 s each: the new
    // page loads in a hidden frame, which then takes the old one's place and scroll position
    // (no blank frame while it loads).
    function reloadTimelines(force) {
      const now = Date.now();
      for (const li of Array.from(stale)) {
        const details = li.querySelector(":scope > details");
        const box = li.querySelector(":scope > details > div.body > div.timeline");
        const frame = box && box.querySelector("iframe:not(.loading)");
        if (!frame || !details.open) continue;
        if (box.querySelector("iframe.loading")) continue; // one reload at a time
        if (!force && now - (reloaded.get(box) || 0) < 1500) continue;
        stale.delete(li);
        reloaded.set(box, now);
        const next = document.createElement("iframe");
        next.className = "loading";
        next.title = frame.title;
        const url = new URL(frame.src, location.href);
        url.searchParams.set("at", String(now));
        next.addEventListener("load", () => {
          let x = 0, y = 0;
          try { x = frame.contentWindow.scrollX; y = frame.contentWindow.scrollY; } catch (e) { /* gone */ }
          next.style.height = frame.style.height;
          frame.remove();
          next.classList.remove("loading");
          try { next.contentWindow.scrollTo(x, y); } catch (e) { /* gone */ }
        }, { once: true });
        next.src = url.pathname + url.search;
        box.appendChild(next);
      }
    }

    function apply(data) {
      if (data.run) updateRun(data.run);
      for (const g of data.groups || []) updateGroup(g);
      for (const n of data.nodes || []) updateNode(n);
    }

    if (body.dataset.status !== "running" || typeof EventSource === "undefined") return;
    const cursor = body.dataset.cursor || "0";
    const source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/events?cursor=" +
      encodeURIComponent(cursor));
    follow.textContent = "(following)";
    source.addEventListener("update", (e) => {
      apply(JSON.parse(e.data));
      follow.textContent = "(following)";
    });
    source.addEventListener("end", (e) => {
      apply(JSON.parse(e.data));
      source.close();
      follow.textContent = "(the run is over)";
      reloadTimelines(true);
    });
    source.addEventListener("reset", () => {
      source.close();
      location.reload();
    });
    source.addEventListener("problem", (e) => {
      follow.textContent = "(" + shown(JSON.parse(e.data).error) + ")";
    });
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) follow.textContent = "(connection lost: retrying)";
    };
    setInterval(() => reloadTimelines(false), 500);
    document.addEventListener("toggle", () => reloadTimelines(false), true);
  }

  if (body.dataset.page === "runs") runsPage();
  else if (body.dataset.page === "run") runPage();
})();

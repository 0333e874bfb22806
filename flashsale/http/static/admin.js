// The live sale page (admin.html): polls the admin JSON routes and GET /metrics every second
// with the admin token and shows each sale's numbers; pauses, resumes and closes sales.
//
// The token lives in this tab's sessionStorage and travels only as "Authorization: Bearer":
// never in a cookie (so another site cannot make the browser send it) nor in a URL.
// Every number is written with textContent, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "flashsale.adminToken";
  const POLL_MS = 1000;
  const TIMEOUT_MS = 4000; // a request unanswered this long counts as the service unreachable
  const WINDOW_MS = 10000; // the buy figures are over the polls of the last ten seconds
  const MAX_LIVE = 12; // sales watched in detail (each is one more request a second)
  const BUY_ROUTE = "/v1/sales/{sale_id}/buy";
  // where a sale stands, the live ones first
  const STATUS_ORDER = { open: 0, paused: 1, sold_out: 2, scheduled: 3 };

  const $ = (id) => document.getElementById(id);
  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat("en-US", {
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  });

  // --- the service ---------------------------------------------------------------------------

  class Failure extends Error {
    // status 0: no answer at all (network, timeout); otherwise the HTTP status and error code
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function request(method, path, accept) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: {
          Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`,
          Accept: accept,
        },
        credentials: "omit",
        cache: "no-store",
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (exc) {
      const why = exc && exc.name === "TimeoutError" ? `no answer within ${TIMEOUT_MS / 1000} s` : "no connection";
      throw new Failure(0, "unreachable", why);
    }
    if (response.ok) return response;
    let code = `http_${response.status}`;
    let message = response.statusText;
    try {
      const body = await response.json();
      code = body.error || code;
      message = body.message || message;
    } catch {
      // not our JSON error (a proxy's page): the status says it
    }
    throw new Failure(response.status, code, message);
  }

  const getJson = async (path) => (await request("GET", path, "application/json")).json();
  const post = async (path) => (await request("POST", path, "application/json")).json();
  const getText = async (path) => (await request("GET", path, "text/plain")).text();

  // --- Prometheus text format ------------------------------------------------------------------

  const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/y;

  function parseValue(text) {
    if (text === "+Inf" || text === "Inf") return Infinity;
    if (text === "-Inf") return -Infinity;
    return Number(text);
  }

  function unescapeLabel(text) {
    return text.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }

  // [{name, labels, value}] of every sample; comments and malformed lines skipped
  function parseMetrics(text) {
    const samples = [];
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        LABEL.lastIndex = 0;
        let found;
        while (LABEL.lastIndex < m[2].length && (found = LABEL.exec(m[2]))) {
          labels[found[1]] = unescapeLabel(found[2]);
        }
      }
      samples.push({ name: m[1], labels, value: parseValue(m[3]) });
    }
    return samples;
  }

  const matches = (sample, name, labels) =>
    sample.name === name && Object.entries(labels).every(([k, v]) => sample.labels[k] === v);

  // the sum of the samples named `name` whose labels include `labels`; null when there is none
  function total(samples, name, labels = {}) {
    let sum = null;
    for (const s of samples) if (matches(s, name, labels)) sum = (sum || 0) + s.value;
    return sum;
  }

  // {label value: sum} over the samples named `name`, by one label
  function byLabel(samples, name, label, labels = {}) {
    const sums = {};
    for (const s of samples) {
      if (!matches(s, name, labels) || !(label in s.labels)) continue;
      const key = s.labels[label];
      sums[key] = (sums[key] || 0) + s.value;
    }
    return sums;
  }

  // What a counter grew from `base` to `now`; a count that went down means the service
  // restarted (counters start again from 0), so all of `now` is new.
  const grown = (now, base) => (now >= base ? now - base : now);

  // The q-quantile of a histogram's observations between two scrapes, as Prometheus's
  // histogram_quantile reckons it: linear within the bucket that holds it.
  function quantile(q, nowBuckets, baseBuckets) {
    const les = Object.keys(nowBuckets)
      .map((key) => [parseValue(key), key])
      .sort((a, b) => a[0] - b[0]);
    if (!les.length || les[les.length - 1][0] !== Infinity) return null;
    const inf = les[les.length - 1][1];
    const reset = nowBuckets[inf] < (baseBuckets[inf] || 0);
    const bounds = les.map(([le]) => le);
    const counts = les.map(([, key]) => nowBuckets[key] - (reset ? 0 : baseBuckets[key] || 0));
    const all = counts[counts.length - 1];
    if (!(all > 0)) return null;
    const rank = q * all;
    let lower = 0;
    let below = 0;
    for (let i = 0; i < bounds.length; i++) {
      if (counts[i] >= rank) {
        if (bounds[i] === Infinity) return { above: lower };
        return { value: lower + ((bounds[i] - lower) * (rank - below)) / (counts[i] - below) };
      }
      lower = bounds[i];
      below = counts[i];
    }
    return null;
  }

  // --- formatting ------------------------------------------------------------------------------

  const DASH = "—";
  const count = (n) => (typeof n === "number" && Number.isFinite(n) ? integer.format(n) : DASH);
  const rate = (n) => (n === null || !Number.isFinite(n) ? DASH : `${decimal.format(n)}/s`);

  function seconds(s) {
    if (s === null || !Number.isFinite(s)) return DASH;
    if (s < 1) return `${decimal.format(s * 1000)} ms`;
    return `${decimal.format(s)} s`;
  }

  function latency(found) {
    if (!found) return DASH;
    if ("above" in found) return `> ${seconds(found.above)}`;
    return seconds(found.value);
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleString() : DASH);
  const clock = (ms) => new Date(ms).toLocaleTimeString();

  function field(root, name, text) {
    const el = root.querySelector(`[data-field="${name}"]`);
    if (el && el.textContent !== text) el.textContent = text;
    return el;
  }

  // --- state -----------------------------------------------------------------------------------

  let session = 0; // a sign-in's number: answers that arrive after a sign-out are dropped
  let timer = 0;
  let polling = false;
  let again = false;
  let lastGood = 0;
  const scrapes = []; // [{at, samples}] of the last WINDOW_MS
  const paces = new Map(); // sale id -> [{at, sold}] of the last WINDOW_MS
  const cards = new Map(); // sale id -> its <article>
  const shown = new Map(); // sale id -> the numbers its card shows (for the confirm dialogs)

  function signedIn() {
    return Boolean(sessionStorage.getItem(TOKEN_KEY));
  }

  function showSignIn(message) {
    session += 1;
    clearTimeout(timer);
    sessionStorage.removeItem(TOKEN_KEY);
    scrapes.length = 0;
    paces.clear();
    for (const card of cards.values()) card.remove();
    cards.clear();
    shown.clear();
    $("live").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-message").textContent = message || "";
    setConnection("", false);
    $("token").focus();
  }

  function showLive() {
    session += 1;
    $("sign-in").hidden = true;
    $("sign-in-message").textContent = "";
    $("live").hidden = false;
    $("sign-out").hidden = false;
    $("flash").textContent = "";
    setConnection("Signing in…", false);
    schedule(0);
  }

  function setConnection(text, bad) {
    const el = $("connection");
    el.textContent = text;
    el.classList.toggle("bad", bad);
    $("live").classList.toggle("stale", bad);
  }

  function schedule(delay_ms) {
    clearTimeout(timer);
    timer = setTimeout(tick, delay_ms);
  }

  async function tick() {
    if (polling) {
      again = true; // one more right after the poll under way
      return;
    }
    polling = true;
    again = false;
    const mine = session;
    const started = performance.now();
    try {
      await poll(mine);
    } catch (exc) {
      if (mine === session) failed(exc);
    } finally {
      polling = false;
      if (mine === session && signedIn()) {
        schedule(again ? 0 : Math.max(0, POLL_MS - (performance.now() - started)));
      }
    }
  }

  function failed(exc) {
    if (!(exc instanceof Failure)) {
      console.error(exc);
      setConnection(`This page failed: ${exc}. Retrying every second.`, true);
      return;
    }
    if (exc.status === 401) {
      showSignIn(
        "The service refused this admin token (401 unauthorized): check FLASHSALE_ADMIN_TOKEN " +
          "and sign in again.",
      );
      return;
    }
    const since = lastGood ? ` The numbers shown are from ${clock(lastGood)}.` : "";
    let text;
    if (exc.status === 0) {
      text = `Cannot reach the service (${exc.message}).`;
    } else if (exc.status === 503) {
      text = `The service answers, but Redis or PostgreSQL is unavailable (503 ${exc.code}: ${exc.message}).`;
    } else {
      text = `The service answered ${exc.status} ${exc.code}: ${exc.message}.`;
    }
    setConnection(`${text} Retrying every second.${since}`, true);
  }

  // --- one poll --------------------------------------------------------------------------------

  async function poll(mine) {
    const [listed, metrics] = await Promise.allSettled([getJson("v1/admin/sales"), getText("metrics")]);
    if (mine !== session) return;
    if (listed.status === "rejected") throw listed.reason;
    const now = Date.now();
    const sales = listed.value.sales || [];
    const live = sales
      .filter((s) => s.status !== "ended")
      .sort((a, b) => (STATUS_ORDER[a.status] ?? 9) - (STATUS_ORDER[b.status] ?? 9) ||
        Date.parse(a.starts_at) - Date.parse(b.starts_at))
      .slice(0, MAX_LIVE);
    const stats = await Promise.allSettled(
      live.map((s) => getJson(`v1/admin/sales/${encodeURIComponent(s.sale_id)}/stats`)),
    );
    if (mine !== session) return;
    for (const result of stats) {
      if (result.status === "rejected" && result.reason.status !== 404) throw result.reason;
    }
    lastGood = now;
    setConnection(`Updated ${clock(now)}, every second.`, false);
    const samples = metricsSamples(metrics, now);
    showService(samples);
    showSales(live, stats, samples, now);
    showEnded(sales.filter((s) => s.status === "ended"));
    const hidden = sales.filter((s) => s.status !== "ended").length - live.length;
    $("more-sales").hidden = hidden <= 0;
    $("more-sales").textContent = `${hidden} more sale(s) not ended, not shown here: flashsale sales list shows them all.`;
    $("no-sales").hidden = sales.length > 0;
  }

  // this scrape's samples (kept for the window), or null when /metrics gave none
  function metricsSamples(result, now) {
    const note = $("live").querySelector('[data-field="metrics-note"]');
    if (result.status === "rejected") {
      const exc = result.reason;
      if (exc.status === 401) throw exc;
      note.textContent =
        exc.status === 404
          ? "This service keeps no metrics (FLASHSALE_METRICS=0): no buy figures nor writer lag."
          : `Metrics not read (${exc.status ? `${exc.status} ${exc.code}` : exc.message}).`;
      scrapes.length = 0;
      return null;
    }
    note.textContent = "";
    const samples = parseMetrics(result.value);
    scrapes.push({ at: now, samples });
    while (scrapes.length > 2 && now - scrapes[1].at >= WINDOW_MS) scrapes.shift();
    return samples;
  }

  function showService(samples) {
    const root = $("live").querySelector(".service");
    const base = scrapes.length > 1 ? scrapes[0] : null;
    const span_s = base ? (scrapes[scrapes.length - 1].at - base.at) / 1000 : 0;
    let buyRate = null;
    let errors = null;
    let p50 = null;
    let p99 = null;
    const outcomes = [];
    if (samples && base) {
      const route = { method: "POST", route: BUY_ROUTE };
      const nowByStatus = byLabel(samples, "flashsale_http_requests_total", "status", route);
      const baseByStatus = byLabel(base.samples, "flashsale_http_requests_total", "status", route);
      let all = 0;
      let failures = 0;
      for (const [status, n] of Object.entries(nowByStatus)) {
        const d = grown(n, baseByStatus[status] || 0);
        all += d;
        if (status.startsWith("5")) failures += d;
      }
      if (Object.keys(nowByStatus).length) {
        buyRate = all / span_s;
        errors = all ? `${decimal.format((100 * failures) / all)}%` : "0%";
      }
      const bucket = "flashsale_http_request_duration_seconds_bucket";
      const nowBuckets = byLabel(samples, bucket, "le", route);
      const baseBuckets = byLabel(base.samples, bucket, "le", route);
      p50 = quantile(0.5, nowBuckets, baseBuckets);
      p99 = quantile(0.99, nowBuckets, baseBuckets);
      const nowOutcomes = byLabel(samples, "flashsale_buys_total", "outcome");
      const baseOutcomes = byLabel(base.samples, "flashsale_buys_total", "outcome");
      for (const [outcome, n] of Object.entries(nowOutcomes)) {
        const d = grown(n, baseOutcomes[outcome] || 0);
        if (d > 0) outcomes.push([outcome, d / span_s]);
      }
      outcomes.sort((a, b) => b[1] - a[1]);
    }
    field(root, "buy-rate", rate(buyRate));
    field(root, "buy-p50", latency(p50));
    field(root, "buy-p99", latency(p99));
    field(root, "buy-errors", errors === null ? DASH : errors);
    field(root, "buy-outcomes", outcomes.map(([o, r]) => `${o} ${rate(r)}`).join(" · "));
    for (const [name, metric] of [["redis-up", "flashsale_redis_up"], ["postgres-up", "flashsale_postgres_up"]]) {
      const up = samples ? total(samples, metric) : null;
      const el = field(root, name, up === null ? DASH : up ? "up" : "down");
      el.classList.toggle("problem", up === 0);
    }
  }

  function showSales(live, stats, samples, now) {
    const container = $("sales");
    const keep = new Set(live.map((s) => s.sale_id));
    for (const [saleId, card] of cards) {
      if (!keep.has(saleId)) {
        card.remove();
        cards.delete(saleId);
        shown.delete(saleId);
        paces.delete(saleId);
      }
    }
    live.forEach((listed, i) => {
      const result = stats[i];
      const sale = result.status === "fulfilled" ? { ...listed, ...result.value.stats } : listed;
      let card = cards.get(sale.sale_id);
      if (!card) {
        card = newCard(sale.sale_id);
        cards.set(sale.sale_id, card);
      }
      if (container.children[i] !== card) container.insertBefore(card, container.children[i] || null);
      shown.set(sale.sale_id, sale);
      showSale(card, sale, samples, now);
    });
  }

  function newCard(saleId) {
    const card = $("sale-card").content.firstElementChild.cloneNode(true);
    card.dataset.saleId = saleId;
    for (const button of card.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", () => act(button.dataset.action, saleId, card));
    }
    return card;
  }

  function pace(saleId, sold, now) {
    let polls = paces.get(saleId);
    if (!polls) paces.set(saleId, (polls = []));
    if (typeof sold !== "number") return DASH;
    polls.push({ at: now, sold });
    while (polls.length > 2 && now - polls[1].at >= WINDOW_MS) polls.shift();
    if (polls.length < 2) return DASH;
    const per = (a, b) => (b.sold - a.sold) / ((b.at - a.at) / 1000);
    const last = per(polls[polls.length - 2], polls[polls.length - 1]);
    const window = per(polls[0], polls[polls.length - 1]);
    return `${decimal.format(last)} (10 s: ${decimal.format(window)})`;
  }

  function showSale(card, sale, samples, now) {
    field(card, "name", sale.name || "");
    field(card, "sale-id", sale.sale_id);
    const badge = field(card, "status", sale.control === "paused" && sale.status !== "paused"
      ? `${sale.status} (paused)` : sale.status);
    badge.className = `badge ${sale.status}`;
    field(card, "times", `${when(sale.starts_at)} to ${when(sale.ends_at)}`);
    const stock = Math.max(1, sale.stock || 0);
    const parts = { paid: sale.paid, reserved: sale.reserved, fcode: sale.fcode_available, available: sale.available };
    for (const [part, n] of Object.entries(parts)) {
      card.querySelector(`.bar .${part}`).style.width = `${(100 * (n || 0)) / stock}%`;
    }
    card.querySelector(".bar").setAttribute(
      "aria-label",
      `paid ${count(sale.paid)}, reserved ${count(sale.reserved)}, F-code available ` +
        `${count(sale.fcode_available)}, available ${count(sale.available)} of ${count(sale.stock)}`,
    );
    for (const name of ["available", "fcode_available", "reserved", "paid", "stock", "dead_letters"]) {
      field(card, name, count(sale[name]));
    }
    field(card, "sold-rate", pace(sale.sale_id, sale.sold_total, now));
    const queued = "waiting" in sale;
    field(card, "admitted", queued ? count(sale.admitted) : DASH);
    field(card, "waiting", queued ? count(sale.waiting) : DASH);
    const labels = { sale_id: sale.sale_id };
    const lag = samples ? total(samples, "flashsale_writer_lag_seconds", labels) : null;
    field(card, "writer-lag", lag === 0 ? "0 s" : seconds(lag)); // 0: nothing waiting
    const backlog = samples ? total(samples, "flashsale_writer_backlog_events", labels) : null;
    field(card, "writer-backlog", backlog === null ? DASH : count(backlog));
    field(card, "warning", sale.units_add_up === false
      ? "The units do not add up to the stock: run flashsale reconcile." : "");
    const control = sale.control;
    const over = sale.status === "ended";
    card.querySelector('[data-action="pause"]').disabled = over || control !== "active";
    card.querySelector('[data-action="resume"]').disabled = over || control !== "paused";
    card.querySelector('[data-action="close"]').disabled = control === "closed";
  }

  function showEnded(ended) {
    const details = $("ended");
    details.hidden = ended.length === 0;
    field(details, "ended-count", String(ended.length));
    const rows = ended.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.saleId = s.sale_id;
      for (const text of [s.sale_id, s.name || "", s.control, when(s.ends_at), count(s.stock),
        count(s.paid), count(s.reserved), count(s.available), count(s.fcode_available)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    details.querySelector("tbody").replaceChildren(...rows);
  }

  // --- pause, resume, close ---------------------------------------------------------------------

  function question(action, sale) {
    const name = `sale ${sale.sale_id}${sale.name ? ` (${sale.name})` : ""}`;
    if (action === "pause") {
      return `Pause ${name}?\n\nShoppers are refused (409 sale_paused) until it is resumed; ` +
        "nothing is reserved meanwhile. Reservations already made can still be paid.";
    }
    if (action === "resume") return `Resume ${name}?\n\nShoppers can buy again at once.`;
    const reserved = typeof sale.reserved === "number" ? `${count(sale.reserved)} unit(s) now` : "";
    const last = sale.last_reservation_expires_at
      ? `, the last at ${when(sale.last_reservation_expires_at)}` : "";
    return `Close ${name} for good?\n\nNothing more is sold, units that come back are not ` +
      "sold again, and a closed sale cannot be reopened.\n\nUnpaid reservations" +
      `${reserved ? ` (${reserved})` : ""} can still be paid or cancelled until they expire${last}.`;
  }

  const DONE = { pause: "paused", resume: "resumed", close: "closed" };

  async function act(action, saleId, card) {
    const sale = shown.get(saleId) || { sale_id: saleId };
    if (!window.confirm(question(action, sale))) return;
    const buttons = card.querySelectorAll("button[data-action]");
    for (const b of buttons) b.disabled = true;
    const mine = session;
    const flash = $("flash");
    try {
      const answer = await post(`v1/admin/sales/${encodeURIComponent(saleId)}/${action}`);
      if (mine !== session) return;
      flash.classList.remove("problem");
      flash.textContent = `${clock(Date.now())} sale ${saleId}: ${answer.note || `${DONE[action]}.`}`;
    } catch (exc) {
      if (mine !== session) return;
      if (exc instanceof Failure && exc.status === 401) {
        failed(exc);
        return;
      }
      flash.classList.add("problem");
      const why = exc instanceof Failure
        ? (exc.status ? `${exc.status} ${exc.code}: ${exc.message}` : `cannot reach the service (${exc.message})`)
        : String(exc);
      flash.textContent = `${clock(Date.now())} sale ${saleId} was not ${DONE[action]}: ${why}.`;
    }
    schedule(0); // the buttons come back with the new numbers
  }

  // --- start -----------------------------------------------------------------------------------

  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    input.value = "";
    if (!token) {
      $("sign-in-message").textContent = "Type the admin token.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    showLive();
  });
  $("sign-out").addEventListener("click", () => showSignIn(""));

  if (signedIn()) showLive();
  else showSignIn("");
})();

/* mqadmin operator dashboard.
 *
 * One websocket (/ws/dashboard/): a `snapshot` on connect, then `queue`,
 * `consumer`, `event` and `tick` frames. Reconnects with backoff and resyncs
 * from the fresh snapshot. Text from the server is only ever inserted with
 * textContent (never innerHTML), so a queue name or a message can't inject.
 */
(function () {
  "use strict";

  var page = document.body.dataset.page;
  var onlyQueue = document.body.dataset.queue || null; // the queue page's queue
  var WINDOW_SECONDS = 15 * 60;
  var MAX_FEED = 500;

  var state = {
    queues: new Map(), // name -> frame
    consumers: new Map(), // id -> frame
    serverAt: null, // server time of the last frame, and when we got it
    receivedAt: 0,
    lastTickAt: 0,
    totals: null,
    selected: onlyQueue, // the queue the charts show (null = broker total)
  };

  // ---------------------------------------------------------------- helpers
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function serverNow() {
    if (state.serverAt === null) return Date.now() / 1000;
    return state.serverAt + (performance.now() - state.receivedAt) / 1000;
  }
  function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
  function fmtRate(r) {
    if (r === null || r === undefined) return "–";
    if (r === 0) return "0";
    return r >= 100 ? Math.round(r).toLocaleString("en-US") : r.toFixed(r >= 10 ? 1 : 2);
  }
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, seconds);
    if (seconds < 1) return "<1s";
    if (seconds < 90) return Math.floor(seconds) + "s";
    if (seconds < 5400) return Math.floor(seconds / 60) + "m " + Math.floor(seconds % 60) + "s";
    if (seconds < 172800) return Math.floor(seconds / 3600) + "h " + Math.floor((seconds % 3600) / 60) + "m";
    return Math.floor(seconds / 86400) + "d";
  }
  // A time as the API and the dashboard's frames send it (ISO 8601), in epoch seconds.
  function isoEpoch(iso) { return iso === null || iso === undefined ? null : Date.parse(iso) / 1000; }
  function fmtClock(epoch) {
    var d = new Date(epoch * 1000);
    return d.toLocaleTimeString("en-GB", { hour12: false });
  }
  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

  // ------------------------------------------------------------ connection
  var conn = document.getElementById("conn");
  function setConn(cls, text, title) {
    conn.className = "conn " + cls;
    document.body.classList.toggle("disconnected", cls === "offline" || cls === "connecting");
    conn.textContent = text;
    conn.title = title || "";
  }

  var socket = null;
  var attempt = 0;
  var retryTimer = null;
  var everConnected = false;

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    setConn("connecting", everConnected ? "reconnecting…" : "connecting…");
    socket = new WebSocket(scheme + location.host + "/ws/dashboard/");
    var gotSnapshot = false;
    socket.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "snapshot") {
        gotSnapshot = true;
        attempt = 0;
        everConnected = true;
        setConn("live", "live", "Connected; updates are pushed by the broker");
      }
      handle(msg);
    };
    socket.onclose = function (ev) {
      socket = null;
      // Backoff: 0.5 s doubling to 15 s, with jitter so a restarted server
      // is not hit by every open dashboard at the same instant.
      var delay = Math.min(15000, 500 * Math.pow(2, attempt)) * (0.75 + Math.random() * 0.5);
      attempt += 1;
      var why = ev.code === 4403 ? "not allowed (log in as staff)" : "disconnected";
      if (!gotSnapshot && ev.code === 1006 && attempt > 3) why = "server unreachable";
      countdown(why, Date.now() + delay);
      retryTimer = setTimeout(connect, delay);
    };
  }
  function countdown(why, at) {
    function show() {
      if (socket) return;
      var left = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      setConn("offline", why + " · retrying in " + left + "s", "The page reconnects by itself and reloads a fresh snapshot");
      if (left > 0) setTimeout(show, 500);
    }
    show();
  }
  // A connected socket with no ticks means no monitor is publishing.
  setInterval(function () {
    if (!socket || socket.readyState !== 1 || !everConnected) return;
    var quiet = (performance.now() - state.lastTickAt) / 1000;
    if (state.lastTickAt && quiet > 5) {
      setConn("stale", "live · no monitor ticks for " + Math.floor(quiet) + "s", "Counts update when the leader monitor runs (mq serve or mq monitor)");
    } else if (conn.classList.contains("stale")) {
      setConn("live", "live");
    }
  }, 1000);

  // -------------------------------------------------------------- messages
  function handle(msg) {
    if (msg.at) { state.serverAt = msg.at; state.receivedAt = performance.now(); }
    switch (msg.type) {
      case "snapshot": onSnapshot(msg); break;
      case "queue": onQueue(msg); break;
      case "queue_removed": state.queues.delete(msg.name); queuesTable.dirty(); break;
      case "consumer": onConsumer(msg); break;
      case "consumer_removed": state.consumers.delete(msg.id); consumersTable.render(); break;
      case "event": feed.add(msg, true); break;
      case "tick": onTick(msg); break;
      case "history": charts.load(msg); break;
    }
  }

  function onSnapshot(msg) {
    state.queues.clear();
    msg.queues.forEach(function (q) { q.type = "queue"; state.queues.set(q.name, q); });
    state.consumers.clear();
    msg.consumers.forEach(function (c) { state.consumers.set(c.id, c); });
    feed.reset(msg.events);
    queuesTable.dirty();
    consumersTable.render();
    queuePage.render();
    if (state.selected && !state.queues.has(state.selected) && !onlyQueue) state.selected = null;
    charts.reset(state.selected === null ? msg.history : null);
    if (state.selected !== null) requestHistory(state.selected);
    renderTotals(computeTotals());
  }

  function onQueue(q) {
    state.queues.set(q.name, q);
    queuesTable.dirty();
    if (q.name === onlyQueue) queuePage.render();
  }

  function onConsumer(c) {
    var before = state.consumers.get(c.id);
    state.consumers.set(c.id, c);
    consumersTable.render();
    if (before && before.status !== c.status && c.status === "dead") {
      var row = document.querySelector('#consumers tr[data-id="' + CSS.escape(c.id) + '"]');
      if (row) row.scrollIntoView({ block: "nearest" });
    }
  }

  function onTick(t) {
    state.lastTickAt = performance.now();
    state.totals = t.totals;
    renderTotals(t.totals);
    charts.tick(t);
  }

  function computeTotals() {
    var t = { queues: state.queues.size, ready: 0, delayed: 0, in_flight: 0, dead: 0, in_rate: 0, out_rate: 0 };
    state.queues.forEach(function (q) {
      t.ready += q.ready; t.delayed += q.delayed; t.in_flight += q.in_flight; t.dead += q.dead;
      t.in_rate += q.in_rate || 0; t.out_rate += q.out_rate || 0;
    });
    return t;
  }

  function renderTotals(t) {
    if (page !== "overview" || !t) return;
    document.querySelectorAll("[data-total]").forEach(function (e) {
      var k = e.dataset.total;
      if (k === "consumers") return;
      e.textContent = k.indexOf("rate") >= 0 ? fmtRate(t[k]) : fmtInt(t[k]);
    });
    var deadStat = document.querySelector('[data-stat="dead"]');
    if (deadStat) deadStat.classList.toggle("bad", t.dead > 0);
  }

  function requestHistory(queue) {
    if (socket && socket.readyState === 1) socket.send(JSON.stringify({ type: "history", queue: queue }));
  }

  // ----------------------------------------------------------- queue table
  var queuesTable = (function () {
    var table = document.getElementById("queues");
    if (!table) return { dirty: function () {} };
    var tbody = table.tBodies[0];
    var filter = document.getElementById("queue-filter");
    var count = document.getElementById("queue-count");
    var empty = document.getElementById("queues-empty");
    var rows = new Map(); // name -> tr
    var sortKey = "name", sortDir = 1, scheduled = false;
    var COLS = ["name", "ready", "delayed", "in_flight", "dead", "oldest", "in_rate", "out_rate", "paused"];

    table.tHead.addEventListener("click", function (ev) {
      var th = ev.target.closest("th.sortable");
      if (!th) return;
      var key = th.dataset.key;
      if (key === sortKey) sortDir = -sortDir;
      else { sortKey = key; sortDir = key === "name" ? 1 : -1; }
      table.tHead.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(sortDir > 0 ? "sorted-asc" : "sorted-desc");
      dirty();
    });
    table.tHead.querySelector('th[data-key="name"]').classList.add("sorted-asc");
    filter.addEventListener("input", dirty);

    tbody.addEventListener("click", function (ev) {
      if (ev.target.closest("a")) return;
      var tr = ev.target.closest("tr");
      if (!tr) return;
      charts.select(tr.dataset.name === state.selected ? null : tr.dataset.name);
      dirty();
    });

    function makeRow(name) {
      var tr = el("tr");
      tr.dataset.name = name;
      COLS.forEach(function (c) { tr.appendChild(el("td", c === "name" || c === "paused" ? c : "num " + c)); });
      var a = el("a", null, name);
      a.href = "/queues/" + encodeURIComponent(name) + "/";
      tr.cells[0].appendChild(a);
      tr.cells[0].title = name; // the cell cuts a long name with an ellipsis
      return tr;
    }
    function setNum(td, value, text, hot) {
      if (td.textContent !== text) td.textContent = text;
      td.classList.toggle("zero", !value);
      td.classList.toggle("hot", !!hot);
    }
    function fill(tr, q, now) {
      var c = tr.cells;
      setNum(c[1], q.ready, fmtInt(q.ready));
      setNum(c[2], q.delayed, fmtInt(q.delayed));
      setNum(c[3], q.in_flight, fmtInt(q.in_flight));
      setNum(c[4], q.dead, fmtInt(q.dead), q.dead > 0);
      var age = q.oldest_ready_at === null || q.oldest_ready_at === undefined ? null : now - q.oldest_ready_at;
      setNum(c[5], age !== null, age === null ? "–" : fmtAge(age), age !== null && age > 300);
      setNum(c[6], q.in_rate, fmtRate(q.in_rate));
      setNum(c[7], q.out_rate, fmtRate(q.out_rate));
      var paused = c[8].firstChild;
      if (q.paused && !paused) c[8].appendChild(el("span", "badge paused", "paused"));
      if (!q.paused && paused) c[8].textContent = "";
      tr.classList.toggle("selected", q.name === state.selected);
    }
    function sortValue(q, now) {
      if (sortKey === "oldest_ready_at") return q.oldest_ready_at === null || q.oldest_ready_at === undefined ? -1 : now - q.oldest_ready_at;
      if (sortKey === "paused") return q.paused ? 1 : 0;
      return q[sortKey];
    }
    function render() {
      scheduled = false;
      var now = serverNow();
      var needle = filter.value.trim().toLowerCase();
      var list = [];
      state.queues.forEach(function (q) { if (!needle || q.name.toLowerCase().indexOf(needle) >= 0) list.push(q); });
      list.sort(function (a, b) {
        var x = sortValue(a, now), y = sortValue(b, now);
        if (x < y) return -sortDir;
        if (x > y) return sortDir;
        return a.name < b.name ? -1 : 1;
      });
      rows.forEach(function (tr, name) { if (!state.queues.has(name)) { tr.remove(); rows.delete(name); } });
      // Reorder only rows that are out of place: cheap with 1,000 queues.
      var cursor = tbody.firstChild;
      var shown = new Set();
      list.forEach(function (q) {
        var tr = rows.get(q.name);
        if (!tr) { tr = makeRow(q.name); rows.set(q.name, tr); }
        fill(tr, q, now);
        shown.add(q.name);
        if (tr !== cursor) tbody.insertBefore(tr, cursor);
        else cursor = cursor.nextSibling;
      });
      rows.forEach(function (tr, name) { if (!shown.has(name) && tr.parentNode) tr.remove(); });
      count.textContent = needle ? list.length + " of " + state.queues.size : String(state.queues.size);
      empty.hidden = state.queues.size > 0;
      if (!state.totals) renderTotals(computeTotals());
    }
    function dirty() {
      if (!scheduled) { scheduled = true; requestAnimationFrame(render); }
    }
    setInterval(dirty, 1000); // ages grow between updates
    return { dirty: dirty };
  })();

  // -------------------------------------------------------- consumer table
  var consumersTable = (function () {
    var table = document.getElementById("consumers");
    if (!table) return { render: function () {} };
    var tbody = table.tBodies[0];
    var empty = document.getElementById("consumers-empty");
    var count = document.getElementById("consumer-count");
    // Left is not trouble: those who left gracefully come last, in grey.
    var ORDER = { dead: 0, suspect: 1, alive: 2, left: 3 };
    function render() {
      var list = Array.from(state.consumers.values());
      // Trouble first: dead and suspect consumers lead the list.
      list.sort(function (a, b) { return ORDER[a.status] - ORDER[b.status] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0); });
      var now = serverNow();
      var frag = document.createDocumentFragment();
      var n = { alive: 0, suspect: 0, dead: 0, left: 0 };
      list.forEach(function (c) {
        n[c.status] = (n[c.status] || 0) + 1;
        var tr = el("tr", "consumer-" + c.status);
        tr.dataset.id = c.id;
        // Cells cut long names with an ellipsis: the full text is in the title.
        var name = el("td", "name", c.name);
        name.title = c.name + "\n" + c.id;
        tr.appendChild(name);
        var queues = el("td", "muted", c.queues.join(", "));
        queues.title = c.queues.join("\n");
        tr.appendChild(queues);
        var st = el("td");
        st.appendChild(el("span", "badge " + c.status, c.status));
        tr.appendChild(st);
        var gone = (c.status === "dead" || c.status === "left") && c.dead_at;
        var age = gone ? c.status + " " + fmtAge(now - isoEpoch(c.dead_at)) + " ago" : fmtAge(now - isoEpoch(c.last_heartbeat)) + " ago";
        var hb = el("td", "num", age);
        hb.title = age + ", timeout " + c.heartbeat_timeout + " s";
        tr.appendChild(hb);
        tr.appendChild(el("td", "num" + (c.in_flight ? "" : " zero"), fmtInt(c.in_flight)));
        frag.appendChild(tr);
      });
      tbody.replaceChildren(frag);
      empty.hidden = list.length > 0;
      count.textContent = list.length ? n.alive + " alive" + (n.suspect ? ", " + n.suspect + " suspect" : "") + (n.dead ? ", " + n.dead + " dead" : "") + (n.left ? ", " + n.left + " left" : "") : "";
      var total = document.querySelector('[data-total="consumers"]');
      if (total) {
        total.textContent = n.alive + " / " + n.suspect + " / " + n.dead + " / " + n.left;
        total.parentNode.classList.toggle("bad", n.dead > 0);
      }
    }
    setInterval(render, 1000); // heartbeat ages
    return { render: render };
  })();

  // --------------------------------------------------------------- the feed
  var feed = (function () {
    var list = document.getElementById("feed");
    if (!list) return { add: function () {}, reset: function () {} };
    var empty = document.getElementById("feed-empty");
    var fq = document.getElementById("feed-queue");
    var fk = document.getElementById("feed-kind");
    var items = [];

    function consumerName(id) {
      var c = state.consumers.get(id);
      return c ? c.name : "consumer " + id.slice(0, 8);
    }
    function describe(e) {
      var q = e.queue || "";
      if (e.coalesced) {
        var NOUNS = { redelivery: ["redelivery", "redeliveries"], dead_letter: ["dead-lettering", "dead-letterings"],
          requeue: ["manual requeue", "manual requeues"], consumer_dead: ["consumer death", "consumer deaths"],
          purge: ["purge", "purges"], redrive: ["redrive", "redrives"] };
        var noun = NOUNS[e.kind] || [e.kind, e.kind];
        return e.events + " " + (e.events === 1 ? noun[0] : noun[1]) + (q ? " in " + q : "");
      }
      switch (e.kind) {
        case "redelivery":
          return ["Message " + e.message + " in " + q + " redelivered after delivery " + e.delivery_count,
            [e.consumer ? "lost by " + consumerName(e.consumer) : null, e.reason || null].filter(Boolean).join(" · ")];
        case "dead_letter":
          return ["Message " + e.message + " dead-lettered from " + q + (e.dead_letter_queue ? " to " + e.dead_letter_queue : "") +
            " after " + plural(e.delivery_count, "delivery", "deliveries"), e.reason || ""];
        case "consumer_dead":
          return "Consumer " + (e.name || e.consumer) + " declared dead after " + e.silent_seconds + " s of silence; " +
            plural(e.released || 0, "message", "messages") + " back to ready";
        case "purge": return q + " purged: " + plural(e.count || 0, "message", "messages") + " deleted";
        case "redrive": return q + " redriven: " + plural(e.count || 0, "message", "messages") + " back to their queues";
        case "requeue": return "Message " + (e.message || "") + " in " + q + " requeued by an operator";
        case "pause": return q + " paused" + (e.by ? " by " + e.by : "");
        case "resume": return q + " resumed" + (e.by ? " by " + e.by : "");
        case "retention": return plural(e.count || 0, "message", "messages") + " in " + q + " expired (retention)";
        case "queue_deleted": return "Queue " + q + " deleted";
        default: return e.kind + (q ? " in " + q : "");
      }
    }
    var LABELS = { redelivery: "redelivery", dead_letter: "dead letter", consumer_dead: "consumer dead", purge: "purge",
      redrive: "redrive", requeue: "requeue", pause: "pause", resume: "resume", retention: "retention", queue_deleted: "deleted" };
    function matches(e) {
      var q = fq.value.trim().toLowerCase();
      if (fk.value && e.kind !== fk.value) return false;
      if (q) {
        var names = [e.queue || ""].concat(e.queues || []);
        if (!names.some(function (n) { return n && n.toLowerCase().indexOf(q) >= 0; })) return false;
      }
      return true;
    }
    function row(e, fresh) {
      var li = el("li", fresh ? "fresh" : null);
      li.dataset.kind = e.kind;
      li.appendChild(el("span", "when", fmtClock(e.at)));
      li.appendChild(el("span", "kind " + e.kind, e.coalesced ? (LABELS[e.kind] || e.kind) + " ×" + e.events : LABELS[e.kind] || e.kind));
      var text = describe(e);
      var span = el("span", "text", Array.isArray(text) ? text[0] : text);
      if (Array.isArray(text) && text[1]) span.appendChild(el("span", "why", text[1]));
      li.appendChild(span);
      return li;
    }
    function redraw() {
      var frag = document.createDocumentFragment();
      for (var i = items.length - 1; i >= 0; i--) if (matches(items[i])) frag.appendChild(row(items[i], false));
      list.replaceChildren(frag);
      empty.hidden = list.childElementCount > 0;
      empty.textContent = items.length ? "No events match the filter." : "No events yet. Redeliveries, dead-letterings, consumer deaths and operator actions appear here as they happen.";
    }
    function add(e, fresh) {
      items.push(e);
      if (items.length > MAX_FEED) items.shift();
      if (matches(e)) {
        list.insertBefore(row(e, fresh), list.firstChild);
        while (list.childElementCount > MAX_FEED) list.lastChild.remove();
        empty.hidden = true;
      }
    }
    function reset(events) { items = (events || []).slice(-MAX_FEED); redraw(); }
    fq.addEventListener("input", redraw);
    fk.addEventListener("change", redraw);
    return { add: add, reset: reset };
  })();

  // ------------------------------------------------------------ queue page
  var queuePage = (function () {
    if (!onlyQueue) return { render: function () {} };
    function render() {
      var q = state.queues.get(onlyQueue);
      if (!q) return;
      var set = function (k, text) { var e = document.querySelector('[data-q="' + k + '"]'); if (e) e.textContent = text; };
      set("ready", fmtInt(q.ready)); set("delayed", fmtInt(q.delayed)); set("in_flight", fmtInt(q.in_flight));
      set("dead", fmtInt(q.dead)); set("in_rate", fmtRate(q.in_rate)); set("out_rate", fmtRate(q.out_rate));
      set("oldest", q.oldest_ready_at === null || q.oldest_ready_at === undefined ? "–" : fmtAge(serverNow() - q.oldest_ready_at));
      document.getElementById("paused-badge").hidden = !q.paused;
      // Another operator may pause or resume meanwhile: offer the action that applies now.
      document.getElementById("pause-form").hidden = !!q.paused;
      document.getElementById("resume-form").hidden = !q.paused;
      var deadStat = document.querySelector('[data-stat="dead"]');
      if (deadStat) deadStat.classList.toggle("bad", q.dead > 0);
    }
    setInterval(render, 1000);
    return { render: render };
  })();

  // ----------------------------------------------------------------- charts
  var charts = (function () {
    var depthEl = document.getElementById("chart-depth");
    var rateEl = document.getElementById("chart-rate");
    if (!depthEl || typeof uPlot === "undefined") return { reset: function () {}, tick: function () {}, load: function () {}, select: function () {} };
    var title = document.getElementById("chart-title");
    var backBtn = document.getElementById("chart-total");
    var data = { t: [], ready: [], in_flight: [], delayed: [], in_rate: [], out_rate: [] };
    function width(e) { return Math.max(280, e.clientWidth || e.parentNode.clientWidth - 10); }
    function compact(v) {
      var a = Math.abs(v);
      if (a >= 1e9) return +(v / 1e9).toFixed(1) + "G";
      if (a >= 1e6) return +(v / 1e6).toFixed(1) + "M";
      if (a >= 1e4) return +(v / 1e3).toFixed(0) + "k";
      return String(+v.toFixed(2));
    }
    // One line per tick, 24-hour clock: uPlot's default puts the date on a
    // second line that runs into the time labels of a 190 px chart.
    function clockTicks(u, splits) {
      var seconds = splits.some(function (t) { return Math.round(t) % 60 !== 0; });
      return splits.map(function (t) { var s = fmtClock(t); return seconds ? s : s.slice(0, 5); });
    }
    // With no cursor on the chart the legend shows the newest point, not "--".
    function showLatest(u) {
      var n = u.data[0].length;
      if (n && u.cursor.idx == null) u.setLegend({ idx: n - 1 });
    }
    var axes = [{ stroke: "#667085", grid: { stroke: "#eef0f3" }, space: 70, values: clockTicks },
      { stroke: "#667085", grid: { stroke: "#eef0f3" }, size: 52, values: function (u, vals) { return vals.map(compact); } }];
    function opts(e, series) {
      return { width: width(e), height: 190, series: [{}].concat(series), axes: axes, legend: { live: true },
        // At least two minutes wide: a fresh page shows seconds, not milliseconds.
        scales: { x: { time: true, range: function (u, min, max) {
          var now = serverNow(); return [Math.min(min === null ? now : min, now - 120), Math.max(max === null ? now : max, now)]; } }, y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.1)]; } } },
        cursor: { drag: { x: false, y: false } }, hooks: { setData: [showLatest], setCursor: [showLatest] } };
    }
    var depth = new uPlot(opts(depthEl, [
      { label: "ready", stroke: "#2459d6", fill: "rgba(36,89,214,.08)", width: 1.5 },
      { label: "in flight", stroke: "#13804a", width: 1.5 },
      { label: "delayed", stroke: "#b45309", width: 1.2, dash: [4, 3] },
    ]), [[], [], [], []], depthEl);
    var rate = new uPlot(opts(rateEl, [
      { label: "in/s", stroke: "#2459d6", width: 1.5 },
      { label: "out/s", stroke: "#13804a", width: 1.5 },
    ]), [[], [], []], rateEl);
    depthEl.uplot = depth; // the browser test reads legends and ticks here
    rateEl.uplot = rate;
    window.addEventListener("resize", function () {
      depth.setSize({ width: width(depthEl), height: 190 });
      rate.setSize({ width: width(rateEl), height: 190 });
    });

    function trim() {
      var cutoff = serverNow() - WINDOW_SECONDS;
      var n = 0;
      while (n < data.t.length && data.t[n] < cutoff) n++;
      if (n) Object.keys(data).forEach(function (k) { data[k].splice(0, n); });
    }
    function draw() {
      trim();
      depth.setData([data.t, data.ready, data.in_flight, data.delayed]);
      rate.setData([data.t, data.in_rate, data.out_rate]);
    }
    function push(t, s) {
      if (data.t.length && t <= data.t[data.t.length - 1]) return;
      data.t.push(t); data.ready.push(s.ready); data.in_flight.push(s.in_flight); data.delayed.push(s.delayed);
      data.in_rate.push(s.in_rate || 0); data.out_rate.push(s.out_rate || 0);
    }
    function load(h) {
      if ((h.queue || null) !== state.selected) return;
      Object.keys(data).forEach(function (k) { data[k] = (h[k] || []).slice(); });
      draw();
    }
    function reset(history) {
      Object.keys(data).forEach(function (k) { data[k] = []; });
      if (history) load(history); else draw();
      label();
    }
    function label() {
      if (!title) return;
      title.textContent = state.selected === null ? "Broker total" : "Queue " + state.selected;
      if (backBtn) backBtn.hidden = state.selected === null;
    }
    function tick(t) {
      var s = state.selected === null ? t.totals : state.queues.get(state.selected);
      if (!s) return;
      push(t.at, s);
      draw();
    }
    function select(name) {
      state.selected = name;
      reset(null);
      requestHistory(name);
    }
    if (backBtn) backBtn.addEventListener("click", function () { select(null); queuesTable.dirty(); });
    return { reset: reset, tick: tick, load: load, select: select };
  })();

  connect();
})();

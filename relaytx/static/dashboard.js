// The relaytx dashboard: draws the mesh view a node sends over server-sent
// events (/dashboard/events), every second while the page is open. No
// external scripts: everything the page needs comes from the node itself.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 800, H = 600;
  var positions = {};   // node id -> {x, y}, kept across updates
  var feedState = document.getElementById("feed");
  var lastUpdate = 0;

  // A token given as ?token= is now in a cookie (set by the page's
  // answer): take it out of the address bar and history.
  var here = new URL(window.location.href);
  if (here.searchParams.has("token")) {
    here.searchParams.delete("token");
    window.history.replaceState(null, "", here.pathname + here.search + here.hash);
  }

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function text(value) { return value === null || value === undefined ? "–" : String(value); }

  // Force-directed layout, started from a circle, kept stable across views.
  function layout(view) {
    var ids = Object.keys(view.nodes).sort();
    var n = ids.length;
    ids.forEach(function (id, i) {
      if (!positions[id]) {
        var angle = 2 * Math.PI * i / Math.max(n, 1);
        positions[id] = { x: W / 2 + 0.35 * W * Math.cos(angle), y: H / 2 + 0.35 * H * Math.sin(angle), fresh: true };
      }
    });
    Object.keys(positions).forEach(function (id) { if (!view.nodes[id]) { delete positions[id]; } });
    var fresh = ids.some(function (id) { return positions[id].fresh; });
    var rounds = fresh ? 300 : 20;
    var k = Math.sqrt((W * H) / Math.max(n, 1)) * 0.6;
    for (var round = 0; round < rounds; round++) {
      var move = {};
      ids.forEach(function (id) { move[id] = { x: 0, y: 0 }; });
      for (var i = 0; i < n; i++) {
        for (var j = i + 1; j < n; j++) {
          var a = positions[ids[i]], b = positions[ids[j]];
          var dx = a.x - b.x, dy = a.y - b.y;
          var d2 = Math.max(dx * dx + dy * dy, 1), d = Math.sqrt(d2);
          var f = (k * k) / d2;
          move[ids[i]].x += dx / d * f; move[ids[i]].y += dy / d * f;
          move[ids[j]].x -= dx / d * f; move[ids[j]].y -= dy / d * f;
        }
      }
      view.links.forEach(function (link) {
        var a = positions[link.a], b = positions[link.b];
        if (!a || !b) { return; }
        var dx = a.x - b.x, dy = a.y - b.y, d = Math.max(Math.sqrt(dx * dx + dy * dy), 1);
        var f = (d * d) / k / 40;
        move[link.a].x -= dx / d * f; move[link.a].y -= dy / d * f;
        move[link.b].x += dx / d * f; move[link.b].y += dy / d * f;
      });
      var step = 8 * (1 - round / rounds) + 1;
      ids.forEach(function (id) {
        var p = positions[id], m = move[id];
        m.x += (W / 2 - p.x) * 0.01; m.y += (H / 2 - p.y) * 0.01;
        var len = Math.max(Math.sqrt(m.x * m.x + m.y * m.y), 0.001);
        p.x = Math.min(W - 40, Math.max(40, p.x + m.x / len * Math.min(len, step)));
        p.y = Math.min(H - 40, Math.max(40, p.y + m.y / len * Math.min(len, step)));
      });
    }
    ids.forEach(function (id) { positions[id].fresh = false; });
  }

  // Show the whole graph, whatever its extent, with room for the labels.
  function fit(ids) {
    if (!ids.length) { return; }
    var xs = ids.map(function (id) { return positions[id].x; });
    var ys = ids.map(function (id) { return positions[id].y; });
    var minX = Math.min.apply(null, xs) - 70, maxX = Math.max.apply(null, xs) + 70;
    var minY = Math.min.apply(null, ys) - 50, maxY = Math.max.apply(null, ys) + 50;
    var w = Math.max(maxX - minX, 300), h = Math.max(maxY - minY, 225);
    if (w / h > W / H) { h = w * H / W; } else { w = h * W / H; }
    var cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
    document.getElementById("graph").setAttribute(
      "viewBox", [cx - w / 2, cy - h / 2, w, h].map(function (v) { return v.toFixed(1); }).join(" "));
  }

  function drawGraph(view) {
    layout(view);
    fit(Object.keys(view.nodes));
    var links = document.getElementById("links"), nodes = document.getElementById("nodes");
    links.textContent = ""; nodes.textContent = "";
    var many = view.links.length > 80;
    view.links.forEach(function (link) {
      var a = positions[link.a], b = positions[link.b];
      if (!a || !b) { return; }
      var g = el("g", { "class": "link" + (link.healthy ? "" : " bad"), "data-link": link.a + " " + link.b }, links);
      el("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y }, g);
      if (!many && link.rtt_ms !== null) {
        var label = el("text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 4 }, g);
        label.textContent = link.rtt_ms.toFixed(link.rtt_ms < 10 ? 2 : 0) + " ms";
      }
    });
    Object.keys(view.nodes).sort().forEach(function (id) {
      var node = view.nodes[id], p = positions[id];
      var g = el("g", { "class": "node" + (id === view.node_id ? " self" : ""), "data-node": id,
                        "data-state": node.state, transform: "translate(" + p.x + "," + p.y + ")" }, nodes);
      var title = el("title", {}, g);
      title.textContent = id + " (" + node.state + "): " + (node.servers.join(", ") || "no servers");
      el("circle", { r: 14 }, g);
      var name = el("text", { y: -20 }, g);
      name.textContent = id;
      var sub = el("text", { y: 30, "class": "sub" }, g);
      sub.textContent = node.state === "up" ? text(node.calls_per_s) + "/s" : node.state;
    });
  }

  function drawTable(view) {
    var body = document.querySelector("#nodes-table tbody");
    body.textContent = "";
    var order = { silent: 0, gone: 1, up: 2 };
    Object.keys(view.nodes).sort(function (a, b) {
      var x = view.nodes[a], y = view.nodes[b];
      return (order[x.state] - order[y.state]) || (a < b ? -1 : 1);
    }).forEach(function (id) {
      var node = view.nodes[id];
      var row = document.createElement("tr");
      row.setAttribute("data-node", id);
      row.setAttribute("data-state", node.state);
      [[id, ""], [node.state, "state"], [text(node.hops), "num"], [text(node.calls_per_s), "num"],
       [text(node.errors_per_s), "num"], [node.servers.join(", ") || "–", ""]].forEach(function (cell) {
        var td = document.createElement("td");
        td.textContent = cell[0];
        if (cell[1]) { td.className = cell[1]; }
        row.appendChild(td);
      });
      body.appendChild(row);
    });
  }

  function drawSummary(view) {
    var s = view.summary;
    document.getElementById("self").textContent = "seen from " + view.node_id;
    document.getElementById("summary").textContent =
      s.nodes + " nodes (" + s.up + " up, " + s.silent + " silent, " + s.gone + " gone) · " +
      s.links + " links (" + s.unhealthy_links + " unhealthy) · " + s.servers + " servers · " +
      s.calls_per_s + " calls/s · " + s.errors_per_s + " errors/s";
    var problems = document.getElementById("problems");
    problems.textContent = "";
    (view.problems.length ? view.problems : ["none"]).forEach(function (problem) {
      var li = document.createElement("li");
      li.textContent = problem;
      if (!view.problems.length) { li.className = "none"; }
      problems.appendChild(li);
    });
    document.getElementById("updated").textContent = view.timestamp;
  }

  function show(view) {
    drawSummary(view);
    drawGraph(view);
    drawTable(view);
    document.body.setAttribute("data-updated", view.timestamp);
  }

  function setFeed(state, text) {
    feedState.setAttribute("data-state", state);
    feedState.textContent = text || state;
  }

  // The browser retries a feed that broke off by itself; one refused (the
  // node restarted and forgot this page's pass, or is gone) it gives up:
  // the page asks why, and says so, or tries again in a while.
  function connect() {
    var source = new EventSource("/dashboard/events");
    source.addEventListener("open", function () { setFeed("live"); });
    source.addEventListener("mesh", function (event) {
      lastUpdate = Date.now();
      setFeed("live");
      show(JSON.parse(event.data));
    });
    source.addEventListener("error", function () {
      setFeed("lost");
      if (source.readyState !== EventSource.CLOSED) { return; }
      fetch("/dashboard/mesh", {credentials: "same-origin"}).then(function (answer) {
        if (answer.status === 401) {
          setFeed("lost", "lost: open this page with ?token=TOKEN again");
        } else {
          window.setTimeout(connect, 2000);
        }
      }, function () { window.setTimeout(connect, 2000); });
    });
  }
  connect();
  // A feed that stops without an error (a frozen node) shows as lost too.
  window.setInterval(function () {
    var stale = lastUpdate && Date.now() - lastUpdate > 5000;
    if (stale && feedState.getAttribute("data-state") !== "lost") { setFeed("lost"); }
  }, 1000);
})();

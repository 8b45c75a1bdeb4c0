// goflame flame graph: zoom, search and details for the frames drawn by goflame/export/svg.py.
// The frames are plain SVG (<g data-s data-n><title/><rect/><text/></g>), so the picture works
// without this script; the script only moves and recolours them. Sample offsets (data-s) and
// counts (data-n) are integers, so zooming and the matched share are exact.
(function () {
  "use strict";
  var svg = document.documentElement;
  var cfg = svg.dataset;
  var total = +cfg.total, pad = +cfg.pad, fh = +cfg.fh, cw = +cfg.cw;
  var base = +cfg.base, dir = +cfg.dir, minw = +cfg.minw;
  var fullW = +svg.getAttribute("width") - 2 * pad;
  var HILITE = "rgb(230,0,230)";
  var NS = "http://www.w3.org/2000/svg";
  var $ = function (id) { return document.getElementById(id); };
  var container = $("gf-frames"), details = $("gf-details"), matched = $("gf-matched");
  var resetBtn = $("gf-reset"), searchBtn = $("gf-search");
  var frames = [], byG = new WeakMap(), zoomed = null, term = null;

  function nameOf(title) {
    var t = title.textContent, nl = t.indexOf("\n");
    return nl < 0 ? t : t.slice(0, nl);
  }

  for (var el = container.firstElementChild; el; el = el.nextElementSibling) {
    var title = el.firstElementChild, rect = title.nextElementSibling;
    var y = +rect.getAttribute("y");
    var f = {
      g: el, rect: rect, text: rect.nextElementSibling, name: nameOf(title),
      s: +el.dataset.s, n: +el.dataset.n,
      d: Math.round(dir > 0 ? (y - base) / fh : (base - y) / fh - 1),
      x0: +rect.getAttribute("x"), w0: +rect.getAttribute("width"), y: y,
      fill: rect.getAttribute("fill")
    };
    frames.push(f);
    byG.set(el, f);
  }

  function fit(name, w) {
    var max = Math.floor((w - 6) / cw);
    if (max < 3) return "";
    return name.length <= max ? name : name.slice(0, max - 2) + "..";
  }

  function place(f, x, w) {
    f.rect.setAttribute("x", x.toFixed(2));
    f.rect.setAttribute("width", w.toFixed(2));
    var label = fit(f.name, w);
    if (!f.text) {
      if (!label) return;
      f.text = document.createElementNS(NS, "text");
      f.text.setAttribute("y", (f.y + fh - 5).toFixed(0));
      f.g.appendChild(f.text);
    }
    f.text.setAttribute("x", (x + 3).toFixed(2));
    f.text.textContent = label;
  }

  function show(f, on) { f.g.style.display = on ? "" : "none"; }

  function zoom(z) {
    zoomed = z;
    var end = z.s + z.n;
    for (var i = 0; i < frames.length; i++) {
      var f = frames[i];
      if (f.d <= z.d && f.s <= z.s && f.s + f.n >= end) {
        show(f, true);
        place(f, pad, fullW);
        f.g.classList.toggle("gf-parent", f !== z);
      } else if (f.d > z.d && f.s >= z.s && f.s + f.n <= end) {
        var w = f.n * fullW / z.n;
        f.g.classList.remove("gf-parent");
        if (w < minw) { show(f, false); continue; }
        show(f, true);
        place(f, pad + (f.s - z.s) * fullW / z.n, w);
      } else {
        show(f, false);
      }
    }
    resetBtn.setAttribute("visibility", "visible");
  }

  function unzoom() {
    zoomed = null;
    for (var i = 0; i < frames.length; i++) {
      var f = frames[i];
      show(f, true);
      f.g.classList.remove("gf-parent");
      place(f, f.x0, f.w0);
    }
    resetBtn.setAttribute("visibility", "hidden");
  }

  function pct(n) { return total ? (100 * n / total).toFixed(2) : "0.00"; }

  // The share of samples under any frame whose name matches: the union of the matching frames'
  // sample intervals, so a match nested inside another match is counted once.
  function search(t) {
    var re;
    try { re = new RegExp(t); } catch (e) {
      matched.textContent = "Invalid regex: " + t;
      return null;
    }
    term = t;
    var iv = [];
    for (var i = 0; i < frames.length; i++) {
      var f = frames[i];
      if (re.test(f.name)) {
        f.rect.setAttribute("fill", HILITE);
        iv.push([f.s, f.s + f.n]);
      } else {
        f.rect.setAttribute("fill", f.fill);
      }
    }
    iv.sort(function (a, b) { return a[0] - b[0] || b[1] - a[1]; });
    var sum = 0, end = -1;
    for (var k = 0; k < iv.length; k++) {
      if (iv[k][1] <= end) continue;
      sum += iv[k][1] - Math.max(iv[k][0], end);
      end = iv[k][1];
    }
    matched.textContent = "Matched: " + pct(sum) + "% (" + sum + " of " + total + " samples)";
    searchBtn.textContent = "Reset Search";
    return sum;
  }

  function clearSearch() {
    term = null;
    for (var i = 0; i < frames.length; i++) frames[i].rect.setAttribute("fill", frames[i].fill);
    matched.textContent = "";
    searchBtn.textContent = "Search";
  }

  function askSearch() {
    var t = window.prompt("Search frames (regular expression):", term || "");
    if (t) search(t);
  }

  container.addEventListener("click", function (e) {
    var g = e.target.closest("g");
    var f = g && byG.get(g);
    if (!f) return;
    if (f.d === 0) unzoom(); else zoom(f);
  });
  container.addEventListener("mouseover", function (e) {
    var g = e.target.closest("g");
    var f = g && byG.get(g);
    if (f) details.textContent = f.name + " (" + f.n + " samples, " + pct(f.n) + "%)";
  });
  container.addEventListener("mouseout", function () { details.textContent = " "; });
  resetBtn.addEventListener("click", unzoom);
  searchBtn.addEventListener("click", function () { if (term !== null) clearSearch(); else askSearch(); });
  window.addEventListener("keydown", function (e) {
    if ((e.key === "f" && (e.ctrlKey || e.metaKey)) || e.key === "/") {
      e.preventDefault();
      askSearch();
    } else if (e.key === "Escape") {
      unzoom();
      clearSearch();
    }
  });

  // A small API for scripting the page (and for people with a console open).
  window.goflame = {
    frames: frames,
    zoom: function (name) {
      for (var i = 0; i < frames.length; i++) if (frames[i].name === name) { zoom(frames[i]); return true; }
      return false;
    },
    unzoom: unzoom, search: search, clearSearch: clearSearch,
    zoomed: function () { return zoomed && zoomed.name; }
  };
})();

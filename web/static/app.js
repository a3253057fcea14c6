// Timestamps are shown in UTC; hovering one shows it in the browser's local time.
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var d = new Date(el.getAttribute("datetime"));
  if (!isNaN(d.getTime())) {
    el.title = d.toLocaleString(undefined, {timeZoneName: "short"}) + " (local)";
  }
});

// The chart: uPlot (vendored, static/vendor/uplot) draws the series the page
// carries in data-series; the server-drawn SVG stays as the no-JS fallback.
(function () {
  var el = document.getElementById("chart");
  if (!el || !window.uPlot) { return; }
  var s = JSON.parse(el.getAttribute("data-series"));
  if (!s.buckets || !s.buckets.length) { return; }
  var xs = s.buckets.map(function (b) { return Date.parse(b) / 1000; });
  var width = el.parentNode.clientWidth - 32;
  new window.uPlot({
    width: width, height: 160,
    series: [{}, {label: "events", stroke: "#4c6ef5", fill: "rgba(145,167,255,.25)"},
             {label: "failed logins", stroke: "#c92a2a", width: 2}],
    axes: [{}, {size: 50}],
  }, [xs, s.events, s.failed_logins], el);
  el.parentNode.classList.add("drawn");
})();

// Timestamps are shown in UTC; hovering one shows it in the browser's local time.
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var d = new Date(el.getAttribute("datetime"));
  if (!isNaN(d.getTime())) {
    el.title = d.toLocaleString(undefined, {timeZoneName: "short"}) + " (local)";
  }
});

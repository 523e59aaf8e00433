// Progressive enhancement only: the page works without it.
// Shows a "select all" checkbox for the bulk-action table.
document.addEventListener('DOMContentLoaded', function () {
  var all = document.getElementById('select-all');
  if (!all) return;
  var rows = Array.prototype.slice.call(document.querySelectorAll('.row-check:not([disabled])'));
  all.hidden = false;
  all.addEventListener('change', function () {
    rows.forEach(function (c) { c.checked = all.checked; });
  });
  rows.forEach(function (c) {
    c.addEventListener('change', function () {
      var n = rows.filter(function (x) { return x.checked; }).length;
      all.checked = n === rows.length;
      all.indeterminate = n > 0 && n < rows.length;
    });
  });
});

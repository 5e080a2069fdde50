// The pages' one script (they work without it): copy buttons for the feed URLs and
// the root page's filter box.
"use strict";
document.querySelectorAll("button.copy").forEach(function (button) {
  var input = document.getElementById(button.dataset.copy);
  if (!input) return;
  button.hidden = false;
  button.addEventListener("click", function () {
    input.select();
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    };
    if (navigator.clipboard) {
      navigator.clipboard.writeText(input.value).then(done, function () {
        document.execCommand("copy");
        done();
      });
    } else {
      document.execCommand("copy");
      done();
    }
  });
});
(function () {
  var filter = document.getElementById("filter");
  var tree = document.querySelector(".tree");
  if (!filter || !tree) return;
  filter.parentElement.hidden = false;
  var items = Array.prototype.slice.call(tree.querySelectorAll("li"));
  filter.addEventListener("input", function () {
    var wanted = filter.value.trim().toLowerCase();
    items.forEach(function (li) {
      li.hidden = wanted !== "" && li.dataset.path.indexOf(wanted) < 0;
    });
    items.forEach(function (li) {
      if (li.hidden) return;
      for (var up = li.parentElement.closest("li"); up; up = up.parentElement.closest("li")) {
        up.hidden = false;
      }
    });
  });
})();

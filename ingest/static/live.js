// Makes the counter live: the totals stream (server-sent events) updates the count, the
// progress bar and the breakdown by country. Without JavaScript the page still works:
// the count is rendered by the server and the form posts normally.
"use strict";

(function () {
  const counter = document.querySelector("[data-campaign]");
  if (!counter || !window.EventSource) {
    return;
  }
  const lang = counter.dataset.lang;
  const numbers = new Intl.NumberFormat(lang);
  const percent = new Intl.NumberFormat(lang, { style: "percent", maximumFractionDigits: 1 });
  const regions = window.Intl && Intl.DisplayNames ? new Intl.DisplayNames([lang], { type: "region" }) : null;
  const count = document.getElementById("count");
  const progress = document.getElementById("progress");
  const ofGoal = document.getElementById("of-goal");
  const countries = document.getElementById("countries");
  const live = document.getElementById("live");
  let version = Number(counter.dataset.version || -1);

  function show(totals) {
    if (totals.version <= version) {
      return;
    }
    version = totals.version;
    counter.dataset.version = String(version);
    count.textContent = numbers.format(totals.total);
    if (progress) {
      progress.max = totals.goal;
      progress.value = Math.min(totals.total, totals.goal);
      progress.textContent = percent.format(totals.total / totals.goal);
    }
    if (ofGoal) {
      // keep the sentence, replace only the figure: the first percentage in it
      ofGoal.textContent = ofGoal.textContent.replace(/[\d.,\u00a0\u202f]+\s?%/, percent.format(totals.total / totals.goal));
    }
    if (countries) {
      const rows = Object.entries(totals.by_country).sort((a, b) => b[1] - a[1]).slice(0, 10);
      countries.replaceChildren(...rows.map(([code, n]) => {
        const item = document.createElement("li");
        const name = document.createElement("span");
        name.className = "name";
        // "other": the countries too small to show on their own, merged by the server
        name.textContent = code === "other" ? countries.dataset.other : regions ? regions.of(code) : code;
        const figure = document.createElement("span");
        figure.className = "n";
        figure.textContent = numbers.format(n);
        item.append(name, " ", figure);
        return item;
      }));
    }
  }

  const stream = new EventSource("/v1/campaigns/" + encodeURIComponent(counter.dataset.campaign) + "/totals/stream");
  stream.addEventListener("totals", (event) => show(JSON.parse(event.data)));
  stream.addEventListener("open", () => { if (live) { live.hidden = false; } });
  stream.addEventListener("error", () => { if (live) { live.hidden = true; } });
})();

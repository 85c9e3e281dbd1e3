// fedadapt console: polls /api/state and redraws the three views, with no reload.
// Every chart is plotly.js, served by the console itself (no CDN: operators may be offline).
"use strict";

const POLL_MS = 2000;
const seen = {};  // view part -> its JSON last drawn, so an unchanged part is not redrawn
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}
const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(1) + "%" : "–");
const pts = (v) => (typeof v === "number" ? (v >= 0 ? "+" : "") + (100 * v).toFixed(1) : "–");
const num = (v) => (typeof v === "number" ? v.toLocaleString("en") : "–");
function ago(s) {
  if (typeof s !== "number") return "–";
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}
function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function changed(key, value) {
  const text = JSON.stringify(value);
  if (seen[key] === text) return false;
  seen[key] = text;
  return true;
}
// An axis of counts (rounds, reports): whole numbers only, about ten ticks (plotly's own
// ticks put 1.5 and 2.5 between rounds)
function countAxis(title, n) {
  return { title: { text: title }, tick0: 0, dtick: Math.max(1, Math.ceil(n / 10)) };
}
function layout(title, extra) {
  return Object.assign({
    title: { text: title, font: { size: 13 } },
    margin: { l: 55, r: 15, t: 35, b: 70 },
    legend: { orientation: "h", y: -0.32, font: { size: 11 } },
    xaxis: { title: { text: "round" } },
    yaxis: { rangemode: "tozero" },
    font: { size: 11 },
  }, extra || {});
}
function draw(div, traces, lay) {
  Plotly.react(div, traces, lay, PLOT_CONFIG);
}

// ---- Runs ----------------------------------------------------------------------------
function runSection(run, container) {
  let el = container.querySelector(`section.run[data-run="${CSS.escape(run.id)}"]`);
  if (!el) {
    el = document.createElement("section");
    el.className = "run card";
    el.dataset.run = run.id;
    el.innerHTML = `<div class="head"></div>
      <div class="charts">
        <div class="chart" data-chart="accuracy"></div>
        <div class="chart" data-chart="upload"></div>
        <div class="chart" data-chart="rejected"></div>
        <div class="chart" data-chart="seconds"></div>
      </div><div class="final"></div><div class="devices"></div><div class="files"></div>`;
    container.appendChild(el);
  }
  return el;
}

function drawRun(run, el) {
  const total = run.rounds_total;
  const progress = total
    ? `<progress max="${total}" value="${run.rounds_done}"></progress>
       <span class="progress">round ${run.last_round ?? 0} of ${total}</span>`
    : `<span class="progress">${run.rounds_done} rounds</span>`;
  el.querySelector(".head").innerHTML = `<h2>${esc(run.name)}</h2>
    <span class="badge ${esc(run.state)}">${esc(run.state)}</span> ${progress}
    <span class="muted">last write ${ago(run.seconds_since_write)}</span>`;
  const r = run.rounds;
  const x = r.round;
  const xaxis = countAxis("round", x.length);
  draw(el.querySelector('[data-chart="accuracy"]'), [
    { x, y: r.global_accuracy, name: "global", mode: "lines+markers" },
    { x, y: r.personalized_accuracy, name: "personalized", mode: "lines+markers" },
  ], layout("accuracy (held-out, mean over clients)", { xaxis, yaxis: { tickformat: ".0%" } }));
  draw(el.querySelector('[data-chart="upload"]'), [
    { x, y: r.upload_bytes, name: "bytes uploaded", type: "bar" },
  ], layout("bytes uploaded per round", { xaxis }));
  const reasons = Object.keys(r.rejected);
  const rejected = reasons.length
    ? reasons.map((k) => ({ x, y: r.rejected[k], name: k, type: "bar" }))
    : [{ x, y: r.rejected_total, name: "none rejected", type: "bar" }];
  draw(el.querySelector('[data-chart="rejected"]'), rejected,
    layout("rejected replies by reason", { xaxis, barmode: "stack" }));
  draw(el.querySelector('[data-chart="seconds"]'), [
    { x, y: r.seconds, name: "round time", mode: "lines+markers" },
  ], layout("round time (s)", { xaxis }));

  let final = "";
  if (run.final) {
    const rows = Object.entries(run.final)
      .map(([k, v]) => `<tr><td>${esc(k.replaceAll("_", " "))}</td><td>${pct(v)}</td></tr>`);
    final += `<h3>Final accuracy</h3><table class="final-table"><tbody>${rows.join("")}</tbody></table>`;
  }
  if (run.comparisons.length) {
    const rows = run.comparisons.map((c) => `<tr><td>${esc(c.name.replaceAll("_", " "))}</td>
      <td>${pts(c.mean_diff)}</td><td>[${pts(c.low)}, ${pts(c.high)}]</td><td>${num(c.clients)}</td></tr>`);
    final += `<h3>Paired comparisons</h3><table class="comparisons"><thead><tr><th>comparison</th>
      <th>mean diff (pts)</th><th>95% interval</th><th>clients</th></tr></thead>
      <tbody>${rows.join("")}</tbody></table>`;
  }
  el.querySelector(".final").innerHTML = final;
  el.querySelector(".devices").innerHTML = run.devices ? deployedDevices(run.devices) : "";
  const files = run.files.map((f) => `<a href="/files?run=${encodeURIComponent(run.id)}&name=${
    encodeURIComponent(f.name)}">${esc(f.name)}</a> <span class="muted">${bytes(f.bytes)}</span>`);
  const ckpt = run.checkpoints.length
    ? ` <span class="muted">· checkpoints: ${run.checkpoints.map(esc).join(", ")}</span>` : "";
  el.querySelector(".files").innerHTML = files.length || ckpt
    ? `<h3>Files</h3>${files.join(" ")}${ckpt}` : "";
}

function deployedDevices(rows) {
  const body = rows.map((d) => `<tr><td>node ${esc(d.node)}</td><td>${num(d.examples_train)}</td>
    <td>${num(d.examples_heldout)}</td><td>${pct(d.global_accuracy)}</td>
    <td>${pct(d.personalized_accuracy_torch)}</td><td>${pct(d.personalized_accuracy_ort)}</td></tr>`);
  return `<h3>Devices of this deployment (devices.json)</h3><table class="deployed"><thead><tr>
    <th>device</th><th>train</th><th>held-out</th><th>global</th><th>personalized (torch)</th>
    <th>personalized (ORT)</th></tr></thead><tbody>${body.join("")}</tbody></table>`;
}

function drawRuns(runs) {
  const view = document.getElementById("view-runs");
  view.querySelector(".empty").hidden = runs.length > 0;
  const ids = new Set(runs.map((r) => r.id));
  for (const el of view.querySelectorAll("section.run")) {
    if (!ids.has(el.dataset.run)) { el.remove(); delete seen["run:" + el.dataset.run]; }
  }
  for (const run of runs) {
    const el = runSection(run, view);
    if (changed("run:" + run.id, run)) drawRun(run, el);
  }
}

// ---- Devices -------------------------------------------------------------------------
function drawDevices(devices, runs) {
  const view = document.getElementById("view-devices");
  let html = "";
  if (!devices) {
    html = `<p class="muted">No registry given: start the console with --registry DIR to see
      the devices' signed reports.</p>`;
  } else {
    const rows = devices.devices.map((d) => {
      const flags = [d.quiet ? '<span class="badge quiet">quiet</span>' : "",
        d.failing ? '<span class="badge failing">failing</span>' : ""].join(" ");
      return `<tr class="${d.quiet ? "quiet" : ""} ${d.failing ? "failing" : ""}" data-device="${esc(d.device)}">
        <td><code>${esc(d.device)}</code></td><td>${ago(d.seconds_ago)}</td><td>v${esc(d.version)}
        <span class="muted">${d.on_candidate ? "candidate" : "stable"}</span></td><td>${esc(d.channel)}</td>
        <td>${pct(d.accuracy)}</td><td>${pct(d.stable_accuracy)}</td><td>${pct(d.candidate_accuracy)}</td>
        <td>${num(d.failures)} / ${num(d.examples)}</td><td>${num(d.rollbacks)}</td><td>${num(d.reports)}</td>
        <td>${flags}</td></tr>`;
    });
    const quiet = devices.devices.filter((d) => d.quiet).length;
    html = `<div class="card"><div class="head"><h2>Devices</h2><span class="muted">
      ${devices.devices.length} reporting, ${quiet} quiet (no report for
      ${Math.round(devices.quiet_after / 60)} min)</span></div>
      <table id="devices-table"><thead><tr><th>device (key id)</th><th>last seen</th>
      <th>installed</th><th>channel</th><th>accuracy (installed)</th><th>stable</th>
      <th>candidate</th><th>failures / examples</th><th>rollbacks</th><th>reports</th><th></th>
      </tr></thead><tbody>${rows.join("")}</tbody></table>
      <p class="muted">From each device's latest signed report: held-out accuracy of the stable
      and the candidate version on its own data, failed inferences of the version it runs.</p></div>`;
  }
  for (const run of runs.filter((r) => r.devices)) {
    html += `<div class="card"><h2>${esc(run.name)}</h2>${deployedDevices(run.devices)}</div>`;
  }
  view.innerHTML = html;
}

// ---- Rollouts ------------------------------------------------------------------------
function drawRollouts(rollouts, actions) {
  const view = document.getElementById("view-rollouts");
  if (!rollouts) {
    view.innerHTML = `<p class="muted">No registry given: start the console with --registry DIR
      to see its rollouts.</p>`;
    return;
  }
  if (!rollouts.channels.length) {
    view.innerHTML = '<p class="muted">The registry has no channel yet.</p>';
    return;
  }
  view.innerHTML = "";
  for (const ch of rollouts.channels) {
    const el = document.createElement("section");
    el.className = "card channel";
    el.dataset.channel = ch.name;
    const g = ch.guardrail;
    const s = ch.summary;
    const halted = ch.halted
      ? `<p class="reason">Halted ${new Date(ch.halted.at * 1000).toISOString().slice(0, 19)}Z:
         ${esc(ch.halted.reason)}</p>` : "";
    const stages = ch.fractions.map(([t, f]) =>
      `${new Date(t * 1000).toISOString().slice(0, 16)}Z → ${Math.round(f * 100)}%`).join(" · ");
    el.innerHTML = `<div class="head"><h2>channel ${esc(ch.name)}</h2>
        <span class="badge ${ch.halted && !ch.candidate ? "halted" : ""}">${esc(ch.stage)}</span>
        ${ch.expired ? '<span class="badge expired">channel file expired</span>' : ""}</div>
      <table class="channel-facts"><tbody>
        <tr><td>stable / candidate</td><td>v${esc(ch.stable)} / ${ch.candidate ? "v" + esc(ch.candidate) : "none"}</td></tr>
        <tr><td>cohort fraction</td><td>${ch.candidate ? pct(ch.fraction) : "–"}</td></tr>
        <tr><td>exposed devices (in the cohort, of ${num(ch.known_devices)} known)</td><td class="exposed">${num(ch.exposed)}</td></tr>
        <tr><td>devices counted by the guardrail</td><td>${num(ch.counted)}</td></tr>
        <tr><td>paired difference, 95% interval</td><td>${s ? pts(s.mean) + " [" + pts(s.low) + ", " + pts(s.high) + "] pts" : "–"}</td></tr>
        <tr><td>failure rate (trimmed)</td><td>${s ? pct(s.failure_rate) : "–"}</td></tr>
        <tr><td>guardrail</td><td>${g ? `halts below −${pts(g.threshold).slice(1)} pts or above ${pct(g.max_failure_rate)} failures, from ${g.min_devices} devices` : "–"}</td></tr>
        <tr><td>signed channel file</td><td>version ${esc(ch.file_version)}, expires ${esc(ch.expires_at)}</td></tr>
        <tr><td>stages</td><td>${stages || "–"}</td></tr>
      </tbody></table>${halted}
      ${ch.verdict ? `<p class="reason">The guardrail would halt: ${esc(ch.verdict)}</p>` : ""}
      <div class="chart" data-chart="interval"></div>`;
    if (actions && ch.candidate) {
      const box = document.createElement("div");
      box.className = "actions";
      box.innerHTML = `<label>fraction <input type="number" min="0" max="1" step="0.05"
        value="${Math.min(1, ch.fraction * 2).toFixed(2)}"></label>
        <button class="promote">Promote</button><button class="halt">Halt</button>
        <span class="action-result muted"></span>`;
      box.querySelector(".promote").onclick = () => act(ch.name, "promote",
        { fraction: Number(box.querySelector("input").value) }, box);
      box.querySelector(".halt").onclick = () => {
        if (confirm(`Halt channel ${ch.name} and revert its devices to v${ch.stable}?`)) {
          act(ch.name, "halt", {}, box);
        }
      };
      el.appendChild(box);
    }
    view.appendChild(el);
    const iv = ch.interval;
    // x: reports received (as `fedadapt rollout status` plots it); a fleet's reports can
    // land within a millisecond, where a time axis would stack them; the time is in the hover
    const traces = [
      { x: iv.reports, y: iv.high, name: "95% interval", mode: "lines", line: { width: 0 },
        showlegend: false, hoverinfo: "skip" },
      { x: iv.reports, y: iv.low, name: "95% interval", mode: "lines", line: { width: 0 },
        fill: "tonexty", fillcolor: "rgba(31,119,180,0.25)" },
      { x: iv.reports, y: iv.mean, name: "paired difference (candidate − stable)",
        mode: "lines+markers", text: iv.at, hovertemplate: "%{y:+.3f} after %{x} reports, %{text}" },
    ];
    const shapes = g ? [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: -g.threshold,
      y1: -g.threshold, line: { color: "#a3261b", dash: "dash" } }] : [];
    draw(el.querySelector('[data-chart="interval"]'), traces, layout(
      "guardrail: paired difference and its 95% interval as reports came in",
      { xaxis: countAxis("reports received", iv.reports.length), shapes }));
  }
}

async function act(channel, action, body, box) {
  const out = box.querySelector(".action-result");
  try {
    const r = await fetch(`/api/rollouts/${encodeURIComponent(channel)}/${action}`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Fedadapt-Console": "1" },
      body: JSON.stringify(body),
    });
    const answer = await r.json();
    out.textContent = answer.message || answer.error;
  } catch (e) {
    out.textContent = "the console did not answer: " + e.message;
  }
}

// ---- the page --------------------------------------------------------------------------
function drawNotices(state) {
  const lines = [...state.notices];
  for (const run of state.runs) lines.push(...run.notices);
  if (state.devices) lines.push(...state.devices.notices);
  if (state.rollouts) lines.push(...state.rollouts.notices);
  showNotices([...new Set(lines)]);
}
function showNotices(lines) {
  if (!changed("notices", lines)) return;
  document.getElementById("notices").innerHTML =
    lines.map((l) => `<li class="notice" title="${esc(l)}">${esc(l)}</li>`).join("");
}

function render(state) {
  drawNotices(state);
  drawRuns(state.runs);
  if (changed("devices", [state.devices, state.runs.map((r) => r.devices)])) {
    drawDevices(state.devices, state.runs);
  }
  if (changed("rollouts", [state.rollouts, state.actions])) {
    drawRollouts(state.rollouts, state.actions);
  }
  document.getElementById("updated").textContent =
    "updated " + new Date(state.generated_at * 1000).toLocaleTimeString();
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

async function poll() {
  try {
    const r = await fetch("/api/state", { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    showNotices(["the console did not answer (" + e.message + "); retrying"]);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function showView() {
  const name = (location.hash || "#runs").slice(1);
  const view = ["runs", "devices", "rollouts"].includes(name) ? name : "runs";
  for (const el of document.querySelectorAll("section.view")) {
    el.hidden = el.id !== "view-" + view;
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === view);
  }
  // a chart drawn while its view was hidden has no width: fit it now that it shows
  for (const div of document.querySelectorAll(`#view-${view} .js-plotly-plot`)) {
    Plotly.Plots.resize(div);
  }
}

window.addEventListener("hashchange", showView);
showView();
poll();

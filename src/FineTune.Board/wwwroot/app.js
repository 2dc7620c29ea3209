// FineTune Board front end: plain DOM and fetch, no framework, nothing from the network but this board.
'use strict';
let csrf = '';
const page = () => document.getElementById('page');
const current = () => document.getElementById('pipeline').value;
let leave = () => {};   // what the shown page must stop (event streams) when another page opens

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
}
async function api(path, body) {
  const init = body === undefined ? {} : { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf }, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const json = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok && !json.errors) throw new Error(json.error || r.statusText);
  return json;
}
const P = (suffix = '') => `/api/pipelines/${encodeURIComponent(current())}${suffix}`;
const stateClass = s => 's-' + String(s).replace(/ /g, '-');
// States carry a symbol as well as a colour, so they read without colour too.
const mark = s => ({ 'up to date': '✓', 'stale': '●', 'never ran': '○', 'running': '▶', 'failed': '✗', 'ran': '✓', 'succeeded': '✓', 'queued': '…',
  'cancelled': '■', 'interrupted': '‼' }[s] || '·');
const stateSpan = s => el('span', { class: 'state ' + stateClass(s), 'data-state': s }, `${mark(s)} ${s}`);
const fmt = v => typeof v === 'number' ? (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : +v.toPrecision(5)) : String(v);

// ---- Pipelines ----
function graph(stages) {
  const depth = {}, col = {};
  for (const s of stages) depth[s.name] = Math.max(0, ...s.reads.map(r => (depth[r] ?? 0) + 1));
  const W = 150, H = 46, gx = 40, gy = 18, rows = {};
  for (const s of stages) { const d = depth[s.name]; col[s.name] = rows[d] = (rows[d] ?? -1) + 1; }
  const maxRow = Math.max(...Object.values(rows)) + 1, maxDepth = Math.max(...Object.values(depth)) + 1;
  const ns = 'http://www.w3.org/2000/svg', svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'graph'); svg.setAttribute('width', maxDepth * (W + gx)); svg.setAttribute('height', maxRow * (H + gy));
  const pos = n => [depth[n] * (W + gx), col[n] * (H + gy)];
  for (const s of stages) for (const r of s.reads) {
    const [x1, y1] = pos(r), [x2, y2] = pos(s.name), l = document.createElementNS(ns, 'line');
    l.setAttribute('x1', x1 + W); l.setAttribute('y1', y1 + H / 2); l.setAttribute('x2', x2); l.setAttribute('y2', y2 + H / 2); svg.append(l);
  }
  for (const s of stages) {
    const [x, y] = pos(s.name), g = document.createElementNS(ns, 'g');
    g.setAttribute('class', s.state.replace(/ /g, '-')); g.setAttribute('data-stage', s.name);
    const rect = document.createElementNS(ns, 'rect');
    rect.setAttribute('x', x); rect.setAttribute('y', y); rect.setAttribute('width', W); rect.setAttribute('height', H); rect.setAttribute('rx', 6);
    const t1 = document.createElementNS(ns, 'text'); t1.setAttribute('x', x + 8); t1.setAttribute('y', y + 18); t1.textContent = s.name + (s.kind !== s.name ? ` (${s.kind})` : '');
    const t2 = document.createElementNS(ns, 'text'); t2.setAttribute('x', x + 8); t2.setAttribute('y', y + 36); t2.textContent = `${mark(s.state)} ${s.state}`;
    g.append(rect, t1, t2); svg.append(g);
  }
  return svg;
}
async function pipelinesPage() {
  const { pipelines } = await api('/api/pipelines');
  const root = el('div', {}, el('h2', {}, 'Pipelines'));
  for (const p of pipelines) {
    const box = el('section', { 'data-pipeline': p.name }, el('h3', {}, p.name));
    if (p.errors) { box.append(el('ul', { class: 'errors' }, p.errors.map(e => el('li', {}, e.text || e.message)))); root.append(box); continue; }
    if (p.lock_holder) box.append(el('p', { class: 'muted' }, `run lock held: ${p.lock_holder}`));
    box.append(graph(p.stages));
    box.append(el('table', {}, el('tr', {}, ['stage', 'state', 'why', 'fingerprint', 'metrics'].map(h => el('th', {}, h))),
      p.stages.map(s => el('tr', { 'data-stage': s.name }, el('td', {}, s.name), el('td', {}, stateSpan(s.state)), el('td', { class: 'why' }, s.reason),
        el('td', {}, s.fingerprint || ''), el('td', {}, Object.entries(s.metrics).slice(0, 5).map(([k, v]) => `${k}=${fmt(v)}`).join(', '))))));
    root.append(box);
  }
  page().replaceChildren(root);
}

// ---- Edit ----
async function editPage() {
  const { yaml, sha256 } = await api(P('/yaml'));
  let loadedFrom = sha256, timer = 0;
  const gutter = el('div', { class: 'gutter' }), area = el('textarea', { id: 'yaml', spellcheck: 'false' });
  area.value = yaml;
  const errors = el('ul', { class: 'errors', id: 'errors' }), status = el('p', { id: 'edit-status' });
  const lines = (bad = new Set()) => {
    gutter.replaceChildren(...area.value.split('\n').map((_, i) => el('div', { class: bad.has(i + 1) ? 'bad' : '' }, i + 1)));
    gutter.scrollTop = area.scrollTop;
  };
  const show = res => {
    const bad = new Set((res.errors || []).map(e => e.line));
    lines(bad);
    errors.replaceChildren(...(res.errors || []).map(e => el('li', { 'data-line': e.line, onclick: () => goTo(e.line, e.column) }, e.text || e.message)));
    status.className = res.valid ? 'ok' : 'err';
    status.textContent = res.valid ? '✓ valid' : `✗ ${res.errors.length} error(s)`;
  };
  const goTo = (line, column) => {
    const before = area.value.split('\n').slice(0, line - 1).join('\n').length + (line > 1 ? 1 : 0);
    area.focus(); area.setSelectionRange(before + column - 1, before + column - 1);
  };
  const check = async () => show(await api(P('/validate'), { yaml: area.value }));
  area.addEventListener('input', () => { lines(); clearTimeout(timer); timer = setTimeout(check, 300); });
  area.addEventListener('scroll', () => { gutter.scrollTop = area.scrollTop; });
  const save = async () => {
    const res = await api(P('/save'), { yaml: area.value, sha256: loadedFrom }).catch(e => ({ error: e.message }));
    if (res.saved) { loadedFrom = res.sha256; status.className = 'ok'; status.textContent = '✓ saved'; errors.replaceChildren(); }
    else if (res.errors) { show({ valid: false, errors: res.errors }); status.textContent = '✗ not saved: ' + res.error; }
    else { status.className = 'err'; status.textContent = '✗ ' + res.error; }
  };
  page().replaceChildren(el('h2', {}, `Edit ${current()}/pipeline.yaml`),
    el('p', { class: 'muted' }, 'Checked as you type, as `finetune validate` checks it. Save writes your text as typed (comments and order kept) through a temp file and a rename, and only when it is valid.'),
    el('div', { class: 'editor' }, gutter, area), el('div', { class: 'row' }, el('button', { id: 'save', onclick: save }, 'Save'), status), errors);
  lines(); check();
}

// ---- Run ----
function runLine(r) {
  return el('tr', { 'data-run': r.id }, el('td', {}, r.id), el('td', {}, r.pipeline), el('td', {}, r.stage_option || 'all'), el('td', {}, r.force ? 'yes' : ''),
    el('td', {}, stateSpan(r.state)), el('td', {}, r.stage || ''), el('td', { class: 'err' }, r.message || ''),
    el('td', {}, r.state === 'queued' || r.state === 'running' ? el('button', { class: 'stop', onclick: async () => { await api(`/api/runs/${r.id}/stop`, {}); runPage(); } }, 'Stop') : ''));
}
async function runPage() {
  const p = await api(P());
  const { runs } = await api('/api/runs');
  const stage = el('select', { id: 'run-stage' }, el('option', { value: '' }, 'whole pipeline'), (p.stages || []).map(s => el('option', { value: s.name }, `up to ${s.name}`)));
  const force = el('input', { type: 'checkbox', id: 'run-force' }), msg = el('p', { id: 'run-msg', class: 'err' });
  const start = async () => {
    try { await api('/api/runs', { pipeline: current(), stage: stage.value || null, force: force.checked }); location.hash = '#train'; }
    catch (e) { msg.textContent = e.message; }
  };
  page().replaceChildren(el('h2', {}, `Run ${current()}`),
    el('p', { class: 'muted' }, 'Runs wait in one queue and take the pipeline\'s run lock, as `finetune run` does. Stop acts as Ctrl-C: the training step in flight finishes and is saved as a checkpoint.'),
    el('div', { class: 'row' }, stage, el('label', {}, force, ' --force (re-run the selected stage, or all)'), el('button', { id: 'start', onclick: start }, 'Start'), msg),
    el('table', { id: 'runs' }, el('tr', {}, ['run', 'pipeline', 'stage', 'force', 'state', 'at stage', 'message', ''].map(h => el('th', {}, h))), runs.map(runLine)));
  const timer = setInterval(async () => {
    if (!document.getElementById('runs')) return;
    const { runs } = await api('/api/runs');
    document.getElementById('runs').replaceChildren(el('tr', {}, ['run', 'pipeline', 'stage', 'force', 'state', 'at stage', 'message', ''].map(h => el('th', {}, h))), ...runs.map(runLine));
  }, 1500);
  leave = () => clearInterval(timer);
}

// ---- Live training: charts on <canvas>, drawn here ----
function chart(canvas, title, series) {
  const ctx = canvas.getContext('2d'), w = canvas.width, h = canvas.height, m = { l: 52, r: 10, t: 20, b: 24 };
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = '#1d2330'; ctx.font = '12px system-ui'; ctx.fillText(title, m.l, 14);
  const pts = series.flatMap(s => s.points);
  if (pts.length === 0) { ctx.fillStyle = '#6b7385'; ctx.fillText('no points yet', w / 2 - 30, h / 2); return; }
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const X = x => m.l + (x - x0) / (x1 - x0) * (w - m.l - m.r), Y = y => h - m.b - (y - y0) / (y1 - y0) * (h - m.t - m.b);
  ctx.strokeStyle = '#c4cad6'; ctx.beginPath(); ctx.moveTo(m.l, m.t); ctx.lineTo(m.l, h - m.b); ctx.lineTo(w - m.r, h - m.b); ctx.stroke();
  ctx.fillStyle = '#6b7385'; ctx.fillText(fmt(y1), 2, m.t + 4); ctx.fillText(fmt(y0), 2, h - m.b); ctx.fillText(`step ${x0}`, m.l, h - 6); ctx.fillText(`${x1}`, w - m.r - 24, h - 6);
  series.forEach((s, i) => {
    ctx.strokeStyle = ctx.fillStyle = s.color; ctx.setLineDash(i ? [5, 3] : []); ctx.beginPath();
    s.points.forEach((p, j) => j ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))); ctx.stroke();
    s.points.forEach(p => ctx.fillRect(X(p[0]) - 2, Y(p[1]) - 2, 4, 4));
    ctx.setLineDash([]); ctx.fillText(`${i ? '- - ' : '— '}${s.name}`, w - m.r - 110, m.t + 12 * i + 4);
  });
}
async function trainPage() {
  const info = await api(P('/training'));
  let entries = info.entries || [];
  const loss = el('canvas', { id: 'loss-chart', width: 520, height: 240, 'data-points': 0 }), lr = el('canvas', { id: 'lr-chart', width: 320, height: 240 }),
    grad = el('canvas', { id: 'grad-chart', width: 320, height: 240 });
  const stats = el('p', { class: 'stats', id: 'train-stats' }), task = el('p', { id: 'task' }), log = el('pre', { class: 'log', id: 'log' }), head = el('p', { id: 'train-source', class: 'muted' });
  const draw = () => {
    const pick = k => entries.filter(e => typeof e[k] === 'number').map(e => [e.current_steps, e[k]]);
    chart(loss, 'loss', [{ name: 'loss', color: '#1f5fbf', points: pick('loss') }, { name: 'eval_loss', color: '#c2410c', points: pick('eval_loss') }]);
    loss.dataset.points = pick('loss').length;
    chart(lr, 'learning rate', [{ name: 'lr', color: '#17753a', points: pick('lr') }]);
    chart(grad, 'grad norm', [{ name: 'grad_norm', color: '#7c3aed', points: pick('grad_norm') }]);
    const last = entries.filter(e => typeof e.loss === 'number').at(-1);
    stats.replaceChildren(...(last ? [`step ${last.current_steps}/${last.total_steps}`, `loss ${fmt(last.loss)}`, `lr ${fmt(last.lr)}`, `grad norm ${fmt(last.grad_norm ?? NaN)}`,
      `${fmt(last.throughput ?? 0)} tokens/s`, `elapsed ${last.elapsed_time}`, `ETA ${last.remaining_time}`] : ['no training log yet']).map(t => el('span', {}, t)));
  };
  page().replaceChildren(el('h2', {}, `Live training: ${current()}${info.stage ? ' / ' + info.stage : ''}`), head, el('div', { class: 'charts' }, loss, lr, grad), stats, task, log);
  head.textContent = info.source === 'live' ? 'training now (trainer_log.jsonl as it grows)' : info.source === 'finished' ? 'finished run (trainer_log.jsonl of the cached output)' : `no training log: ${info.reason || 'the train stage has not run'}`;
  draw();
  if (!info.run) return;
  const src = new EventSource(`/api/runs/${info.run.id}/events`);
  const add = line => { log.textContent += line + '\n'; log.textContent = log.textContent.split('\n').slice(-200).join('\n'); log.scrollTop = log.scrollHeight; };
  src.addEventListener('metrics_reset', () => { entries = []; draw(); });
  src.addEventListener('metrics', e => { const d = JSON.parse(e.data); if (d.stage === info.stage || !info.stage) { entries.push(d.entry); head.textContent = 'training now'; draw(); } });
  src.addEventListener('task', e => { const d = JSON.parse(e.data); task.textContent = `${d.description} — ${Math.round(100 * d.done / Math.max(d.total, 1e-9))} %`; });
  src.addEventListener('info', e => add(JSON.parse(e.data).line));
  src.addEventListener('stage_start', e => { const d = JSON.parse(e.data); add(`▶ ${d.stage} (${d.why})`); });
  src.addEventListener('stage_done', e => { const d = JSON.parse(e.data); add(`  ${d.stage}: ${d.state} ${d.seconds ? d.seconds + ' s' : ''} ${d.reason}`); });
  src.addEventListener('state', e => { const d = JSON.parse(e.data); add(`[${d.state}] ${d.message || ''}`);
    if (['succeeded', 'failed', 'cancelled'].includes(d.state)) head.textContent = `run ${d.state}: trainer_log.jsonl as it was written`;
    const s = document.getElementById('run-state'); if (s) s.replaceChildren(stateSpan(d.state)); });
  src.addEventListener('end', () => src.close());
  page().insertBefore(el('p', {}, `run ${info.run.id}: `, el('span', { id: 'run-state' }, stateSpan(info.run.state)), ' ',
    el('button', { onclick: () => api(`/api/runs/${info.run.id}/stop`, {}) }, 'Stop')), head);
  leave = () => src.close();
}

// ---- Data ----
async function dataPage() {
  page().replaceChildren(el('p', {}, 'preparing samples (download and register run if they are not cached)…'));
  const d = await api(P('/data?n=3'));
  const root = el('div', {}, el('h2', {}, `Data: ${current()}`),
    el('h3', {}, 'dataset_info.json entries'), el('pre', { class: 'sample' }, JSON.stringify(d.datasets, null, 2)));
  if (d.error) root.append(el('p', { class: 'err', id: 'data-error' }, d.error));
  else {
    root.append(el('p', {}, `template ${d.template}, cutoff_len ${d.cutoff_len}; ${d.samples.length} sequences of ${d.samples_total} samples. `,
      el('span', { class: 'trained' }, '[trained]'), ' tokens are underlined and boxed in [ ]; ', el('span', { class: 'masked' }, 'masked'), ' ones are plain.'));
    for (const s of d.samples)
      root.append(el('h4', {}, `${s.source}${s.title ? ' ' + s.title : ''}: ${s.tokens} tokens, ${s.trained} trained${s.truncated ? ', truncated' : ''}`),
        el('div', { class: 'sample' }, s.segments.map(g => g.trained ? el('span', { class: 'trained', title: `${g.tokens} trained tokens` }, `[${g.text}]`) : el('span', { class: 'masked' }, g.text))));
  }
  page().replaceChildren(root);
}

// ---- Evaluate and compare ----
async function evaluatePage() {
  const d = await api(P('/evaluate'));
  const root = el('div', {}, el('h2', {}, `Evaluate: ${current()}`));
  // Across commits first: one row per stage metric, one column per commit (newest first), then what changed.
  root.append(el('h3', {}, 'Metrics across commits (pipeline.lock history)'));
  const names = [...new Set(d.commits.flatMap(c => Object.keys(c.stages)))];
  const metricKeys = names.flatMap(n => [...new Set(d.commits.flatMap(c => Object.keys(c.stages[n]?.metrics || {})))].map(m => [n, m]));
  root.append(el('table', { id: 'compare' }, el('tr', {}, el('th', {}, 'stage.metric'), d.commits.map(c => el('th', {}, c.title))),
    metricKeys.map(([n, m]) => el('tr', {}, el('td', {}, `${n}.${m}`), d.commits.map((c, i) => {
      const v = c.stages[n]?.metrics?.[m], older = d.commits[i + 1]?.stages[n]?.metrics?.[m];
      return el('td', {}, v === undefined ? '' : fmt(v) + (older !== undefined && older !== v ? ` (was ${fmt(older)})` : ''));
    }))),
    el('tr', {}, el('td', {}, 'parameters changed from the commit before'), d.commits.map(c => el('td', { class: 'changed' },
      Object.entries(c.stages).flatMap(([n, s]) => s.changed).filter((x, i, a) => a.indexOf(x) === i).join('; '))))));
  for (const e of d.evals) {
    root.append(el('h3', {}, `${e.stage}: `, stateSpan(e.state)), el('p', { class: 'muted' }, e.reason));
    for (const k of ['eval_results', 'predict_results']) if (e[k]) root.append(el('h4', {}, k + '.json'), el('table', {}, Object.entries(e[k]).map(([m, v]) => el('tr', {}, el('td', {}, m), el('td', {}, fmt(v))))));
    if (e.predictions) root.append(el('h4', {}, 'generated_predictions.jsonl (first 10)'), el('table', {}, el('tr', {}, el('th', {}, 'prompt'), el('th', {}, 'label'), el('th', {}, 'predict')),
      e.predictions.map(p => el('tr', {}, el('td', {}, String(p.prompt).slice(-120)), el('td', {}, p.label), el('td', {}, p.predict)))));
  }
  page().replaceChildren(root);
}

// ---- Chat ----
async function chatPage() {
  const prompt = el('input', { type: 'text', id: 'chat-prompt', value: 'Who are you?' }), system = el('input', { type: 'text', id: 'chat-system', placeholder: 'system prompt (default: the template\'s)' });
  const thinking = el('input', { type: 'checkbox', id: 'chat-thinking' }), template = el('input', { type: 'text', id: 'chat-template', placeholder: 'template (default: data.template)' });
  const sides = { base: el('div', { class: 'answer', id: 'answer-base' }), tuned: el('div', { class: 'answer', id: 'answer-tuned' }) };
  const labels = { base: el('h3', {}, 'base model'), tuned: el('h3', {}, 'fine-tuned model') };
  const ask = async which => {
    const out = sides[which]; out.textContent = ''; out.dataset.done = '';
    const r = await fetch(P('/chat'), { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify({ model: which, prompt: prompt.value, system: system.value || null, template: template.value || null, enable_thinking: thinking.checked, max_new_tokens: 160 }) });
    if (!r.ok) { out.textContent = '✗ ' + ((await r.json().catch(() => ({}))).error || r.statusText); out.dataset.done = 'error'; return; }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        const type = /^event: (.*)$/m.exec(block)?.[1], data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? 'null');
        if (type === 'model') labels[which].textContent = `${data.label}`;
        if (type === 'text') out.textContent += data;
        if (type === 'done') out.dataset.done = 'yes';
        if (type === 'error') { out.textContent += '\n✗ ' + data; out.dataset.done = 'error'; }
      }
    }
  };
  const send = () => Promise.all([ask('base'), ask('tuned')]);
  page().replaceChildren(el('h2', {}, `Chat: ${current()}`),
    el('p', { class: 'muted' }, 'The same prompt to the base model (download stage) and the fine-tuned one (merge stage, else the adapter), streamed, through `finetune chat`\'s code. Each message is a fresh one-turn chat.'),
    el('div', { class: 'row' }, prompt, el('button', { id: 'chat-send', onclick: send }, 'Send')),
    el('div', { class: 'row' }, system, ' ', template, ' ', el('label', {}, thinking, ' enable_thinking')),
    el('div', { class: 'sides' }, el('div', { class: 'side' }, labels.base, sides.base), el('div', { class: 'side' }, labels.tuned, sides.tuned)));
}

// ---- Artifacts ----
async function artifactsPage() {
  const d = await api(P('/artifacts'));
  const root = el('div', {}, el('h2', {}, `Artifacts: ${current()}`), el('p', { class: 'muted' }, 'Outputs of up-to-date stages in the cache, each file with its size and SHA-256 from the cache manifest.'));
  if (d.stages.length === 0) root.append(el('p', {}, 'no up-to-date stage outputs yet; run the pipeline.'));
  for (const s of d.stages)
    root.append(el('h3', {}, `${s.stage} (${s.kind}) — ${(s.bytes / 1e6).toFixed(2)} MB, output ${s.output_hash.slice(0, 12)}`),
      el('table', {}, el('tr', {}, ['file', 'bytes', 'sha256'].map(h => el('th', {}, h))), s.files.map(f => el('tr', {},
        el('td', {}, el('a', { href: `${P('/artifacts/' + encodeURIComponent(s.stage) + '/file')}?path=${encodeURIComponent(f.path)}`, download: f.path.split('/').at(-1) }, f.path), f.report ? ' (report)' : ''),
        el('td', {}, f.size), el('td', {}, el('code', {}, f.sha256))))));
  page().replaceChildren(root);
}

const pages = { pipelines: pipelinesPage, edit: editPage, run: runPage, train: trainPage, data: dataPage, evaluate: evaluatePage, chat: chatPage, artifacts: artifactsPage };
async function show() {
  leave(); leave = () => {};
  const name = (location.hash.slice(1) || 'pipelines');
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('current', a.getAttribute('href') === '#' + name);
  try { await (pages[name] || pipelinesPage)(); }
  catch (e) { page().replaceChildren(el('p', { class: 'err' }, '✗ ' + e.message)); }
}
addEventListener('DOMContentLoaded', async () => {
  csrf = (await api('/api/session')).csrf;
  const { pipelines } = await api('/api/pipelines');
  const select = document.getElementById('pipeline');
  select.replaceChildren(...pipelines.map(p => el('option', { value: p.name }, p.name)));
  const wanted = new URLSearchParams(location.search).get('pipeline');
  if (wanted) select.value = wanted;
  select.addEventListener('change', show);
  addEventListener('hashchange', show);
  show();
});

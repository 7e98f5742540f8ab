// The console's entry point: polls the API, keeps every panel current, and never leaves a blank page.
import { ApiError, call, getJson, getToken, setToken } from './api.js';
import { drawChart } from './chart.js';
import { degrees, renderGallery } from './gallery.js';
import { newestPrompts, renderPromptList, wireUpload } from './prompts.js';
import { assess, showStatus } from './status.js';
import { showSample } from './viewer.js';

const POLL_MS = 3000; // statistics, chart, gallery and prompt list refresh
const narrow = window.matchMedia('(max-width: 900px)');
const gallerySize = () => (narrow.matches ? 8 : 24); // fewer cards on a phone
const $ = (id) => document.getElementById(id);
const ui = {
  pill: $('loop-state'), banner: $('banner'), chart: $('chart'), chartCaption: $('chart-caption'),
  gallery: $('gallery'), galleryEmpty: $('gallery-empty'), filterPrompt: $('filter-prompt'),
  filterVerdict: $('filter-verdict'), promptList: $('prompt-list'), promptCount: $('prompt-count'),
  viewer: $('viewer'), viewerCaption: $('viewer-caption'), poseUpright: $('pose-upright'),
  poseResting: $('pose-resting'), adapterLink: $('adapter-link'), promoted: $('promoted-label'), token: $('token-input'),
};
const view = { selected: null, pose: 'upright', fresh: new Set(), history: null };

const pct = (r) => (r === null || r === undefined ? '–' : `${(r * 100).toFixed(1)}%`);
const settle = (promise) => promise.catch((err) => (err instanceof ApiError ? err : new ApiError(0, String(err))));

async function readiness() {
  try {
    const response = await fetch('/readyz');
    return await response.json(); // 200 and 503 both carry {ready, checks}
  } catch (err) {
    return new ApiError(0, `cannot reach the DSO API (${err.message || err})`);
  }
}

function showFigures(stats) {
  $('fig-window').textContent = pct(stats.window.stability_rate);
  $('fig-total').textContent = pct(stats.totals.stability_rate);
  $('fig-version').textContent = stats.current_version === null ? 'base' : `v${stats.current_version}`;
  $('fig-rate').textContent = stats.throughput.labelled_per_s.toFixed(2);
}

function showHistory(history) {
  view.history = history;
  const points = drawChart(ui.chart, history);
  const canary = Number(ui.chart.dataset.canary) > 0
    ? "; purple: the canary's % stable on its probe set per scored version (filled ◆ promoted, ✕ refused)" : '';
  ui.chartCaption.textContent = points
    ? `stability rate of the last ${history.events} verdicts in ${history.buckets.length} time slices; dashed lines: adapter versions published${canary}`
    : 'waiting for verdicts…';
}

// "latest" is the promoted version (the one generators follow), not the newest publish
async function refreshAdapter() {
  try {
    const latest = await getJson('/v1/adapters/latest');
    ui.adapterLink.textContent = `download adapter v${latest.version}`;
    ui.adapterLink.href = latest.archive_url;
    ui.adapterLink.setAttribute('aria-disabled', 'false');
    const stable = latest.canary?.scores?.stable_ratio;
    ui.promoted.textContent = `promoted v${latest.version}`;
    ui.promoted.title = `generators follow v${latest.version}` + (stable === undefined ? '' : `; canary: ${pct(stable)} stable on its probe set`);
    ui.promoted.classList.remove('base');
  } catch (err) {
    if (err.status !== 404) throw err;
    const waiting = err.detail.includes('promoted');
    ui.adapterLink.textContent = waiting ? 'no adapter promoted yet (base model)' : 'no adapter published yet (base model)';
    ui.adapterLink.removeAttribute('href');
    ui.adapterLink.setAttribute('aria-disabled', 'true');
    ui.promoted.textContent = 'promoted: base model';
    ui.promoted.title = waiting ? err.detail : 'generators use the base model (version 0)';
    ui.promoted.classList.add('base');
  }
}

async function downloadAdapter(event) {
  if (!getToken()) return; // a plain link works when reads are open
  event.preventDefault(); // reads need the bearer header: fetch, then save
  const response = await call(ui.adapterLink.href);
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement('a'), { href: url, download: ui.adapterLink.href.split('/').slice(-2, -1)[0] + '.tar' });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function refreshPrompts() {
  const { total, items } = await newestPrompts();
  ui.promptCount.textContent = `${total} active`;
  renderPromptList(ui.promptList, items, view.fresh);
  const chosen = ui.filterPrompt.value;
  const options = items.map((p) => {
    const option = document.createElement('option');
    option.value = p.id;
    option.textContent = p.metadata.filename || p.id.slice(0, 12);
    return option;
  });
  const all = document.createElement('option');
  all.value = '';
  all.textContent = 'all prompts';
  ui.filterPrompt.replaceChildren(all, ...options);
  ui.filterPrompt.value = items.some((p) => p.id === chosen) ? chosen : '';
}

async function refreshGallery() {
  const query = new URLSearchParams({ limit: String(gallerySize()) });
  if (ui.filterPrompt.value) query.set('prompt_id', ui.filterPrompt.value);
  if (ui.filterVerdict.value) query.set('verdict', ui.filterVerdict.value);
  const page = await getJson(`/v1/samples?${query}`);
  const count = renderGallery(ui.gallery, page.items, view.selected?.id, select);
  ui.galleryEmpty.hidden = count > 0;
}

async function select(sample) {
  view.selected = sample;
  view.pose = 'upright';
  for (const node of ui.gallery.children) node.classList.toggle('selected', node.dataset.sampleId === sample.id);
  await drawSelected();
}

async function drawSelected() {
  const sample = view.selected;
  if (!sample) return;
  ui.poseResting.disabled = !sample.resting_mesh_url;
  ui.poseUpright.setAttribute('aria-pressed', String(view.pose === 'upright'));
  ui.poseResting.setAttribute('aria-pressed', String(view.pose === 'resting'));
  ui.viewerCaption.textContent = `${sample.outcome}, tilt ${degrees(sample.tilt_deg)}, rotation ${degrees(sample.rotation_deg)} · adapter v${sample.adapter_version} · ${view.pose === 'resting' ? 'final resting pose from the simulator' : 'as generated'}`;
  try {
    await showSample(ui.viewer, sample, view.pose);
  } catch (err) {
    ui.viewerCaption.textContent = `could not show this sample: ${err.detail || err.message}`;
  }
}

async function poll() {
  const [ready, stats, history] = await Promise.all([
    readiness(), settle(getJson('/v1/stats')), settle(getJson('/v1/stats/history')),
  ]);
  showStatus(ui.pill, ui.banner, assess(ready, stats));
  if (!(stats instanceof ApiError)) showFigures(stats);
  if (!(history instanceof ApiError)) showHistory(history);
  if (stats instanceof ApiError) return; // broker or auth problem: keep the last data on screen
  await Promise.allSettled([refreshGallery(), refreshPrompts(), refreshAdapter()]);
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

async function loop() {
  try {
    await poll();
  } catch (err) {
    showStatus(ui.pill, ui.banner, { pill: 'down', label: 'error', level: 'error', text: `Console error: ${err.message || err}` });
  }
  setTimeout(loop, POLL_MS);
}

ui.token.value = getToken();
ui.token.addEventListener('change', () => { setToken(ui.token.value); poll(); });
new ResizeObserver(() => { if (view.history) showHistory(view.history); }).observe(ui.chart);
narrow.addEventListener('change', () => refreshGallery().catch(() => {}));
ui.filterPrompt.addEventListener('change', refreshGallery);
ui.filterVerdict.addEventListener('change', refreshGallery);
ui.poseUpright.addEventListener('click', () => { view.pose = 'upright'; drawSelected(); });
ui.poseResting.addEventListener('click', () => { view.pose = 'resting'; drawSelected(); });
ui.adapterLink.addEventListener('click', (e) => { downloadAdapter(e).catch((err) => alert(err.detail || err.message)); });
wireUpload($('drop-zone'), $('file-input'), $('upload-message'), (ids) => {
  view.fresh = new Set(ids);
  refreshPrompts();
});
loop();

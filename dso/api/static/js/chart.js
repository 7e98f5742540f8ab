// The stability-rate chart: hand-written SVG, rate per time slice, adapter versions as dashed markers, and the
// canary's % stable on its fixed probe set per scored version (promoted: filled diamond, refused: cross).
const SVG = 'http://www.w3.org/2000/svg';
const H = 240;
const MIN_W = 300;
const PAD = { left: 40, right: 14, top: 22, bottom: 26 };
const LABEL_GAP = 30; // px between adapter labels; a marker closer than this to the last label stays unlabelled
const MARK = 5; // px half-size of a canary marker
const pct = (r) => `${Math.round(r * 100)}%`;

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** Draw ``history`` (GET /v1/stats/history) into ``svg``; returns how many points were drawn. */
export function drawChart(svg, history) {
  svg.replaceChildren();
  // one SVG unit per CSS pixel, so text keeps its size on a phone
  const W = Math.max(MIN_W, Math.round(svg.getBoundingClientRect().width) || 640);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const buckets = history.buckets || [];
  const t0 = buckets.length ? buckets[0].start : history.time - 60;
  const t1 = buckets.length ? buckets[buckets.length - 1].end : history.time;
  const span = Math.max(t1 - t0, 1e-6);
  const x = (t) => PAD.left + ((t - t0) / span) * (W - PAD.left - PAD.right);
  const y = (r) => PAD.top + (1 - r) * (H - PAD.top - PAD.bottom);

  const grid = el('g', { class: 'grid axis' });
  for (const r of [0, 0.25, 0.5, 0.75, 1]) {
    grid.append(el('line', { x1: PAD.left, x2: W - PAD.right, y1: y(r), y2: y(r) }));
    grid.append(el('text', { x: PAD.left - 6, y: y(r) + 4, 'text-anchor': 'end' }, `${Math.round(r * 100)}%`));
  }
  for (const [t, anchor] of [[t0, 'start'], [(t0 + t1) / 2, 'middle'], [t1, 'end']]) {
    grid.append(el('text', { x: x(t), y: H - 8, 'text-anchor': anchor }, clock(t)));
  }
  svg.append(grid);

  const shown = (history.adapters || []).filter((a) => a.created_at >= t0 && a.created_at <= t1);
  let lastLabel = { right: -Infinity, node: null };
  shown.forEach((a, i) => {
    const at = x(a.created_at);
    const mark = el('g', { class: 'version-mark', 'data-version': a.version });
    mark.append(el('line', { x1: at, x2: at, y1: PAD.top - 4, y2: H - PAD.bottom }));
    // labels sit right of their line, or left of it at the right edge; a crowded one is left out,
    // except the newest, which takes its neighbour's place
    const nearRight = at > W - PAD.right - LABEL_GAP;
    const left = nearRight ? at - LABEL_GAP : at;
    const newest = i === shown.length - 1;
    if (newest && lastLabel.node && left < lastLabel.right) lastLabel.node.remove();
    if (newest || left >= lastLabel.right) {
      const label = el('text', { x: nearRight ? at - 3 : at + 3, y: PAD.top - 8, 'text-anchor': nearRight ? 'end' : 'start' },
        `v${a.version}`);
      mark.append(label);
      lastLabel = { right: left + LABEL_GAP, node: label };
    }
    mark.append(el('title', {}, `adapter v${a.version} published ${clock(a.created_at)} (step ${a.step ?? '?'})`));
    svg.append(mark);
  });

  const points = buckets.filter((b) => b.stability_rate !== null);
  let d = '';
  let drawing = false;
  for (const b of buckets) {
    if (b.stability_rate === null) { drawing = false; continue; }
    const px = x((b.start + b.end) / 2), py = y(b.stability_rate);
    d += `${drawing ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`;
    drawing = true;
  }
  if (d) svg.append(el('path', { class: 'rate-line', d }));
  for (const b of points) {
    const dot = el('circle', { class: 'rate-dot', cx: x((b.start + b.end) / 2), cy: y(b.stability_rate), r: 3 });
    const judged = b.stable + b.unstable;
    dot.append(el('title', {}, `${Math.round(b.stability_rate * 100)}% of ${judged} (${clock(b.start)}–${clock(b.end)})`));
    svg.append(dot);
  }
  const canary = drawCanary(svg, history, t0, t1, x, y);
  svg.dataset.points = String(points.length);
  svg.dataset.versions = String(shown.length);
  svg.dataset.canary = String(canary.length);
  svg.dataset.promoted = String(history.promoted_version ?? 0);
  return points.length;
}

/** One marker per scored version at its decision time, joined by a dashed line; returns the points drawn. */
function drawCanary(svg, history, t0, t1, x, y) {
  const points = (history.canary || []).filter(
    (p) => p.stable_ratio !== null && p.stable_ratio !== undefined && p.decided_at >= t0 && p.decided_at <= t1);
  if (!points.length) return points;
  const d = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.decided_at).toFixed(1)},${y(p.stable_ratio).toFixed(1)}`).join('');
  svg.append(el('path', { class: 'canary-line', d }));
  for (const p of points) {
    const cx = x(p.decided_at), cy = y(p.stable_ratio);
    const mark = el('g', { class: `canary-mark ${p.decision}`, 'data-version': p.version, 'data-decision': p.decision });
    if (p.decision === 'refused') {
      mark.append(el('path', { d: `M${cx - MARK},${cy - MARK}L${cx + MARK},${cy + MARK}M${cx - MARK},${cy + MARK}L${cx + MARK},${cy - MARK}` }));
    } else {
      mark.append(el('path', { d: `M${cx},${cy - MARK}L${cx + MARK},${cy}L${cx},${cy + MARK}L${cx - MARK},${cy}Z` }));
    }
    const extra = [p.paired_drift, p.chamfer].some((v) => v !== null && v !== undefined)
      ? `; paired drift ${p.paired_drift?.toFixed(3) ?? '–'}, Chamfer ${p.chamfer?.toFixed(3) ?? '–'}` : '';
    const label = p.version === 0 ? 'base model' : `adapter v${p.version}`;
    mark.append(el('title', {}, `canary: ${label} ${p.decision}, ${pct(p.stable_ratio)} stable on the probe set${extra} (${clock(p.decided_at)})`));
    svg.append(mark);
  }
  return points;
}

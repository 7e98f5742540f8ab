// The gallery of recent samples: prompt image, rendered views, verdict badge, tilt and adapter version.
import { loadImage } from './api.js';

function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function thumb(path, caption, alt) {
  const figure = document.createElement('figure');
  const img = document.createElement('img');
  img.alt = alt;
  img.loading = 'lazy';
  loadImage(img, path);
  const cap = document.createElement('figcaption');
  cap.textContent = caption;
  figure.append(img, cap);
  return figure;
}

/** An angle of a verdict, or a dash when the oracle gave none. */
export function degrees(value) {
  return value === null || value === undefined ? '–' : `${value.toFixed(1)}°`;
}

function card(sample, onSelect) {
  const node = document.createElement('article');
  node.className = 'sample-card';
  node.tabIndex = 0;
  node.dataset.sampleId = sample.id;
  node.dataset.promptId = sample.prompt_id;
  node.dataset.verdict = sample.outcome;  // the oracle verdict's class: stable | unstable
  const thumbs = document.createElement('div');
  thumbs.className = 'thumbs';
  thumbs.append(thumb(sample.prompt_image_url, 'prompt', 'prompt image'));
  thumbs.append(thumb(sample.preview_url, 'generated', 'generated shape'));
  if (sample.outcome !== 'stable' && sample.resting_preview_url) {
    thumbs.append(thumb(sample.resting_preview_url, 'after the drop', 'final resting pose'));
  }
  const meta = document.createElement('div');
  meta.className = 'sample-meta';
  const badge = document.createElement('span');
  badge.className = `badge ${node.dataset.verdict}`;
  badge.textContent = node.dataset.verdict;
  const text = document.createElement('span');
  text.className = 'muted';
  text.textContent = `tilt ${degrees(sample.tilt_deg)} · v${sample.adapter_version} · ${ago(sample.created_at)}`;
  meta.append(badge, text);
  node.append(thumbs, meta);
  node.addEventListener('click', () => onSelect(sample));
  node.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onSelect(sample); } });
  return node;
}

/** Show ``samples`` (newest first) in ``container``, reusing cards already there so images do not flicker. */
export function renderGallery(container, samples, selectedId, onSelect) {
  const existing = new Map([...container.children].map((node) => [node.dataset.sampleId, node]));
  const nodes = samples.map((s) => existing.get(s.id) || card(s, onSelect));
  for (const node of nodes) node.classList.toggle('selected', node.dataset.sampleId === selectedId);
  container.replaceChildren(...nodes);
  return nodes.length;
}

// Prompts: drag-and-drop upload to POST /v1/prompts (the API's limits and messages) and the prompt list.
import { call, getJson, loadImage } from './api.js';

const LIST_SIZE = 60; // newest prompts shown

/** POST the files as multipart ``images``; resolves to the API's answer, throws ApiError with its message. */
export async function uploadFiles(files) {
  const form = new FormData();
  for (const file of files) form.append('images', file, file.name);
  return (await call('/v1/prompts', { method: 'POST', body: form })).json();
}

/** The newest active prompts (the API lists oldest first, so read the last page). */
export async function newestPrompts() {
  const head = await getJson('/v1/prompts?status=active&limit=1');
  const offset = Math.max(0, head.total - LIST_SIZE);
  const page = await getJson(`/v1/prompts?status=active&offset=${offset}&limit=${LIST_SIZE}`);
  return { total: head.total, items: page.items.slice().reverse() };
}

function rateText(stability) {
  if (stability.stability_rate === null || stability.stability_rate === undefined) return 'no verdicts yet';
  return `${Math.round(stability.stability_rate * 100)}% stable of ${stability.stable + stability.unstable}`;
}

export function renderPromptList(list, prompts, freshIds) {
  const existing = new Map([...list.children].map((node) => [node.dataset.promptId, node]));
  const nodes = prompts.map((p) => {
    let node = existing.get(p.id);
    if (!node) {
      node = document.createElement('li');
      node.dataset.promptId = p.id;
      const img = document.createElement('img');
      img.alt = p.metadata.filename || `prompt ${p.id.slice(0, 8)}`;
      loadImage(img, p.image_url);
      const name = document.createElement('div');
      name.className = 'prompt-name';
      name.textContent = p.metadata.filename || p.id.slice(0, 10);
      const rate = document.createElement('div');
      rate.className = 'muted prompt-rate';
      node.append(img, name, rate);
    }
    node.querySelector('.prompt-rate').textContent = rateText(p.stability);
    node.classList.toggle('fresh', freshIds.has(p.id));
    return node;
  });
  list.replaceChildren(...nodes);
}

/** Wire the drop zone and file input; ``onUploaded(ids)`` runs after a successful upload. */
export function wireUpload(zone, input, message, onUploaded) {
  const show = (text, kind) => { message.textContent = text; message.className = `upload-message ${kind}`; };
  const send = async (files) => {
    if (!files.length) return;
    show(`uploading ${files.length} file(s)…`, '');
    try {
      const answer = await uploadFiles(files);
      const names = answer.prompts.map((p) => `${p.filename || p.id.slice(0, 8)} (${p.created ? 'new' : 'already known'})`);
      show(`uploaded: ${names.join(', ')}`, 'ok');
      onUploaded(answer.prompts.map((p) => p.id));
    } catch (err) {
      show(`upload refused (${err.status || 'network'}): ${err.detail || err.message}`, 'error');
    }
  };
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('dragging'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('dragging');
    send([...(e.dataTransfer?.files || [])]);
  });
  zone.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); input.click(); } });
  input.addEventListener('change', () => { send([...input.files]); input.value = ''; });
}

// Talking to the DSO API: bearer token, JSON errors ({"detail": ...}) and authenticated image URLs.
const TOKEN_KEY = 'dso.console.token';
const BLOB_CACHE_SIZE = 400; // object URLs kept for images/GLBs already fetched (samples never change)

/** A failed call: HTTP status (0 when the API could not be reached) and the API's own message. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.detail === 'string') return body.detail;
  } catch { /* not JSON */ }
  return `${response.status} ${response.statusText}`.trim();
}

/** fetch() that throws ApiError with the API's message on any non-2xx answer or network failure. */
export async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(options.headers) });
  } catch (err) {
    throw new ApiError(0, `cannot reach the DSO API (${err.message || err})`);
  }
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  return response;
}

export async function getJson(path) {
  return (await call(path)).json();
}

const blobUrls = new Map();

/** An object URL for a protected resource (images need the bearer header too when reads require auth). */
export async function blobUrl(path) {
  if (blobUrls.has(path)) return blobUrls.get(path);
  const url = URL.createObjectURL(await (await call(path)).blob());
  blobUrls.set(path, url);
  if (blobUrls.size > BLOB_CACHE_SIZE) {
    const [oldest, oldUrl] = blobUrls.entries().next().value;
    blobUrls.delete(oldest);
    URL.revokeObjectURL(oldUrl);
  }
  return url;
}

/** Point an <img> at an API path; on failure show the alt text and the reason as a tooltip. */
export function loadImage(img, path) {
  img.dataset.src = path;
  blobUrl(path).then((url) => { if (img.dataset.src === path) img.src = url; })
    .catch((err) => { img.title = err.detail || String(err); img.classList.add('broken'); });
}

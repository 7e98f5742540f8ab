// Is the loop alive? /readyz plus the verdict flow in /v1/stats, shown as a pill and a banner.
import { ApiError } from './api.js';

/** Work out what to tell the user from /readyz, /v1/stats (either may be an ApiError) and the poll time. */
export function assess(ready, stats) {
  if (ready instanceof ApiError && ready.status === 0) {
    return { pill: 'down', label: 'API unreachable', level: 'error',
      text: `The DSO API does not answer (${ready.detail}). The loop or the API is stopped; retrying…` };
  }
  if (stats instanceof ApiError && stats.status === 401) {
    return { pill: 'stopped', label: 'token needed', level: 'warn',
      text: `This API needs a token for reads: enter it under “API token” (${stats.detail}).` };
  }
  if (ready && ready.checks && ready.checks.redis && ready.checks.redis !== 'ok') {
    return { pill: 'down', label: 'broker down', level: 'error',
      text: `The API cannot reach the loop's broker (${ready.checks.redis}): no live data until it is back; retrying…` };
  }
  if (ready && ready.ready === false) {
    const failing = Object.entries(ready.checks).filter(([, v]) => v !== 'ok').map(([k, v]) => `${k}: ${v}`);
    return { pill: 'stopped', label: 'loop stopped', level: 'warn',
      text: `The loop is not running: ${failing.join('; ')}. Showing the last data the broker holds.` };
  }
  if (stats instanceof ApiError) {
    return { pill: 'down', label: 'broker down', level: 'error', text: `Statistics unavailable: ${stats.detail}` };
  }
  if (stats && stats.totals.labelled === 0) {
    return { pill: 'running', label: 'starting', level: 'info', text: 'The loop is up; waiting for the first verdicts…' };
  }
  if (stats && stats.window.labelled === 0) {
    return { pill: 'stopped', label: 'idle', level: 'warn',
      text: `No new verdicts in the last ${Math.round(stats.window.seconds)} s: the loop looks stopped.` };
  }
  return { pill: 'running', label: 'loop running', level: null, text: '' };
}

export function showStatus(pill, banner, verdict) {
  pill.className = `pill pill-${verdict.pill}`;
  pill.textContent = verdict.label;
  banner.hidden = !verdict.level;
  banner.className = `banner${verdict.level ? ` banner-${verdict.level}` : ''}`;
  banner.dataset.level = verdict.level || '';
  banner.textContent = verdict.text;
}

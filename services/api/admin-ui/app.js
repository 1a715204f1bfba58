// The /admin status page. Plain JS, no build step. Every piece of data reaches the page through
// textContent or element properties, never through HTML parsing, and the page runs under a CSP without inline code.
const TOKEN_KEY = 'pixelfox.adminToken';
const REFRESH_MS = 5_000;
const POLL_MS = 500;
const POLL_LIMIT_MS = 120_000;

const $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el;
};

/** createElement with text children only: strings become text nodes, never markup. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = String(v);
    else if (k === 'title') el.title = String(v);
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'scope')
      el.setAttribute(k, String(v));
    else throw new Error(`h(): attribute ${k} not allowed`);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

function fmtTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** Only http(s) URLs become src/href: a javascript: or data: URL from the server is refused. */
function safeUrl(u) {
  try {
    const url = new URL(String(u), location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(url, { token, method = 'GET', json, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (json !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url, { method, headers, body: json !== undefined ? JSON.stringify(json) : body });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const e = data && data.error ? data.error : {};
    throw new HttpError(res.status, e.code || `http_${res.status}`, e.message || res.statusText);
  }
  return data;
}

function replaceRows(table, rows, columns, empty) {
  const tbody = table.tBodies[0];
  tbody.replaceChildren(
    ...(rows.length ? rows : [h('tr', {}, h('td', { class: 'muted', 'data-empty': '1' }, empty))]),
  );
  if (!rows.length) tbody.firstChild.firstChild.colSpan = columns;
}

// ---- status --------------------------------------------------------------------------------------

function poolCard(p) {
  // Capacity: the configured limit, else what the disk could hold (used + reported free space).
  const free = p.health && typeof p.health.free_bytes === 'number' ? p.health.free_bytes : null;
  const capacity = p.max_capacity_bytes ?? (free !== null ? p.used_bytes + free : null);
  const pct = capacity ? Math.min(100, (p.used_bytes / capacity) * 100) : 0;
  const fill = h('div', { class: `fill${pct > 90 ? ' danger' : pct > 75 ? ' warn' : ''}` });
  fill.style.width = `${p.used_bytes > 0 ? Math.max(pct, 0.5) : 0}%`; // CSSOM: allowed under the CSP
  const bar = h(
    'div',
    {
      class: 'bar',
      role: 'progressbar',
      'aria-label': `usage of pool ${p.name}`,
      'aria-valuemin': 0,
      'aria-valuemax': 100,
      'aria-valuenow': pct.toFixed(1),
    },
    fill,
  );
  let health;
  if (!p.health)
    health = h(
      'span',
      { class: 'badge bad', title: 'no health report from the node in the last 20 s' },
      'silent',
    );
  else if (p.health.healthy && p.health.reachable) health = h('span', { class: 'badge ok' }, 'healthy');
  else health = h('span', { class: 'badge bad' }, p.health.reachable ? 'unhealthy' : 'unreachable');
  const capText = capacity
    ? ` of ${fmtBytes(capacity)}${p.max_capacity_bytes ? '' : ' (disk)'} · ${pct > 0 && pct < 0.01 ? '< 0.01' : pct.toFixed(pct < 1 ? 2 : 1)} %`
    : '';
  return h(
    'article',
    { class: 'pool', 'data-pool-id': p.id },
    h(
      'div',
      { class: 'pool-head' },
      h('strong', { class: 'pool-name' }, p.name),
      h('span', { class: 'muted' }, `${p.storage_type} · ${p.storage_tier} · node ${p.node_id}`),
      h(
        'span',
        { class: 'badges' },
        health,
        p.is_active ? null : h('span', { class: 'badge' }, 'inactive'),
        p.is_backup_target ? h('span', { class: 'badge' }, 'backup target') : null,
      ),
    ),
    bar,
    h('div', { class: 'muted small' }, `${fmtBytes(p.used_bytes)}${capText} · ${p.file_count} files`),
  );
}

function render(o) {
  $('pools').replaceChildren(
    ...(o.pools.length ? o.pools.map(poolCard) : [h('p', { class: 'muted' }, 'No pools.')]),
  );

  replaceRows(
    $('consumers'),
    (o.consumers ?? []).map((c) =>
      h(
        'tr',
        { 'data-consumer': c.name },
        h(
          'td',
          { title: `${c.name}: ${c.filter}` },
          c.kind,
          c.node ? h('span', { class: 'muted' }, ` @ ${c.node}`) : null,
        ),
        h('td', { class: `num${c.pending > 0 ? ' hot' : ''}`, 'data-pending': c.pending }, c.pending),
        h('td', { class: 'num' }, c.ack_pending),
        h('td', { class: `num${c.redelivered > 0 ? ' hot' : ''}` }, c.redelivered),
        h('td', { class: 'num' }, c.waiting),
      ),
    ),
    5,
    o.consumers ? 'No consumers.' : 'JetStream could not be asked.',
  );
  $('projector').replaceChildren(
    o.projector
      ? h(
          'span',
          {},
          h('span', { class: o.projector.lag > 0 ? 'hot' : '' }, `lag ${o.projector.lag} events`),
          h('span', { class: 'muted' }, ` · checkpoint ${o.projector.checkpoint} of ${o.projector.head}`),
        )
      : h('span', { class: 'muted' }, 'unknown'),
  );

  $('images').replaceChildren(
    ...[
      ['Pending', o.images.pending],
      ['Processing', o.images.processing],
      ['Failed', o.images.failed],
    ].flatMap(([k, v]) => [h('dt', {}, k), h('dd', { class: k === 'Failed' && v > 0 ? 'hot' : '' }, v)]),
  );
  replaceRows(
    $('backups'),
    o.backups.map((b) => h('tr', {}, h('td', {}, b.status), h('td', { class: 'num' }, b.count))),
    2,
    'No backups.',
  );

  replaceRows(
    $('failed-jobs'),
    o.failed_jobs.map((j) =>
      h(
        'tr',
        {},
        h('td', {}, fmtTime(j.failed_at)),
        h('td', {}, j.consumer),
        h('td', {}, `${j.event_type ?? '–'} #${j.stream_seq}`),
        h('td', { class: 'mono' }, j.image_id ?? '–'),
        h('td', {}, j.kind, j.deliveries ? ` (${j.deliveries}×)` : ''),
        h('td', {}, j.reason ?? ''),
      ),
    ),
    6,
    'None.',
  );
  replaceRows(
    $('failed-images'),
    o.failed_images.map((i) =>
      h(
        'tr',
        {},
        h('td', {}, fmtTime(i.failed_at)),
        h('td', { class: 'mono' }, i.image_id),
        h('td', {}, i.original_filename ?? '–'),
        h('td', {}, i.reason ?? ''),
      ),
    ),
    4,
    'None.',
  );
  $('updated').textContent = `updated ${new Date(o.generated_at).toLocaleTimeString()} by node ${o.node_id}`;
}

let token = sessionStorage.getItem(TOKEN_KEY);
let timer = null;

function showLogin(message) {
  clearTimeout(timer);
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('dashboard').hidden = true;
  $('session').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('admin-token').focus();
}

async function load() {
  clearTimeout(timer);
  if (!token) return;
  try {
    const o = await request('/api/admin/overview', { token });
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('session').hidden = false;
    $('load-error').textContent = '';
    render(o);
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) return showLogin('That token was not accepted.');
    $('load-error').textContent = `Could not load the status: ${err.message}`;
  }
  timer = setTimeout(() => void load(), REFRESH_MS);
}

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const value = $('admin-token').value.trim();
  if (!value) return;
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  $('admin-token').value = '';
  void load();
});
$('logout').addEventListener('click', () => showLogin(''));
$('refresh').addEventListener('click', () => void load());
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && token) void load();
});

// ---- upload --------------------------------------------------------------------------------------

const status = (text, kind = '') => {
  const el = $('upload-status');
  el.textContent = text;
  el.className = `upload-status ${kind}`;
};

function variantFigure(v) {
  const src = safeUrl(v.url);
  const img = h('img', { class: 'thumb', 'data-variant': v.type });
  img.alt = `${v.type} variant`;
  img.loading = 'eager';
  img.decoding = 'async';
  if (src) img.src = src;
  return h(
    'figure',
    { class: 'variant' },
    img,
    h('figcaption', {}, h('strong', {}, v.type), h('br'), `${v.width}×${v.height} · ${fmtBytes(v.bytes)}`),
  );
}

async function upload(file) {
  const key = $('api-key').value.trim();
  if (!key) return status('Paste an API key first.', 'error');
  if (!file) return;
  $('variants').replaceChildren();
  try {
    status(`Starting an upload session for ${file.name} (${fmtBytes(file.size)})…`);
    const session = await request('/api/v1/upload/sessions', {
      token: key,
      method: 'POST',
      json: {
        file_size: file.size,
        filename: file.name.slice(0, 255),
        ...(file.type ? { content_type: file.type } : {}),
      },
    });
    const target = safeUrl(session.upload_url);
    if (!target) throw new Error('the server returned an upload URL that is not http(s)');
    status(`Uploading to ${new URL(target).host}…`);
    const form = new FormData();
    form.append('file', file, file.name);
    const stored = await request(target, { token: session.token, method: 'POST', body: form });
    const id = encodeURIComponent(stored.image_uuid);
    status(
      `${stored.duplicate ? 'Duplicate of an existing image' : 'Stored'} (${stored.width}×${stored.height}); processing…`,
    );

    const deadline = Date.now() + POLL_LIMIT_MS;
    let s = { complete: false, status: stored.status };
    while (!s.complete && s.status !== 'failed') {
      if (Date.now() > deadline) throw new Error('still processing after 2 minutes');
      await new Promise((r) => setTimeout(r, POLL_MS));
      s = await request(`/api/v1/images/${id}/status`, { token: key });
      status(`Processing… (${s.status})`);
    }
    if (s.status === 'failed') throw new Error(`processing failed: ${s.reason ?? 'no reason given'}`);

    const image = await request(`/api/v1/images/${id}`, { token: key });
    $('variants').replaceChildren(...image.variants.map(variantFigure));
    status(`Done: ${image.variants.length} variants of ${image.original_filename ?? 'the image'}.`, 'ok');
    $('upload-status').dataset.imageId = image.image_uuid;
    void load();
  } catch (err) {
    status(
      err instanceof HttpError ? `${err.code}: ${err.message}` : `Upload failed: ${err.message}`,
      'error',
    );
  }
}

const zone = $('dropzone');
const input = $('file-input');
zone.addEventListener('click', () => input.click());
zone.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' || ev.key === ' ') {
    ev.preventDefault();
    input.click();
  }
});
zone.addEventListener('dragover', (ev) => {
  ev.preventDefault();
  zone.classList.add('over');
});
zone.addEventListener('dragleave', () => zone.classList.remove('over'));
zone.addEventListener('drop', (ev) => {
  ev.preventDefault();
  zone.classList.remove('over');
  const file = ev.dataTransfer && ev.dataTransfer.files[0];
  if (file) void upload(file);
});
input.addEventListener('change', () => {
  const file = input.files && input.files[0];
  input.value = '';
  if (file) void upload(file);
});

if (token) void load();
else showLogin('');

// The RedisGate dashboard: the management API (docs/manage.md) in a page.
// It calls only that API, with a manage key kept in sessionStorage (this
// tab only; never a cookie or the URL).  Every string the API returns is
// put in the page as text (textContent), never as HTML.

const API = new URL('../api/v1/', document.baseURI);
const TOKEN_KEY = 'redisgate.manage.token';

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function when(t) {
  return t ? new Date(t).toLocaleString() : '—';
}

// one call: { json, headers }; throws an Error with the API's message
async function call(method, path, body) {
  const r = await fetch(new URL(path, API), {
    method,
    headers: {
      authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const e = new Error(json?.error ?? `HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return { json, headers: r.headers };
}

const api = async (method, path, body) => (await call(method, path, body)).json;

// every page of a list
async function all(path) {
  const out = [];
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api('GET', `${path}${sep}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    out.push(...page.data);
    cursor = page.next;
  } while (cursor);
  return out;
}

function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map((item) => {
    const tr = el('tr');
    for (const c of cells(item)) {
      const td = el('td');
      if (c instanceof Node) td.append(c); else td.textContent = c ?? '—';
      tr.append(td);
    }
    return tr;
  }));
}

// --- sign in and out

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    const org = await api('GET', 'organization');
    $('who').textContent = `${org.name} (${org.plan})`;
    $('signin').hidden = true;
    $('tabs').hidden = false;
    $('signout').hidden = false;
    show('organization');
    return true;
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $('signin-error').textContent = e.message;
    return false;
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

// --- tabs

const loaders = {
  organization: loadOrganization,
  instances: loadInstances,
  keys: loadKeys,
  usage: loadUsage,
  audit: loadAudit,
};

async function show(tab) {
  for (const b of document.querySelectorAll('#tabs button')) {
    if (b.dataset.tab === tab) b.setAttribute('aria-current', 'page');
    else b.removeAttribute('aria-current');
  }
  for (const s of document.querySelectorAll('.tab')) s.hidden = s.id !== tab;
  try {
    await loaders[tab]();
  } catch (e) {
    if (e.status === 401) signOut();
    else $(`${tab}-title`).after(el('p', e.message, { class: 'error', role: 'alert' }));
  }
}

async function loadOrganization() {
  const { json: org, headers } = await call('GET', 'organization');
  const dl = $('org-details');
  dl.replaceChildren();
  // the bucket now, as the gateway counts it (with redisgate_limit only)
  const left = headers.get('ratelimit-remaining');
  const now = left === null ? 'not counted on this server'
    : `${left} of ${headers.get('ratelimit-limit')} commands left`
      + (headers.get('ratelimit-reset') !== '0' ? `, full again in ${headers.get('ratelimit-reset')} s` : '');
  for (const [k, v] of [
    ['Name', org.name], ['Id', org.id], ['Status', org.status], ['Plan', org.plan],
    ['Rate limit', `${org.limits.requests_per_second} commands/s, bursts of ${org.limits.burst}`],
    ['Now', now],
    ['Created', when(org.created_at)],
  ]) {
    dl.append(el('dt', k), el('dd', v, k === 'Now' ? { id: 'rate-now' } : {}));
  }
}

let instances = [];

async function loadInstances() {
  instances = await all('instances');
  rows($('instances-rows'), instances, (i) => [i.name, el('code', i.id), i.address, i.status]);
}

async function loadKeys() {
  const keys = await all('keys');
  rows($('keys-rows'), keys, (k) => {
    const actions = el('span', undefined, { class: 'actions' });
    if (k.state === 'active') {
      const rotate = el('button', 'Rotate', { type: 'button', 'aria-label': `Rotate ${k.name}` });
      rotate.addEventListener('click', () => rotateKey(k));
      const revoke = el('button', 'Revoke', { type: 'button', class: 'danger', 'aria-label': `Revoke ${k.name}` });
      revoke.addEventListener('click', () => revokeKey(k));
      actions.append(rotate, revoke);
    }
    return [k.name, el('code', k.display_prefix), k.scopes.join(', '), k.state,
      when(k.created_at), when(k.expires_at), when(k.last_used_at), actions];
  });
}

function showToken(key) {
  $('token-name').textContent = key.name;
  $('token-value').textContent = key.token;
  $('token-box').hidden = false;
  $('token-copy').focus();
}

async function createKey(ev) {
  ev.preventDefault();
  $('keys-error').textContent = '';
  const scopes = [...document.querySelectorAll('input[name=scope]:checked')].map((c) => c.value);
  const expires = $('key-expires').value;
  try {
    const key = await api('POST', 'keys', {
      name: $('key-name').value,
      scopes,
      expires_at: expires ? new Date(expires).toISOString() : null,
    });
    $('key-form').reset();
    showToken(key);
    await loadKeys();
  } catch (e) {
    $('keys-error').textContent = e.message;
  }
}

async function rotateKey(k) {
  const grace = prompt(`Rotate "${k.name}": how long may the old token still work?`, '1 hour');
  if (grace === null) return;
  try {
    showToken(await api('POST', `keys/${k.id}/rotate`, { grace }));
    await loadKeys();
  } catch (e) {
    $('keys-error').textContent = e.message;
  }
}

async function revokeKey(k) {
  if (!confirm(`Revoke "${k.name}"? It stops working within a second.`)) return;
  try {
    await api('DELETE', `keys/${k.id}`);
    await loadKeys();
  } catch (e) {
    $('keys-error').textContent = e.message;
  }
}

// --- usage: two bar charts drawn as SVG

async function loadUsage() {
  if (!instances.length) instances = await all('instances');
  const sel = $('usage-instance');
  const current = sel.value;
  sel.replaceChildren(...instances.map((i) => el('option', i.name, { value: i.id })));
  if (current) sel.value = current;
  await drawUsage();
}

async function drawUsage(ev) {
  ev?.preventDefault();
  const range = $('usage-range').value;
  const step = { hour: 'minute', day: 'hour', month: 'day' }[range];
  const span = { hour: 3600e3, day: 86400e3, month: 30 * 86400e3 }[range];
  const to = new Date();
  const from = new Date(to.getTime() - span);
  const inst = $('usage-instance').value;
  const q = new URLSearchParams({ step, from: from.toISOString(), to: to.toISOString() });
  if (inst) q.set('instance', inst);
  const u = await api('GET', `usage?${q}`);
  const points = u.series.find((s) => s.instance === inst)?.points ?? [];
  const t0 = from.getTime();
  const slot = { minute: 60e3, hour: 3600e3, day: 86400e3 }[step];
  const n = Math.ceil(span / slot);
  const bins = (f) => {
    const b = new Array(n).fill(0);
    for (const p of points) {
      const i = Math.floor((new Date(p.t).getTime() - t0) / slot);
      if (i >= 0 && i < n) b[i] += f(p);
    }
    return b;
  };
  bars($('chart-commands'), [{ values: bins((p) => p.commands), cls: 'a' }]);
  bars($('chart-bytes'), [
    { values: bins((p) => p.bytes_in), cls: 'a' },
    { values: bins((p) => p.bytes_out), cls: 'b' },
  ]);
  const sum = (k) => points.reduce((s, p) => s + p[k], 0);
  $('usage-total').textContent = `${sum('requests')} requests, ${sum('commands')} commands, `
    + `${sum('bytes_in')} bytes in, ${sum('bytes_out')} bytes out`;
}

function bars(svg, series) {
  const ns = 'http://www.w3.org/2000/svg';
  const n = series[0].values.length;
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const w = 600 / n;
  svg.replaceChildren();
  series.forEach((s, k) => {
    s.values.forEach((v, i) => {
      if (!v) return;
      const h = (v / max) * 150;
      const r = document.createElementNS(ns, 'rect');
      r.setAttribute('x', String(i * w + (k * w) / series.length));
      r.setAttribute('width', String(Math.max(w / series.length - 0.5, 0.5)));
      r.setAttribute('y', String(160 - h));
      r.setAttribute('height', String(h));
      r.setAttribute('class', s.cls);
      const title = document.createElementNS(ns, 'title');
      title.textContent = String(v);
      r.append(title);
      svg.append(r);
    });
  });
}

async function loadAudit() {
  const page = await api('GET', 'audit?limit=200');
  rows($('audit-rows'), page.data, (a) => [when(a.at), `${a.actor.kind} ${a.actor.id}`,
    a.action, a.target, a.address]);
}

// --- wiring

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('signin-error').textContent = '';
  if (await signIn($('token').value.trim())) $('token').value = '';
});
$('signout').addEventListener('click', signOut);
for (const b of document.querySelectorAll('#tabs button')) {
  b.addEventListener('click', () => show(b.dataset.tab));
}
$('key-form').addEventListener('submit', createKey);
$('token-copy').addEventListener('click', async () => {
  await navigator.clipboard.writeText($('token-value').textContent);
  $('token-copy').textContent = 'Copied';
});
$('token-done').addEventListener('click', () => {
  $('token-value').textContent = '';
  $('token-box').hidden = true;
  $('token-copy').textContent = 'Copy';
});
$('usage-form').addEventListener('submit', drawUsage);

if (sessionStorage.getItem(TOKEN_KEY)) signIn(sessionStorage.getItem(TOKEN_KEY));

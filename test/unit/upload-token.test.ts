import { createHmac } from 'node:crypto';
import t from 'tap';
import { randomBase62, randomSecret, safeEqual } from '../../shared/security/secrets.js';
import {
  DEFAULT_UPLOAD_TOKEN_TTL_SECONDS,
  MAX_UPLOAD_TOKEN_LENGTH,
  signUploadToken,
  verifyUploadToken,
} from '../../shared/security/upload-token.js';

const SECRET = 'test-secret-0123456789abcdef';
const NOW = new Date('2025-03-01T12:00:00Z');
const NOW_S = NOW.getTime() / 1000;
const POOLS: ReadonlySet<string> = new Set(['pool-a', 'pool-b']);
const base = { user_id: 'user-1', pool_id: 'pool-a', max_bytes: 5 * 1024 * 1024 };

/** A token whose payload is `payload` (any JSON text), correctly signed: tests claim validation past the MAC. */
function signRaw(payload: string, secret = SECRET): string {
  const p = Buffer.from(payload, 'utf8').toString('base64url');
  return `${p}.${createHmac('sha256', secret).update(p).digest('base64url')}`;
}

function flipBit(text: string, index: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const c = text[index] ?? 'A';
  const swapped = alphabet[(alphabet.indexOf(c) ^ 1) & 63] ?? 'A';
  return text.slice(0, index) + swapped + text.slice(index + 1);
}

void t.test('round trip', async (t) => {
  const { token, claims } = signUploadToken(SECRET, base, NOW);
  t.match(claims, { ...base, exp: NOW_S + DEFAULT_UPLOAD_TOKEN_TTL_SECONDS });
  t.match(claims.jti, /^[A-Za-z0-9_-]{22}$/);
  t.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/, 'compact, URL-safe');
  t.same(verifyUploadToken(SECRET, token, { now: NOW, poolIds: POOLS }), { ok: true, claims });
  t.same(verifyUploadToken(SECRET, token, { now: NOW }), { ok: true, claims }, 'no pool set: no pool check');

  // Valid until the second before exp.
  const justBefore = new Date((claims.exp - 1) * 1000);
  t.equal(verifyUploadToken(SECRET, token, { now: justBefore, poolIds: POOLS }).ok, true);

  // Each token gets its own jti.
  t.not(signUploadToken(SECRET, base, NOW).claims.jti, claims.jti);

  // Explicit exp and custom TTL.
  t.equal(signUploadToken(SECRET, { ...base, exp: NOW_S + 5 }, NOW).claims.exp, NOW_S + 5);
  t.equal(signUploadToken(SECRET, base, NOW, 60).claims.exp, NOW_S + 60);
});

void t.test('expired', async (t) => {
  const { token, claims } = signUploadToken(SECRET, base, NOW);
  t.same(verifyUploadToken(SECRET, token, { now: new Date(claims.exp * 1000), poolIds: POOLS }), {
    ok: false,
    reason: 'expired',
  });
  t.same(verifyUploadToken(SECRET, token, { now: new Date('2030-01-01T00:00:00Z') }), {
    ok: false,
    reason: 'expired',
  });
});

void t.test('other pool', async (t) => {
  const { token } = signUploadToken(SECRET, { ...base, pool_id: 'pool-z' }, NOW);
  t.same(verifyUploadToken(SECRET, token, { now: NOW, poolIds: POOLS }), { ok: false, reason: 'wrong_pool' });
  t.same(verifyUploadToken(SECRET, token, { now: NOW, poolIds: new Set() }), {
    ok: false,
    reason: 'wrong_pool',
  });
});

void t.test('forged', async (t) => {
  const { token } = signUploadToken(SECRET, base, NOW);
  const [payload = '', sig = ''] = token.split('.');

  // Every single-character change in the claims or the signature is caught.
  for (let i = 0; i < payload.length; i++) {
    const r = verifyUploadToken(SECRET, `${flipBit(payload, i)}.${sig}`, { now: NOW, poolIds: POOLS });
    if (r.ok || !['bad_signature', 'malformed'].includes(r.reason))
      t.fail(`payload char ${i}: ${JSON.stringify(r)}`);
  }
  for (let i = 0; i < sig.length; i++) {
    const r = verifyUploadToken(SECRET, `${payload}.${flipBit(sig, i)}`, { now: NOW, poolIds: POOLS });
    if (r.ok || !['bad_signature', 'malformed'].includes(r.reason))
      t.fail(`signature char ${i}: ${JSON.stringify(r)}`);
  }

  // A raised max_bytes with the original signature.
  const raised = Buffer.from(
    JSON.stringify({ ...JSON.parse(Buffer.from(payload, 'base64url').toString()), max_bytes: 10 ** 12 }),
  ).toString('base64url');
  t.same(verifyUploadToken(SECRET, `${raised}.${sig}`, { now: NOW }), { ok: false, reason: 'bad_signature' });

  // Signed with another key.
  const other = signUploadToken('another-secret-0123456789', base, NOW).token;
  t.same(verifyUploadToken(SECRET, other, { now: NOW }), { ok: false, reason: 'bad_signature' });
  t.same(verifyUploadToken('another-secret-0123456789', token, { now: NOW }), {
    ok: false,
    reason: 'bad_signature',
  });

  // Swapping signatures between two valid tokens.
  const second = signUploadToken(SECRET, base, NOW).token;
  t.same(verifyUploadToken(SECRET, `${payload}.${second.split('.')[1] ?? ''}`, { now: NOW }), {
    ok: false,
    reason: 'bad_signature',
  });

  // Non-canonical base64url (stray low bits in the last character) is not a second spelling of the MAC.
  const last = sig.at(-1) ?? 'A';
  const alt = sig.slice(0, -1) + (last === 'A' ? 'B' : 'A');
  t.not(verifyUploadToken(SECRET, `${payload}.${alt}`, { now: NOW }).ok, true);
});

void t.test('truncated', async (t) => {
  const { token } = signUploadToken(SECRET, base, NOW);
  const dot = token.indexOf('.');
  for (const cut of [1, 10, dot - 1, dot, dot + 1, dot + 10, token.length - 1]) {
    const r = verifyUploadToken(SECRET, token.slice(0, cut), { now: NOW, poolIds: POOLS });
    t.equal(r.ok, false, `cut at ${cut}: ${JSON.stringify(r)}`);
    if (!r.ok) t.ok(['malformed', 'bad_signature'].includes(r.reason), `cut at ${cut}: ${r.reason}`);
  }
  t.same(verifyUploadToken(SECRET, token.slice(0, dot), { now: NOW }), { ok: false, reason: 'malformed' });
  // A well-formed but short MAC fails the equal-length check before timingSafeEqual.
  const short = `${token.slice(0, dot)}.${Buffer.alloc(16, 1).toString('base64url')}`;
  t.same(verifyUploadToken(SECRET, short, { now: NOW }), { ok: false, reason: 'bad_signature' });
});

void t.test('missing and garbage', async (t) => {
  t.same(verifyUploadToken(SECRET, undefined, {}), { ok: false, reason: 'missing' });
  t.same(verifyUploadToken(SECRET, '', {}), { ok: false, reason: 'missing' });
  const { token } = signUploadToken(SECRET, base, NOW);
  const garbage = [
    'garbage',
    '.',
    'a.',
    '.b',
    'a.b.c',
    `${token}.x`,
    `${token} `,
    `Bearer ${token}`,
    token.replace('.', '..'),
    'aGVsbG8=.aGVsbG8=',
    '!!!.???',
    'x'.repeat(MAX_UPLOAD_TOKEN_LENGTH + 1),
    `${'A'.repeat(MAX_UPLOAD_TOKEN_LENGTH)}.${token.split('.')[1] ?? ''}`,
  ];
  for (const g of garbage) {
    const r = verifyUploadToken(SECRET, g, { now: NOW });
    t.equal(r.ok, false, `refused: ${g.slice(0, 40)}`);
  }
  t.same(verifyUploadToken(SECRET, 'x'.repeat(MAX_UPLOAD_TOKEN_LENGTH + 1), {}), {
    ok: false,
    reason: 'malformed',
  });
  t.same(verifyUploadToken(SECRET, 'a.b.c', {}), { ok: false, reason: 'malformed' });
});

void t.test('correctly signed but invalid claims are malformed', async (t) => {
  const good = { user_id: 'u', pool_id: 'pool-a', max_bytes: 10, exp: NOW_S + 60, jti: 'j' };
  const bad: unknown[] = [
    null,
    42,
    'string',
    [good],
    {},
    { ...good, user_id: undefined },
    { ...good, user_id: 7 },
    { ...good, user_id: '' },
    { ...good, pool_id: null },
    { ...good, jti: '' },
    { ...good, max_bytes: 0 },
    { ...good, max_bytes: -1 },
    { ...good, max_bytes: 1.5 },
    { ...good, max_bytes: '10' },
    { ...good, max_bytes: 2 ** 53 },
    { ...good, exp: '9999999999' },
    { ...good, exp: 1.5 },
  ];
  for (const claims of bad) {
    t.same(
      verifyUploadToken(SECRET, signRaw(JSON.stringify(claims)), { now: NOW }),
      { ok: false, reason: 'malformed' },
      JSON.stringify(claims),
    );
  }
  t.same(verifyUploadToken(SECRET, signRaw('{not json'), { now: NOW }), { ok: false, reason: 'malformed' });
  // Unknown fields are ignored and not passed on.
  const extra = verifyUploadToken(SECRET, signRaw(JSON.stringify({ ...good, admin: true })), { now: NOW });
  t.same(extra, { ok: true, claims: good });
});

void t.test('signing refuses bad input', async (t) => {
  t.throws(() => signUploadToken('', base, NOW), TypeError, 'empty secret');
  t.throws(() => signUploadToken('short', base, NOW), TypeError, 'short secret');
  t.throws(() => verifyUploadToken('short', 'a.b', {}), TypeError, 'short secret on verify');
  t.throws(() => signUploadToken(SECRET, { ...base, max_bytes: 0 }, NOW));
  t.throws(() => signUploadToken(SECRET, { ...base, max_bytes: 1.5 }, NOW));
  t.throws(() => signUploadToken(SECRET, { ...base, user_id: '' }, NOW));
  t.throws(() => signUploadToken(SECRET, base, NOW, 0));
  t.throws(() => signUploadToken(SECRET, base, new Date(Number.NaN)));
});

void t.test('secrets helpers', async (t) => {
  t.ok(safeEqual('abc', 'abc'));
  t.ok(safeEqual('', ''));
  t.notOk(safeEqual('abc', 'abd'));
  t.notOk(safeEqual('abc', 'abcd'));
  t.notOk(safeEqual('abc', ''));
  t.ok(safeEqual('ünïcödé', 'ünïcödé'));

  for (const n of [1, 8, 22, 64]) t.match(randomBase62(n), new RegExp(`^[0-9A-Za-z]{${n}}$`));
  t.throws(() => randomBase62(0), RangeError);
  t.throws(() => randomBase62(1.5), RangeError);
  t.throws(() => randomBase62(4097), RangeError);

  // Uniformity: 62 000 characters, every symbol within a wide band of the expected 1000.
  const counts = new Map<string, number>();
  const sample = Array.from({ length: 1000 }, () => randomBase62(62)).join('');
  for (const c of sample) counts.set(c, (counts.get(c) ?? 0) + 1);
  t.equal(counts.size, 62, 'all 62 symbols occur');
  const [min, max] = [Math.min(...counts.values()), Math.max(...counts.values())];
  t.ok(min > 800 && max < 1200, `counts within [800, 1200]: ${min}..${max}`);

  const s = randomSecret();
  t.match(s, /^[A-Za-z0-9_-]{43}$/);
  t.equal(Buffer.from(s, 'base64url').length, 32);
  t.not(randomSecret(), s);
});

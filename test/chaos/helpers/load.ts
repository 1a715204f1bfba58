// The load generator of the chaos tests: a corpus of small images and a client that behaves like a real
// one (session, then direct upload; retries what failed for reasons of the server, never a refusal of
// the file itself), with every attempt recorded for the summary.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { FIXTURES } from '../../helpers/stack.js';

export interface Item {
  name: string;
  bytes: Buffer;
  sha256: string;
  /** corrupt input: the node must refuse it (4xx), the client does not retry */
  corrupt?: boolean;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A distinct small JPEG or PNG: a gradient plus a few random rectangles (seeded by i and salt). */
async function generated(i: number, salt: number): Promise<Item> {
  const w = 48 + ((i * 37 + salt) % 300);
  const h = 40 + ((i * 53 + salt) % 220);
  const rects = Array.from({ length: 4 }, (_, k) => {
    const x = (i * 13 + k * 29 + salt) % w;
    const y = (i * 7 + k * 17 + salt) % h;
    const c = `rgb(${(i * 40 + k * 60) % 256},${(salt + k * 90) % 256},${(i * k * 11) % 256})`;
    return `<rect x="${x}" y="${y}" width="${10 + k * 6}" height="${8 + k * 5}" fill="${c}"/>`;
  }).join('');
  const svg = Buffer.from(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><defs><linearGradient id="g">` +
      `<stop offset="0" stop-color="rgb(${i % 256},${(salt * 7) % 256},90)"/><stop offset="1" stop-color="rgb(20,${(i * 9) % 256},200)"/>` +
      `</linearGradient></defs><rect width="100%" height="100%" fill="url(#g)"/>${rects}</svg>`,
  );
  const png = i % 2 === 1;
  const img = sharp(svg);
  const bytes = png ? await img.png().toBuffer() : await img.jpeg({ quality: 80 }).toBuffer();
  return { name: `gen-${salt}-${i}.${png ? 'png' : 'jpg'}`, bytes, sha256: sha(bytes) };
}

export const PHOTOS = [
  'Canon_40D.jpg',
  'Nikon_D70.jpg',
  'Pentax_K10D.jpg',
  'Sony_HDR-HC3.jpg',
  'Canon_PowerShot_S40.jpg',
  'Samsung_Digimax_i50_MP3.jpg',
];

/**
 * `n` images: real camera photos from the shared EXIF samples (up to `photos`), the rest generated;
 * `salt` makes every test's generated images distinct. With `corrupt`, one corrupt JPEG is added on top.
 */
export async function corpus(n: number, o: { salt?: number; photos?: number; corrupt?: boolean } = {}) {
  const salt = o.salt ?? Math.floor(Math.random() * 1e6);
  const items: Item[] = [];
  for (const f of PHOTOS.slice(0, Math.min(o.photos ?? 4, n))) {
    const bytes = readFileSync(path.join(FIXTURES, f));
    items.push({ name: f, bytes, sha256: sha(bytes) });
  }
  for (let i = 0; items.length < n; i++) items.push(await generated(i, salt));
  if (o.corrupt) {
    const bytes = readFileSync(path.join(FIXTURES, 'corrupted.jpg'));
    items.push({ name: 'corrupted.jpg', bytes, sha256: sha(bytes), corrupt: true });
  }
  return items;
}

export interface Attempt {
  item: string;
  /** HTTP status, or 0 when the connection failed */
  status: number;
  ms: number;
  startedAt: number;
  code?: string;
  /** the network error, for status 0 */
  error?: string;
  /** which step answered: the API's session or the node's upload */
  step: 'session' | 'upload';
}

export interface Outcome {
  item: Item;
  /** the acknowledging answer (2xx), or the final refusal (4xx) */
  status: number;
  imageId: string | null;
  duplicate: boolean;
  attempts: number;
  body: Record<string, unknown>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Answers after which a real client tries again: connection failures, 5xx, 409 in progress, 429. */
function retryable(status: number): boolean {
  return status === 0 || status >= 500 || status === 409 || status === 429 || status === 408;
}

interface Answer {
  status: number;
  body: Record<string, unknown>;
  retryAfterMs: number;
}

async function parse(r: Response): Promise<Record<string, unknown>> {
  const text = await r.text();
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return { not_json: text.slice(0, 200) };
  }
}

const retryAfter = (r: Response) => Math.min(5_000, Number(r.headers.get('retry-after') ?? 0) * 1000);

async function timedFetch(url: string, init: RequestInit, timeoutMs: number) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
}

export class LoadClient {
  readonly attempts: Attempt[] = [];
  constructor(
    private readonly apiUrl: () => string,
    private readonly apiKey: string,
    private readonly o: { deadlineMs?: number; requestTimeoutMs?: number; retry?: boolean } = {},
  ) {}

  private record(
    item: Item,
    step: Attempt['step'],
    t0: number,
    status: number,
    body: Record<string, unknown>,
    err?: unknown,
  ) {
    const code = (body.error as { code?: string } | undefined)?.code;
    this.attempts.push({
      item: item.name,
      status,
      ms: Date.now() - t0,
      startedAt: t0,
      step,
      ...(code ? { code } : {}),
      ...(err ? { error: String((err as Error).cause ?? err).slice(0, 160) } : {}),
    });
  }

  /** POST /api/v1/upload/sessions; the session (upload_url, token) or the refusal. */
  async session(item: Item): Promise<Answer> {
    const t0 = Date.now();
    try {
      const s = await timedFetch(
        `${this.apiUrl()}/api/v1/upload/sessions`,
        {
          method: 'POST',
          headers: { authorization: `Bearer ${this.apiKey}`, 'content-type': 'application/json' },
          body: JSON.stringify({ file_size: item.bytes.length, filename: item.name }),
        },
        this.o.requestTimeoutMs ?? 20_000,
      );
      const body = await parse(s);
      this.record(item, 'session', t0, s.status, body);
      return { status: s.status, body, retryAfterMs: retryAfter(s) };
    } catch (err) {
      this.record(item, 'session', t0, 0, {}, err);
      return { status: 0, body: {}, retryAfterMs: 0 };
    }
  }

  /** The direct upload to the node named by a session. */
  async direct(item: Item, session: Record<string, unknown>): Promise<Answer> {
    const t0 = Date.now();
    try {
      const form = new FormData();
      form.append('file', new Blob([new Uint8Array(item.bytes)]), item.name);
      const r = await timedFetch(
        String(session.upload_url),
        { method: 'POST', headers: { authorization: `Bearer ${String(session.token)}` }, body: form },
        this.o.requestTimeoutMs ?? 20_000,
      );
      const body = await parse(r);
      this.record(item, 'upload', t0, r.status, body);
      return { status: r.status, body, retryAfterMs: retryAfter(r) };
    } catch (err) {
      this.record(item, 'upload', t0, 0, {}, err);
      return { status: 0, body: {}, retryAfterMs: 0 };
    }
  }

  /** One session + upload, recorded; never throws. */
  async once(item: Item): Promise<Answer> {
    const s = await this.session(item);
    if (s.status !== 201) return s;
    return this.direct(item, s.body);
  }

  /** Uploads until acknowledged (2xx) or refused (4xx other than 408/409/429), or the deadline passes. */
  async upload(item: Item): Promise<Outcome> {
    const deadline = Date.now() + (this.o.deadlineMs ?? 180_000);
    let attempts = 0;
    let delay = 200;
    for (;;) {
      attempts++;
      const r = await this.once(item);
      if ((r.status >= 200 && r.status < 300) || !retryable(r.status) || this.o.retry === false) {
        return {
          item,
          status: r.status,
          imageId: typeof r.body.image_uuid === 'string' ? r.body.image_uuid : null,
          duplicate: r.body.duplicate === true,
          attempts,
          body: r.body,
        };
      }
      if (Date.now() > deadline)
        return { item, status: r.status, imageId: null, duplicate: false, attempts, body: r.body };
      await sleep(Math.max(delay, r.retryAfterMs) * (0.75 + Math.random() * 0.5));
      delay = Math.min(2_000, delay * 2);
    }
  }
}

/** Runs `fn` over `items` with at most `concurrency` at once; results in item order. */
export async function pool<T, R>(
  items: readonly T[],
  concurrency: number,
  fn: (x: T, i: number) => Promise<R>,
) {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      for (;;) {
        const i = next++;
        if (i >= items.length) return;
        out[i] = await fn(items[i] as T, i);
      }
    }),
  );
  return out;
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? 0;
}

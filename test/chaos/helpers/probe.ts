// Background observers for outage tests: a /ready poller and a steady upload stream, both recording
// what they saw and when, so a test can check each phase (before, during, after an outage).
import type { LoadClient } from './load.js';
import { type Item, type Outcome } from './load.js';
import { sleep } from './random.js';

export interface ReadySample {
  at: number;
  status: number;
  ms: number;
  body: Record<string, unknown>;
}

export function pollReady(url: () => string, everyMs = 200) {
  const samples: ReadySample[] = [];
  let stop = false;
  const done = (async () => {
    while (!stop) {
      const at = Date.now();
      let status = 0;
      let body: Record<string, unknown> = {};
      try {
        const r = await fetch(`${url()}/ready`, { signal: AbortSignal.timeout(10_000) });
        status = r.status;
        body = (await r.json()) as Record<string, unknown>;
      } catch {
        status = 0;
      }
      samples.push({ at, status, ms: Date.now() - at, body });
      await sleep(everyMs);
    }
  })();
  return {
    samples,
    /** first sample at or after `t` with this status */
    firstAfter: (t: number, status: number) => samples.find((s) => s.at >= t && s.status === status),
    async stop() {
      stop = true;
      await done;
    },
  };
}

export interface TimedOutcome extends Outcome {
  startedAt: number;
  ms: number;
}

/**
 * Uploads `items` one attempt each (session + upload, or only the upload with `sessions`), `concurrency` at a time, `gapMs` apart per lane, until stopped or
 * out of items. What failed is kept for `retryFailed` (a real client tries again later).
 */
export function steadyUploads(
  client: LoadClient,
  items: readonly Item[],
  o: { concurrency?: number; gapMs?: number; sessions?: Map<string, Record<string, unknown>> } = {},
) {
  const results: TimedOutcome[] = [];
  let next = 0;
  let stop = false;
  const lanes = Array.from({ length: o.concurrency ?? 2 }, async () => {
    while (!stop && next < items.length) {
      const item = items[next++] as Item;
      const startedAt = Date.now();
      // With sessions taken earlier, only the direct upload to the node is tried (a client mid-flow).
      const session = o.sessions?.get(item.name);
      const r = session ? await client.direct(item, session) : await client.once(item);
      results.push({
        item,
        status: r.status,
        imageId: typeof r.body.image_uuid === 'string' ? r.body.image_uuid : null,
        duplicate: r.body.duplicate === true,
        attempts: 1,
        body: r.body,
        startedAt,
        ms: Date.now() - startedAt,
      });
      await sleep(o.gapMs ?? 150);
    }
  });
  return {
    results,
    async stop() {
      stop = true;
      await Promise.all(lanes);
    },
    /** Items never acknowledged, uploaded again with retries; returns every final outcome. */
    async retryFailed(retrying: LoadClient): Promise<Outcome[]> {
      const ok = new Set(results.filter((r) => r.status >= 200 && r.status < 300).map((r) => r.item.name));
      const failed = [
        ...new Map(results.filter((r) => !ok.has(r.item.name)).map((r) => [r.item.name, r.item])).values(),
      ];
      const out: Outcome[] = [];
      for (const item of failed) out.push(await retrying.upload(item));
      return out;
    },
  };
}

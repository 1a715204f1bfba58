// What "nothing lost, nothing doubled, nothing stuck" means, checked against every layer: the event
// stream (the truth), the read models, and the files on disk. Every chaos scenario ends here.
import { createHash } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { readEvents } from '../../../services/ops/events.js';
import type { ChaosEnv } from './env.js';
import type { Outcome } from './load.js';

import type { Test } from 'tap';

type Assert = Pick<Test, 'ok' | 'equal' | 'same' | 'comment'>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function fileSha(p: string): Promise<{ size: number; sha256: string } | null> {
  try {
    const b = await fs.readFile(p);
    return { size: b.length, sha256: createHash('sha256').update(b).digest('hex') };
  } catch {
    return null;
  }
}

export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  await walk(dir);
  return out.sort();
}

export interface StreamFacts {
  lastSeq: number;
  /** ImageStored per `${user_id}:${sha256}` */
  stored: Map<string, string[]>;
  storedIds: Set<string>;
  /** events of one kind per image that must exist at most once: `${type}:${image}:${variant}` → count */
  onceCounts: Map<string, number>;
}

/** Reads the whole event stream and counts what must be unique. */
export async function streamFacts(env: ChaosEnv): Promise<StreamFacts> {
  const js = await env.js();
  const jsm = await js.jetstreamManager();
  const info = await jsm.streams.info(env.names.stream);
  const facts: StreamFacts = {
    lastSeq: info.state.last_seq,
    stored: new Map(),
    storedIds: new Set(),
    onceCounts: new Map(),
  };
  const bump = (k: string) => facts.onceCounts.set(k, (facts.onceCounts.get(k) ?? 0) + 1);
  for await (const { event: e } of readEvents(js, env.names, {})) {
    if (!e) continue;
    switch (e.type) {
      case 'ImageStored': {
        const k = `${e.data.user_id}:${e.data.sha256}`;
        facts.stored.set(k, [...(facts.stored.get(k) ?? []), e.image_id]);
        facts.storedIds.add(e.image_id);
        break;
      }
      case 'VariantCreated':
        bump(`VariantCreated:${e.image_id}:${e.data.variant_type}`);
        break;
      case 'ImageProcessed':
      case 'ImageMetadataExtracted':
        bump(`${e.type}:${e.image_id}`);
        break;
      case 'BackupCompleted':
        bump(`BackupCompleted:${e.image_id}:${e.data.target_pool_id}`);
        break;
      default:
        break;
    }
  }
  return facts;
}

async function checkpoint(env: ChaosEnv): Promise<number> {
  const [row] = await env.sql()<
    { last_seq: number }[]
  >`select last_seq from projection_checkpoint where name = 'main'`;
  return Number(row?.last_seq ?? 0);
}

/** Waits until every acknowledged image is completed or failed and the projector is at the stream head. */
export async function waitConverged(
  env: ChaosEnv,
  imageIds: readonly string[],
  timeoutMs: number,
): Promise<number> {
  const t0 = Date.now();
  const deadline = t0 + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const rows = await env.sql()<{ id: string; status: string }[]>`
        select id, status from images where id = any(${imageIds as string[]}::uuid[])`;
      const done = rows.filter((r) => r.status === 'completed' || r.status === 'failed').length;
      if (done === imageIds.length) {
        const js = await env.js();
        const info = await (await js.jetstreamManager()).streams.info(env.names.stream);
        const cp = await checkpoint(env);
        if (cp >= info.state.last_seq) return Date.now() - t0;
        last = `checkpoint ${cp} < stream head ${info.state.last_seq}`;
      } else {
        const stuck = rows.filter((r) => r.status !== 'completed' && r.status !== 'failed');
        last = `${done}/${imageIds.length} done; ${imageIds.length - rows.length} not projected; not done: ${stuck
          .slice(0, 5)
          .map((r) => `${r.id}=${r.status}`)
          .join(', ')}`;
      }
    } catch (err) {
      last = `query failed: ${String(err)}`;
    }
    if (Date.now() > deadline) throw new Error(`not converged within ${timeoutMs} ms: ${last}`);
    await sleep(250);
  }
}

export interface Verdict {
  acked: number;
  images: number;
  lost: number;
  duplicates: number;
  duplicateEvents: number;
  completed: number;
  failed: number;
  variants: number;
  orphanOriginals: number;
}

/**
 * Every acknowledged upload: its ImageStored in the stream, one read-model row per user+sha256, its
 * original on disk with the uploaded bytes, every variant as one row and one file, metadata, a final
 * status. Returns the counts for the summary line.
 */
export async function verifyAcked(t: Assert, env: ChaosEnv, outcomes: readonly Outcome[]): Promise<Verdict> {
  const acked = outcomes.filter((o) => o.status >= 200 && o.status < 300 && o.imageId);
  const sql = env.sql();
  const facts = await streamFacts(env);
  const v: Verdict = {
    acked: acked.length,
    images: 0,
    lost: 0,
    duplicates: 0,
    duplicateEvents: 0,
    completed: 0,
    failed: 0,
    variants: 0,
    orphanOriginals: 0,
  };
  // Problems are collected and asserted once per kind: a clean run stays readable, a dirty one lists all.
  const lost: string[] = [];
  const dup: string[] = [];
  const dupEvents: string[] = [];
  const incomplete: string[] = [];

  // Every answer for the same bytes names the same image.
  const bySha = new Map<string, Set<string>>();
  for (const o of acked)
    bySha.set(o.item.sha256, (bySha.get(o.item.sha256) ?? new Set()).add(o.imageId ?? ''));
  for (const [sha, ids] of bySha) {
    if (ids.size > 1) {
      v.duplicates += ids.size - 1;
      dup.push(`answers for ${sha.slice(0, 12)} name ${[...ids].join(', ')}`);
    }
  }
  // One ImageStored per user+sha256 in the stream, one row per user+sha256 in the read model.
  for (const [k, ids] of facts.stored) {
    if (ids.length > 1) {
      v.duplicates += ids.length - 1;
      dup.push(`${ids.length} ImageStored for ${k.slice(0, 60)}: ${ids.join(', ')}`);
    }
  }
  const dupRows = await sql<{ user_id: string; sha256: string; n: number }[]>`
    select user_id, sha256, count(*)::int as n from images where deleted_at is null group by 1, 2 having count(*) > 1`;
  for (const r of dupRows) dup.push(`${r.n} read-model rows for ${r.user_id}:${r.sha256.slice(0, 12)}`);
  for (const [k, n] of facts.onceCounts) {
    if (n > 1) {
      v.duplicateEvents += n - 1;
      dupEvents.push(`${k} ×${n}`);
    }
  }

  const rows = await sql<
    {
      id: string;
      user_id: string;
      status: string;
      status_reason: string | null;
      stored_path: string;
      size: number;
      sha256: string;
      variant_count: number;
    }[]
  >`select id, user_id, status, status_reason, stored_path, size, sha256, variant_count from images`;
  v.images = rows.length;
  const byId = new Map(rows.map((r) => [r.id, r]));
  const variantRows = await sql<
    { image_id: string; variant_type: string; path: string; bytes: number; sha256: string }[]
  >`
    select image_id, variant_type, path, bytes, sha256 from image_variants`;
  const metaIds = new Set(
    (await sql<{ image_id: string }[]>`select image_id from image_metadata`).map((r) => r.image_id),
  );

  const seen = new Set<string>();
  for (const o of acked) {
    const id = o.imageId ?? '';
    if (seen.has(id)) continue;
    seen.add(id);
    const row = byId.get(id);
    if (!row || !facts.storedIds.has(id)) {
      v.lost++;
      lost.push(`${id} (${o.item.name}): read-model row ${!!row}, ImageStored ${facts.storedIds.has(id)}`);
      continue;
    }
    const orig = await fileSha(path.join(env.poolDir, row.stored_path));
    if (row.sha256 !== o.item.sha256 || !orig || orig.sha256 !== o.item.sha256) {
      v.lost++;
      lost.push(`${id} (${o.item.name}): original ${row.stored_path} missing or not the uploaded bytes`);
    }
    if (row.status === 'completed') {
      v.completed++;
      const vs = variantRows.filter((r) => r.image_id === id);
      v.variants += vs.length;
      if (vs.length === 0 || vs.length !== row.variant_count)
        incomplete.push(
          `${o.item.name}: ${vs.length} variant rows, ImageProcessed said ${row.variant_count}`,
        );
      for (const r of vs) {
        const f = await fileSha(path.join(env.poolDir, r.path));
        if (!f || f.size !== Number(r.bytes) || f.sha256 !== r.sha256)
          incomplete.push(`${o.item.name}: ${r.variant_type} not on disk as recorded (${r.path})`);
      }
      if (!metaIds.has(id)) incomplete.push(`${o.item.name}: no metadata row`);
    } else if (row.status === 'failed') {
      v.failed++;
      if (!row.status_reason) incomplete.push(`${o.item.name}: failed without a reason`);
    } else {
      incomplete.push(`${o.item.name}: stuck in ${row.status}`);
    }
  }
  t.same(
    lost,
    [],
    `every acknowledged upload (${seen.size} images) is in the stream, the read model and on disk`,
  );
  t.same(
    dup,
    [],
    'no duplicate images: one per user and sha256, in the answers, the stream and the read model',
  );
  t.same(dupEvents, [], 'each variant, metadata and processed event once in the stream');
  t.same(
    incomplete,
    [],
    'every image completed with all variants (rows + files) and metadata, or failed with a reason',
  );
  t.equal(rows.length, facts.storedIds.size, 'one read-model row per ImageStored');

  // Files a crash left behind without an event (between rename and publish): reported, not hidden.
  const known = new Set(rows.map((r) => r.stored_path));
  v.orphanOriginals = (await filesUnder(env.poolDir)).filter(
    (f) => f.startsWith('original/') && !known.has(f),
  ).length;
  return v;
}

/** One machine-readable line per scenario (copied into RELIABILITY.md); also appended to $CHAOS_SUMMARY_FILE. */
export function summary(t: Assert, scenario: string, data: Record<string, unknown>): void {
  const line = `CHAOS-SUMMARY ${JSON.stringify({ scenario, ...data })}`;
  t.comment(line);
  // Also on stderr, so it shows in any reporter.
  process.stderr.write(`${line}\n`);
  const file = process.env.CHAOS_SUMMARY_FILE;
  if (file) appendFileSync(file, `${JSON.stringify({ scenario, at: new Date().toISOString(), ...data })}\n`);
}

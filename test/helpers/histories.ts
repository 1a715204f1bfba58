// Event histories with every twist the read models must handle — failures and reprocessing, re-created
// variants, backup retries, failed and completed moves, late work after a delete, purges, events
// delivered twice — interleaved across images the way concurrent uploads interleave in the stream.
import { randomUUID } from 'node:crypto';
import { makeEvent } from '../../streams/events/codec.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import { derivedShareLink } from '../../streams/events/upcast.js';

export interface Pools {
  a: string;
  b: string;
  s3: string;
}

const sha = (i: number) => (i.toString(16).padStart(8, '0') + 'c'.repeat(56)).slice(0, 64);

/** A deterministic pseudo-random generator (mulberry32), so a failing history can be replayed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One image's events; which twists it takes depends on `i`. */
export function richLife(i: number, pools: Pools, userId: string, t0 = Date.now()): AnyEvent[] {
  const image_id = randomUUID();
  let k = 0;
  const at = () => new Date(t0 + i * 100 + k++);
  let pool = pools.a;
  let node = 'n1';
  const base = () => ({ image_id, node_id: node, pool_id: pool, occurred_at: at() });
  const stored_path = `original/2026/11/28/${image_id}.jpg`;
  const ev: AnyEvent[] = [];
  const variant = (size: 'small' | 'medium', bytes: number) =>
    makeEvent('VariantCreated', {
      ...base(),
      data: {
        variant_type: `${size}_webp`,
        format: 'webp',
        size_name: size,
        width: size === 'small' ? 200 : 500,
        height: 150,
        bytes,
        path: `variants/2026/11/28/${image_id}_${size}.webp`,
        sha256: sha(i + bytes),
      },
    });
  ev.push(
    makeEvent('ImageStored', {
      ...base(),
      data: {
        user_id: userId,
        stored_path,
        size: 5000 + i,
        sha256: sha(i),
        mime: 'image/jpeg',
        ext: 'jpg',
        width: 640,
        height: 480,
        original_filename: i % 4 ? `img-${i}.jpg` : null,
        share_link: derivedShareLink(image_id),
      },
    }),
    makeEvent('ImageProcessingStarted', { ...base(), data: { attempt: 1 } }),
  );
  if (i % 6 === 1) {
    // corrupt on the first try, then an operator asks again and it works
    ev.push(
      makeEvent('ImageProcessingFailed', { ...base(), data: { reason: 'cannot decode', attempt: 1 } }),
      makeEvent('ImageReprocessRequested', { ...base(), data: { requested_by: 'test' } }),
      makeEvent('ImageProcessingStarted', { ...base(), data: { attempt: 2 } }),
    );
  }
  ev.push(variant('small', 100 + (i % 13)), variant('medium', 300 + (i % 17)));
  ev.push(
    makeEvent('ImageMetadataExtracted', {
      ...base(),
      data: {
        make: i % 3 ? 'Canon' : null,
        model: 'EOS',
        lens: null,
        taken_at: '2026-11-28T10:00:00+01:00',
        iso: 100 + i,
        f_number: 2.8,
        exposure_time: 0.01,
        focal_length: 50,
        orientation: 1 + (i % 8),
        gps_latitude: i % 2 ? 52.5 : null,
        gps_longitude: i % 2 ? 13.4 : null,
        gps_altitude: null,
        exif: { Make: 'Canon', i, nested: { a: [1, 2] } },
      },
    }),
    makeEvent('ImageProcessed', {
      ...base(),
      data: { width: 480, height: 640, variant_count: 2, duration_ms: 10 + i },
    }),
  );
  if (i % 5 === 2) {
    // reprocessed later: variants re-created with other sizes (pool charged only the difference)
    ev.push(
      makeEvent('ImageReprocessRequested', { ...base(), data: { requested_by: 'test' } }),
      makeEvent('ImageProcessingStarted', { ...base(), data: { attempt: 1 } }),
      variant('small', 150 + (i % 7)),
      makeEvent('ImageProcessed', {
        ...base(),
        data: { width: 480, height: 640, variant_count: 2, duration_ms: 5 },
      }),
    );
  }
  if (i % 3 === 0) {
    const target = pools.s3;
    ev.push(
      makeEvent('BackupRequested', {
        ...base(),
        data: { target_pool_id: target, bucket: 'b', due_at: at().toISOString(), attempt: 1 },
      }),
      makeEvent('BackupStarted', { ...base(), data: { target_pool_id: target, attempt: 1 } }),
    );
    if (i % 9 === 0) {
      ev.push(
        makeEvent('BackupFailed', {
          ...base(),
          data: { target_pool_id: target, error: 'timeout', attempt: 1, final: false },
        }),
        makeEvent('BackupRequested', {
          ...base(),
          data: { target_pool_id: target, bucket: 'b', due_at: at().toISOString(), attempt: 2 },
        }),
        makeEvent('BackupStarted', { ...base(), data: { target_pool_id: target, attempt: 2 } }),
      );
    }
    if (i % 27 === 0) {
      ev.push(
        makeEvent('BackupFailed', {
          ...base(),
          data: { target_pool_id: target, error: 'denied', attempt: 3, final: true },
        }),
      );
    } else {
      ev.push(
        makeEvent('BackupCompleted', {
          ...base(),
          data: {
            target_pool_id: target,
            bucket: 'b',
            key: `images/${image_id}.jpg`,
            size: 5000 + i,
            checksum: sha(i),
          },
        }),
      );
    }
  }
  if (i % 4 === 3) {
    const move_id = randomUUID();
    ev.push(
      makeEvent('MoveRequested', {
        ...base(),
        data: { move_id, from_pool_id: pools.a, to_pool_id: pools.b },
      }),
    );
    if (i % 8 === 7) {
      ev.push(
        makeEvent('MoveFailed', {
          ...base(),
          data: { move_id, from_pool_id: pools.a, to_pool_id: pools.b, reason: 'target full' },
        }),
      );
    } else {
      ev.push(
        makeEvent('ImageMoved', {
          ...base(),
          data: { move_id, from_pool_id: pools.a, to_pool_id: pools.b, to_node_id: 'n2', files: [] },
        }),
      );
      pool = pools.b;
      node = 'n2';
      ev.push(
        makeEvent('SourceFilesDeleted', {
          ...base(),
          data: {
            move_id,
            from_pool_id: pools.a,
            files: [stored_path, 'variants/x_small.webp'],
            bytes: 5000 + i,
          },
        }),
      );
    }
  }
  if (i % 7 === 0) {
    ev.push(makeEvent('ImageDeleted', { ...base(), data: { user_id: userId } }));
    // a worker that was still busy reports a variant after the delete: it must not be recorded
    if (i % 14 === 0) ev.push(variant('medium', 999));
    if (i % 3 === 0 && i % 27 !== 0)
      ev.push(
        makeEvent('BackupDeleted', {
          ...base(),
          data: { target_pool_id: pools.s3, bucket: 'b', key: `images/${image_id}.jpg` },
        }),
      );
    ev.push(
      makeEvent('ImageFilesDeleted', {
        ...base(),
        data: { files: [stored_path], bytes: 5000 + i },
      }),
    );
    if (i % 21 === 0) ev.push(makeEvent('ImagePurged', { ...base(), data: {} }));
  }
  return ev;
}

/**
 * Merges the lives as concurrent work interleaves them (each image's events stay in order), and
 * repeats some events with a new id as a redelivery after the dedupe window would store them again.
 */
export function interleave(lives: AnyEvent[][], rnd: () => number, duplicateShare = 0.03): AnyEvent[] {
  const queues = lives.map((l) => [...l]);
  const out: AnyEvent[] = [];
  // a window of ~50 images in flight at a time, like a busy node
  const active: AnyEvent[][] = [];
  let nextLife = 0;
  while (active.length > 0 || nextLife < queues.length) {
    while (active.length < 50 && nextLife < queues.length) active.push(queues[nextLife++] ?? []);
    const idx = Math.floor(rnd() * active.length);
    const q = active[idx];
    const e = q?.shift();
    if (e) {
      out.push(e);
      if (rnd() < duplicateShare) out.push({ ...e, id: randomUUID() } as AnyEvent);
    }
    if (!q || q.length === 0) active.splice(idx, 1);
  }
  return out;
}

// Synthetic but valid event histories for projection tests and benchmarks.
import { randomUUID } from 'node:crypto';
import type { NatsConnection } from '@nats-io/nats-core';
import { makeEvent } from '../../streams/events/codec.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import { derivedShareLink } from '../../streams/events/upcast.js';
import { publisher } from '../../shared/publish.js';
import type { Names } from '../../streams/subjects.js';

const sha = (i: number) => (i.toString(16).padStart(8, '0') + 'a'.repeat(56)).slice(0, 64);

/** The events of one image's life: stored, processed with variants and metadata, maybe backed up, moved or deleted. */
export function imageLife(
  i: number,
  pools: { a: string; b: string; s3: string },
  userId: string,
  t0 = Date.now(),
): AnyEvent[] {
  const image_id = randomUUID();
  const at = (k: number) => new Date(t0 + i * 10 + k);
  const base = { image_id, node_id: 'n1', pool_id: pools.a };
  const stored_path = `original/2026/11/28/${image_id}.jpg`;
  const ev: AnyEvent[] = [
    makeEvent('ImageStored', {
      ...base,
      occurred_at: at(0),
      data: {
        user_id: userId,
        stored_path,
        size: 1000 + i,
        sha256: sha(i),
        mime: 'image/jpeg',
        ext: 'jpg',
        width: 640,
        height: 480,
        original_filename: `img-${i}.jpg`,
        share_link: derivedShareLink(image_id),
      },
    }),
    makeEvent('ImageProcessingStarted', { ...base, occurred_at: at(1), data: { attempt: 1 } }),
  ];
  for (const [k, size] of (['small', 'medium'] as const).entries()) {
    ev.push(
      makeEvent('VariantCreated', {
        ...base,
        occurred_at: at(2 + k),
        data: {
          variant_type: `${size}_webp`,
          format: 'webp',
          size_name: size,
          width: size === 'small' ? 200 : 500,
          height: 150,
          bytes: 100 + k,
          path: `variants/2026/11/28/${image_id}_${size}.webp`,
          sha256: sha(i + k),
        },
      }),
    );
  }
  ev.push(
    makeEvent('ImageMetadataExtracted', {
      ...base,
      occurred_at: at(4),
      data: {
        make: 'Canon',
        model: 'EOS',
        lens: null,
        taken_at: '2026-11-28T10:00:00+01:00',
        iso: 100,
        f_number: 2.8,
        exposure_time: 0.01,
        focal_length: 50,
        orientation: 1,
        gps_latitude: i % 2 ? 52.5 : null,
        gps_longitude: i % 2 ? 13.4 : null,
        gps_altitude: null,
        exif: { Make: 'Canon', i },
      },
    }),
    makeEvent('ImageProcessed', {
      ...base,
      occurred_at: at(5),
      data: { width: 640, height: 480, variant_count: 2, duration_ms: 12 },
    }),
  );
  if (i % 3 === 0) {
    ev.push(
      makeEvent('BackupRequested', {
        ...base,
        occurred_at: at(6),
        data: { target_pool_id: pools.s3, bucket: 'b', due_at: at(6).toISOString(), attempt: 1 },
      }),
      makeEvent('BackupStarted', {
        ...base,
        occurred_at: at(7),
        data: { target_pool_id: pools.s3, attempt: 1 },
      }),
      makeEvent('BackupCompleted', {
        ...base,
        occurred_at: at(8),
        data: {
          target_pool_id: pools.s3,
          bucket: 'b',
          key: `images/${image_id}.jpg`,
          size: 1000 + i,
          checksum: sha(i),
        },
      }),
    );
  }
  if (i % 5 === 0) {
    const move_id = randomUUID();
    ev.push(
      makeEvent('MoveRequested', {
        ...base,
        occurred_at: at(9),
        data: { move_id, from_pool_id: pools.a, to_pool_id: pools.b },
      }),
      makeEvent('ImageMoved', {
        ...base,
        occurred_at: at(10),
        data: { move_id, from_pool_id: pools.a, to_pool_id: pools.b, to_node_id: 'n2', files: [] },
      }),
      makeEvent('SourceFilesDeleted', {
        ...base,
        occurred_at: at(11),
        data: { move_id, from_pool_id: pools.a, files: [stored_path], bytes: 1000 + i },
      }),
    );
  }
  if (i % 7 === 0) {
    ev.push(
      makeEvent('ImageDeleted', { ...base, occurred_at: at(12), data: { user_id: userId } }),
      makeEvent('ImageFilesDeleted', {
        ...base,
        occurred_at: at(13),
        data: { files: [stored_path], bytes: 1000 + i },
      }),
    );
    if (i % 14 === 0) ev.push(makeEvent('ImagePurged', { ...base, occurred_at: at(14), data: {} }));
  }
  return ev;
}

/** Publishes events pipelined (bounded in flight); returns the last sequence. */
export async function publishAll(
  nc: NatsConnection,
  n: Names,
  events: AnyEvent[],
  inFlight = 1000,
): Promise<number> {
  const pub = publisher(nc, n);
  let last = 0;
  for (let i = 0; i < events.length; i += inFlight) {
    const acks = await Promise.all(events.slice(i, i + inFlight).map((e) => pub.publish(e)));
    for (const a of acks) last = Math.max(last, a.seq);
  }
  return last;
}

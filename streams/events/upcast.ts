// Upcasting on read: stored events of an older version are lifted to the current shape before anyone
// sees them, so handlers and projections only know the current version.
import { createHash } from 'node:crypto';
import type { EventType } from './catalog.js';
import type { ImageStoredV1 } from './v1.js';

type Upcaster = (data: unknown, envelope: { image_id: string }) => unknown;

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** v1 events had no share link: derive a stable one from the image id (same answer on every replay). */
export function derivedShareLink(imageId: string): string {
  const digest = createHash('sha256').update(`share:${imageId}`).digest();
  let out = '';
  for (let i = 0; out.length < 10; i++) out += BASE62[(digest[i] ?? 0) % 62];
  return out;
}

function extOfPath(path: string): string {
  const m = /\.([a-z0-9]{2,5})$/i.exec(path);
  return (m?.[1] ?? 'bin').toLowerCase();
}

/** upcasters[type][fromVersion] lifts data from `fromVersion` to `fromVersion + 1`. */
export const upcasters: Partial<Record<EventType, Record<number, Upcaster>>> = {
  ImageStored: {
    1: (raw, env) => {
      const v1 = raw as ImageStoredV1;
      return {
        user_id: v1.user_id,
        stored_path: v1.stored_path,
        size: v1.bytes,
        sha256: v1.hash,
        mime: v1.mime,
        ext: extOfPath(v1.stored_path),
        width: v1.width,
        height: v1.height,
        original_filename: v1.filename,
        share_link: derivedShareLink(env.image_id),
      };
    },
  },
};

export function upcast(
  type: EventType,
  version: number,
  current: number,
  data: unknown,
  env: { image_id: string },
) {
  let v = version;
  let d = data;
  while (v < current) {
    const step = upcasters[type]?.[v];
    if (!step) throw new Error(`no upcaster for ${type} v${v} → v${v + 1}`);
    d = step(d, env);
    v++;
  }
  return d;
}

// Frozen schemas of superseded event versions. Never edit: stored events were written with them.
import { Type, type Static } from '@sinclair/typebox';

/** ImageStored v1 (first release): `filename`, `bytes` and `hash`; no share link in the event. */
export const ImageStoredV1 = Type.Object({
  user_id: Type.String({ format: 'uuid' }),
  stored_path: Type.String({ minLength: 1 }),
  bytes: Type.Integer({ minimum: 0 }),
  hash: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  mime: Type.String(),
  width: Type.Integer({ minimum: 1 }),
  height: Type.Integer({ minimum: 1 }),
  filename: Type.Union([Type.String(), Type.Null()]),
});
export type ImageStoredV1 = Static<typeof ImageStoredV1>;

// Every event of the system: one typed union, one runtime schema per type (TypeBox → JSON Schema,
// also used for the AsyncAPI document). Types are facts in the past tense; the type string equals the
// TypeScript type name. Adding an optional field needs no new version; a change of shape freezes the
// old schema under ./v1 and adds an upcaster (see ./upcast.ts).
import { Type, type Static, type TSchema } from '@sinclair/typebox';

const Uuid = Type.String({ format: 'uuid' });
const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Rel = Type.String({ minLength: 1, maxLength: 1024 });
const NullableStr = Type.Union([Type.String(), Type.Null()]);
const NullableNum = Type.Union([Type.Number(), Type.Null()]);
const Bytes = Type.Integer({ minimum: 0 });

export const MovedFile = Type.Object({ path: Rel, size: Bytes, sha256: Sha256 });
export type MovedFile = Static<typeof MovedFile>;

/** Data schemas of the current version of each event type. */
export const EventData = {
  ImageStored: Type.Object({
    user_id: Uuid,
    stored_path: Rel,
    size: Bytes,
    sha256: Sha256,
    mime: Type.String(),
    ext: Type.String({ pattern: '^[a-z0-9]{2,5}$' }),
    width: Type.Integer({ minimum: 1 }),
    height: Type.Integer({ minimum: 1 }),
    original_filename: NullableStr,
    share_link: Type.String({ pattern: '^[A-Za-z0-9]{10}$' }),
  }),
  ImageProcessingStarted: Type.Object({ attempt: Type.Integer({ minimum: 1 }) }),
  VariantCreated: Type.Object({
    variant_type: Type.String({ minLength: 1, maxLength: 64 }),
    format: Type.String(),
    size_name: Type.Union([Type.Literal('full'), Type.Literal('small'), Type.Literal('medium')]),
    width: Type.Integer({ minimum: 1 }),
    height: Type.Integer({ minimum: 1 }),
    bytes: Bytes,
    path: Rel,
    sha256: Sha256,
  }),
  ImageMetadataExtracted: Type.Object({
    make: NullableStr,
    model: NullableStr,
    lens: NullableStr,
    taken_at: NullableStr,
    iso: NullableNum,
    f_number: NullableNum,
    exposure_time: NullableNum,
    focal_length: NullableNum,
    orientation: NullableNum,
    gps_latitude: NullableNum,
    gps_longitude: NullableNum,
    gps_altitude: NullableNum,
    exif: Type.Record(Type.String(), Type.Unknown()),
  }),
  ImageProcessed: Type.Object({
    width: Type.Integer({ minimum: 1 }),
    height: Type.Integer({ minimum: 1 }),
    variant_count: Type.Integer({ minimum: 0 }),
    duration_ms: Type.Number({ minimum: 0 }),
  }),
  ImageProcessingFailed: Type.Object({ reason: Type.String(), attempt: Type.Integer({ minimum: 1 }) }),
  ImageReprocessRequested: Type.Object({ requested_by: Type.String() }),
  ImageDeleted: Type.Object({ user_id: Uuid }),
  ImageFilesDeleted: Type.Object({ files: Type.Array(Rel), bytes: Bytes }),
  ImagePurged: Type.Object({}),
  BackupRequested: Type.Object({
    target_pool_id: Uuid,
    bucket: Type.String(),
    due_at: Type.String({ format: 'date-time' }),
    attempt: Type.Integer({ minimum: 1 }),
  }),
  BackupStarted: Type.Object({ target_pool_id: Uuid, attempt: Type.Integer({ minimum: 1 }) }),
  BackupCompleted: Type.Object({
    target_pool_id: Uuid,
    bucket: Type.String(),
    key: Type.String(),
    size: Bytes,
    checksum: Sha256,
  }),
  BackupFailed: Type.Object({
    target_pool_id: Uuid,
    error: Type.String(),
    attempt: Type.Integer({ minimum: 1 }),
    final: Type.Boolean(),
  }),
  BackupDeleted: Type.Object({ target_pool_id: Uuid, bucket: Type.String(), key: Type.String() }),
  MoveRequested: Type.Object({ move_id: Uuid, from_pool_id: Uuid, to_pool_id: Uuid }),
  ImageMoved: Type.Object({
    move_id: Uuid,
    from_pool_id: Uuid,
    to_pool_id: Uuid,
    to_node_id: Type.String(),
    files: Type.Array(MovedFile),
  }),
  SourceFilesDeleted: Type.Object({
    move_id: Uuid,
    from_pool_id: Uuid,
    files: Type.Array(Rel),
    bytes: Bytes,
  }),
  MoveFailed: Type.Object({ move_id: Uuid, from_pool_id: Uuid, to_pool_id: Uuid, reason: Type.String() }),
} as const satisfies Record<string, TSchema>;

export type EventType = keyof typeof EventData;
export const EVENT_TYPES = Object.keys(EventData) as EventType[];

/** Current schema version of each type (bump together with an upcaster). */
export const CURRENT_VERSION: Readonly<Record<EventType, number>> = Object.freeze({
  ImageStored: 2,
  ImageProcessingStarted: 1,
  VariantCreated: 1,
  ImageMetadataExtracted: 1,
  ImageProcessed: 1,
  ImageProcessingFailed: 1,
  ImageReprocessRequested: 1,
  ImageDeleted: 1,
  ImageFilesDeleted: 1,
  ImagePurged: 1,
  BackupRequested: 1,
  BackupStarted: 1,
  BackupCompleted: 1,
  BackupFailed: 1,
  BackupDeleted: 1,
  MoveRequested: 1,
  ImageMoved: 1,
  SourceFilesDeleted: 1,
  MoveFailed: 1,
});

export function isEventType(value: string): value is EventType {
  return Object.prototype.hasOwnProperty.call(EventData, value);
}

/** The envelope every event travels in. */
export const EnvelopeSchema = Type.Object({
  id: Uuid,
  type: Type.String(),
  version: Type.Integer({ minimum: 1 }),
  occurred_at: Type.String({ format: 'date-time' }),
  image_id: Uuid,
  node_id: Type.String({ pattern: '^[A-Za-z0-9_-]+$' }),
  pool_id: Type.Union([Uuid, Type.Null()]),
  causation_id: Type.Union([Type.String(), Type.Null()]),
  correlation_id: Type.Union([Type.String(), Type.Null()]),
  data: Type.Unknown(),
});

export interface EnvelopeOf<T extends EventType> {
  id: string;
  type: T;
  version: number;
  occurred_at: string;
  image_id: string;
  node_id: string;
  pool_id: string | null;
  causation_id: string | null;
  correlation_id: string | null;
  data: Static<(typeof EventData)[T]>;
}

/** Discriminated union of every event (narrow with `switch (e.type)`). */
export type AnyEvent = { [T in EventType]: EnvelopeOf<T> }[EventType];
export type EventOf<T extends EventType> = Extract<AnyEvent, { type: T }>;
export type DataOf<T extends EventType> = Static<(typeof EventData)[T]>;

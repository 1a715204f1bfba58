// Route schemas (TypeBox → JSON Schema → OpenAPI). One error shape everywhere.
import { Type, type TSchema } from '@sinclair/typebox';
import type { FastifyContextConfig } from 'fastify';

export const ErrorSchema = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ examples: ['quota_exceeded'] }),
      message: Type.String({ examples: ['this upload would exceed your storage quota'] }),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { $id: 'Error', description: 'Every error response has this shape.' },
);

export function errors(...codes: number[]): Record<number, TSchema> {
  return Object.fromEntries(codes.map((c) => [c, Type.Ref('Error')]));
}

export const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);
/** A timestamp in a response; handlers may hand over a Date (the serializer writes it as ISO 8601). */
export const DateTime = (opts: { description?: string } = {}) =>
  Type.Unsafe<string | Date>(
    Type.String({ format: 'date-time', examples: ['2025-09-01T12:00:00.000Z'], ...opts }),
  );

/**
 * Documents a request body that the handler reads as a stream (multipart, raw bytes) in the OpenAPI
 * document only. A `schema.body` would make fastify validate the parsed body, which for these routes
 * is a stream (or nothing): the route config's swaggerTransform is read by @fastify/swagger alone.
 */
export function docOnlyBody(body: TSchema): Pick<FastifyContextConfig, 'swaggerTransform'> {
  return { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, body }, url }) };
}

export const UuidParam = Type.Object({
  uuid: Type.String({ format: 'uuid', examples: ['0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11'] }),
});

export const VariantSchema = Type.Object({
  type: Type.String({ examples: ['small_webp'] }),
  format: Type.String({ examples: ['webp'] }),
  size: Type.String({ examples: ['small'] }),
  width: Type.Integer(),
  height: Type.Integer(),
  bytes: Type.Integer(),
  url: Type.String({ format: 'uri' }),
});

export const BackupSchema = Type.Object({
  target_pool_id: Type.String(),
  status: Type.String({ enum: ['pending', 'uploading', 'completed', 'failed', 'deleted'] }),
  bucket: Type.String(),
  object_key: Type.Union([Type.String(), Type.Null()]),
  size: Type.Union([Type.Integer(), Type.Null()]),
  checksum: Type.Union([Type.String(), Type.Null()]),
  retry_count: Type.Integer(),
  last_error: Type.Union([Type.String(), Type.Null()]),
  due_at: Type.Union([Type.String(), Type.Null()]),
  completed_at: Type.Union([Type.String(), Type.Null()]),
});

const NullableNumber = Type.Union([Type.Number(), Type.Null()]);
const NullableString = Type.Union([Type.String(), Type.Null()]);

export const MetadataSchema = Type.Union([
  Type.Object({
    make: NullableString,
    model: NullableString,
    lens: NullableString,
    taken_at: NullableString,
    iso: NullableNumber,
    f_number: NullableNumber,
    exposure_time: NullableNumber,
    focal_length: NullableNumber,
    orientation: NullableNumber,
    gps: Type.Union([
      Type.Object({ latitude: Type.Number(), longitude: Type.Number(), altitude: NullableNumber }),
      Type.Null(),
    ]),
    exif: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  }),
  Type.Null(),
]);

export const ImageSchema = Type.Object(
  {
    image_uuid: Type.String({ format: 'uuid' }),
    status: Type.String({ enum: ['pending', 'processing', 'completed', 'failed'] }),
    complete: Type.Boolean(),
    status_reason: NullableString,
    url: Type.String({ format: 'uri' }),
    view_url: Type.String({ format: 'uri' }),
    share_link: Type.String(),
    width: Type.Integer(),
    height: Type.Integer(),
    size: Type.Integer(),
    sha256: Type.String(),
    mime: Type.String(),
    original_filename: NullableString,
    storage_pool_id: Type.String(),
    created_at: Type.String({ format: 'date-time' }),
    processed_at: NullableString,
    variants: Type.Array(VariantSchema),
    metadata: MetadataSchema,
    backups: Type.Array(BackupSchema),
    backup_status: NullableString,
    duplicate: Type.Optional(Type.Boolean()),
  },
  { $id: 'Image' },
);

/** A new upload (201): the image is stored and its event recorded; variants follow asynchronously. */
export const UploadResultSchema = Type.Object(
  {
    image_uuid: Type.String({ format: 'uuid' }),
    view_url: Type.String(),
    url: Type.String(),
    variants: Type.Array(Type.Unknown(), { description: 'always empty: variants are made after the answer' }),
    duplicate: Type.Boolean(),
    status: Type.String({ examples: ['pending'] }),
    width: Type.Integer(),
    height: Type.Integer(),
    size: Type.Integer(),
    sha256: Type.String(),
  },
  {
    examples: [
      {
        image_uuid: '0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11',
        view_url: 'https://pixelfox.example.com/i/Ab3dE6gH9k',
        url: 'https://img1.example.com/uploads/original/2025/09/01/0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11.jpg',
        variants: [],
        duplicate: false,
        status: 'pending',
        width: 4000,
        height: 3000,
        size: 2345678,
        sha256: '6bfdabd4fc33d112283c147acccc574e770bbe6fbdbc3d4da968ba7b606ecc2f',
      },
    ],
  },
);

// Route schemas (TypeBox → JSON Schema → OpenAPI). One error shape everywhere.
import { Type, type TSchema } from '@sinclair/typebox';

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

export const UploadResultSchema = Type.Object({
  image_uuid: Type.String({ format: 'uuid' }),
  view_url: Type.String(),
  url: Type.String(),
  variants: Type.Array(Type.Unknown()),
  duplicate: Type.Boolean(),
  status: Type.String(),
  width: Type.Integer(),
  height: Type.Integer(),
  size: Type.Integer(),
  sha256: Type.String(),
});

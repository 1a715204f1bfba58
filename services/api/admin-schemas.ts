// Response schemas of the admin API. fastify serialises answers through them and drops properties a
// schema does not name, so each lists everything its handler sends. Rows read with `select *`
// (pools, users, failed jobs) and stored events keep `additionalProperties: true`: a column added by a
// migration, or an envelope field of a newer producer, still reaches operators instead of vanishing.
import { Type } from '@sinclair/typebox';
import { STORAGE_TIERS, STORAGE_TYPES } from '../../shared/pools.js';
import { SETTING_DEFAULTS } from '../../shared/settings.js';
import { DateTime, Nullable } from './schemas.js';

const EXAMPLE_ID = '0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11';
const EXAMPLE_AT = '2025-09-01T12:00:00.000Z';
const Uuid = Type.String({ format: 'uuid', examples: [EXAMPLE_ID] });
const Count = Type.Integer({ minimum: 0 });

export const PoolHealthSchema = Type.Object(
  {
    pool_id: Type.String({ format: 'uuid' }),
    node_id: Type.String({ examples: ['local'] }),
    healthy: Type.Boolean(),
    reachable: Type.Boolean(),
    free_bytes: Nullable(Type.Number({ description: 'null: no bound (an S3 pool without a capacity)' })),
    used_bytes: Nullable(Type.Number()),
    checked_at: DateTime(),
  },
  { description: "The node's latest health report for the pool (expires after 20 s)" },
);

const poolProperties = {
  id: Uuid,
  name: Type.String({ examples: ['default'] }),
  storage_type: Type.String({ enum: [...STORAGE_TYPES] }),
  storage_tier: Type.String({ enum: [...STORAGE_TIERS] }),
  priority: Type.Integer(),
  base_path: Nullable(Type.String()),
  public_base_url: Type.String(),
  upload_api_url: Nullable(Type.String()),
  node_id: Type.String(),
  max_capacity_bytes: Nullable(Type.Integer()),
  is_active: Type.Boolean(),
  is_backup_target: Type.Boolean(),
  s3_bucket: Nullable(Type.String()),
  s3_region: Nullable(Type.String()),
  s3_endpoint: Nullable(Type.String()),
  s3_access_key: Nullable(
    Type.String({ description: 'first four characters only; the secret key never leaves the database' }),
  ),
  s3_force_path_style: Type.Boolean(),
  s3_prefix: Type.String(),
  s3_private: Type.Optional(Type.Boolean({ description: 'S3 pools: served through presigned GETs' })),
  description: Type.String(),
  created_at: DateTime(),
  updated_at: DateTime(),
};

const poolExample = {
  id: EXAMPLE_ID,
  name: 'default',
  storage_type: 'local',
  storage_tier: 'hot',
  priority: 100,
  base_path: '/var/lib/pixelfox/pools/default',
  public_base_url: 'https://img1.example.com',
  upload_api_url: 'https://img1.example.com/api/internal/upload',
  node_id: 'local',
  max_capacity_bytes: null,
  is_active: true,
  is_backup_target: false,
  s3_bucket: null,
  s3_region: null,
  s3_endpoint: null,
  s3_access_key: null,
  s3_force_path_style: true,
  s3_prefix: '',
  s3_private: false,
  description: '',
  created_at: EXAMPLE_AT,
  updated_at: EXAMPLE_AT,
};

export const PoolSchema = Type.Object(poolProperties, {
  additionalProperties: true,
  description: 'A storage pool (credentials masked)',
  examples: [poolExample],
});

export const PoolWithUsageSchema = Type.Object(
  {
    ...poolProperties,
    used_bytes: Type.Integer({ description: 'bytes charged to the pool by the read model' }),
    file_count: Type.Integer(),
    health: Nullable(PoolHealthSchema),
  },
  {
    additionalProperties: true,
    examples: [
      {
        ...poolExample,
        used_bytes: 25754,
        file_count: 9,
        health: {
          pool_id: EXAMPLE_ID,
          node_id: 'local',
          healthy: true,
          reachable: true,
          free_bytes: 83616690176,
          used_bytes: 25754,
          checked_at: EXAMPLE_AT,
        },
      },
    ],
  },
);

/** Every setting with its current value (defaults where unset), typed after its default. */
export const SettingsSchema = Type.Object(
  Object.fromEntries(
    Object.entries(SETTING_DEFAULTS).map(([key, value]) => [
      key,
      key === 'avif_engine'
        ? Type.Union([Type.Literal('sharp'), Type.Literal('ffmpeg')])
        : typeof value === 'boolean'
          ? Type.Boolean()
          : Type.Number(),
    ]),
  ),
  { examples: [SETTING_DEFAULTS] },
);

export const SettingValue = Type.Union([Type.Boolean(), Type.Number(), Type.String()], {
  examples: [3, true, 'ffmpeg'],
});

const PlanSchema = Type.Union([Type.Literal('free'), Type.Literal('premium'), Type.Literal('premium_max')]);

export const UserSchema = Type.Object(
  {
    id: Uuid,
    email: Type.String({ examples: ['ada@example.com'] }),
    plan: PlanSchema,
    prefs: Type.Object(
      { webp: Type.Optional(Type.Boolean()), avif: Type.Optional(Type.Boolean()) },
      { additionalProperties: true, description: 'format preferences (unset: allowed by plan)' },
    ),
    created_at: DateTime(),
    disabled_at: Nullable(DateTime()),
  },
  {
    additionalProperties: true,
    examples: [
      {
        id: EXAMPLE_ID,
        email: 'ada@example.com',
        plan: 'premium',
        prefs: { webp: false },
        created_at: EXAMPLE_AT,
        disabled_at: null,
      },
    ],
  },
);

export const CreatedUserSchema = Type.Object(
  {
    user_id: Uuid,
    api_key: Type.String({ description: 'shown once: only its hash is stored' }),
    email: Type.String(),
    plan: PlanSchema,
  },
  {
    examples: [
      {
        user_id: EXAMPLE_ID,
        api_key: 'pfx_1a2b3c4d_Qm9vb3RzdHJhcHBpbmcgaXMgZnVuIGFuZCB0aGlz',
        email: 'ada@example.com',
        plan: 'premium',
      },
    ],
  },
);

export const ApiKeySchema = Type.Object(
  {
    id: Uuid,
    user_id: Type.String({ format: 'uuid' }),
    name: Type.String({ examples: ['default'] }),
    prefix: Type.String({ description: 'the key starts with pfx_<prefix>_', examples: ['1a2b3c4d'] }),
    created_at: DateTime(),
    revoked_at: Nullable(DateTime()),
    last_used_at: Nullable(DateTime()),
  },
  { description: 'An API key (never the key itself)' },
);

export const NewKeySchema = Type.Object(
  {
    key_id: Uuid,
    api_key: Type.String({ description: 'shown once: only its hash is stored' }),
  },
  { examples: [{ key_id: EXAMPLE_ID, api_key: 'pfx_1a2b3c4d_Qm9vb3RzdHJhcHBpbmcgaXMgZnVuIGFuZCB0aGlz' }] },
);

/** One stored event as it is in the stream, with its stream sequence. */
export const HistoryEventSchema = Type.Object(
  {
    seq: Type.Integer({ minimum: 1 }),
    id: Type.String({ format: 'uuid' }),
    type: Type.String({ examples: ['ImageStored'] }),
    version: Type.Integer({ minimum: 1 }),
    occurred_at: DateTime(),
    image_id: Type.String({ format: 'uuid' }),
    node_id: Type.String(),
    pool_id: Nullable(Type.String({ format: 'uuid' })),
    causation_id: Nullable(Type.String()),
    correlation_id: Nullable(Type.String()),
    data: Type.Unknown({ description: "the event's data; its schema per type is in /asyncapi.json" }),
  },
  {
    additionalProperties: true,
    examples: [
      {
        seq: 2,
        id: '5b1f0b1e-7b9c-4c55-9a53-2f1f3f4b8f21',
        type: 'ImageProcessingStarted',
        version: 1,
        occurred_at: EXAMPLE_AT,
        image_id: EXAMPLE_ID,
        node_id: 'local',
        pool_id: '9d0c6a8e-3f57-4a4e-8c1e-6f1b2a3c4d5e',
        causation_id: '4e2d9c1a-0b3f-4d6e-8a7b-1c2d3e4f5a6b',
        correlation_id: 'req-1',
        data: { attempt: 1 },
      },
    ],
  },
);

export const FailedJobSchema = Type.Object(
  {
    consumer: Type.String({ examples: ['pixelfox_processor-local'] }),
    stream_seq: Type.Integer({ minimum: 1 }),
    kind: Type.String({ enum: ['max_deliveries', 'terminated'] }),
    image_id: Nullable(Type.String({ format: 'uuid' })),
    event_type: Nullable(Type.String()),
    deliveries: Nullable(Type.Integer()),
    reason: Nullable(Type.String()),
    failed_at: DateTime(),
    retried_at: Nullable(DateTime({ description: 'set once retried; listed only with ?all=true' })),
  },
  {
    additionalProperties: true,
    examples: [
      {
        consumer: 'pixelfox_processor-local',
        stream_seq: 42,
        kind: 'terminated',
        image_id: EXAMPLE_ID,
        event_type: 'ImageStored',
        deliveries: 1,
        reason: 'corrupt image',
        failed_at: EXAMPLE_AT,
        retried_at: null,
      },
    ],
  },
);

export const ConsumersSchema = Type.Object(
  {
    consumers: Type.Array(
      Type.Object({
        name: Type.String({ examples: ['pixelfox_processor-local'] }),
        filter: Type.String({ examples: ['pixelfox.ev.ImageStored.local.*'] }),
        pending: Count,
        ack_pending: Count,
        redelivered: Count,
        waiting: Count,
      }),
    ),
    projector: Type.Object({
      head: Type.Integer({ description: 'last sequence of the stream', examples: [1200] }),
      checkpoint: Type.Integer({ description: 'last sequence the read models applied', examples: [1198] }),
      lag: Count,
    }),
  },
  { description: 'Durable consumers of the event stream, and how far the read models are behind' },
);

export const BackupCountsSchema = Type.Array(
  Type.Object({ status: Type.String({ examples: ['completed'] }), count: Count }),
  {
    examples: [
      [
        { status: 'completed', count: 1200 },
        { status: 'failed', count: 2 },
      ],
    ],
  },
);

/** Answers of the actions that only publish events: how many were requested. */
export const counted = (key: string, description: string) =>
  Type.Object({ [key]: Type.Integer({ minimum: 0, description, examples: [3] }) });

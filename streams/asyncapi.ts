// The AsyncAPI 3.0 document of the event stream, generated from the same code that defines it: event
// data schemas and versions from ./events/catalog.ts, subjects from ./subjects.ts, durable consumers from
// ./definitions.ts. Served at GET /asyncapi.json and written to ./asyncapi.json by
// `node --import tsx streams/asyncapi.ts` (a test fails when the file is stale).
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { TSchema } from '@sinclair/typebox';
import { CONSUMERS } from './definitions.js';
import { CURRENT_VERSION, EVENT_TYPES, EnvelopeSchema, EventData, type EventType } from './events/catalog.js';
import { ANY_NODE, names } from './subjects.js';

/** What each event means and who writes it (the same facts as the table in streams/README.md). */
const ABOUT: Readonly<Record<EventType, { summary: string; producer: string }>> = {
  ImageStored: { summary: 'The original file is in place on its pool', producer: 'storage node (upload)' },
  ImageProcessingStarted: { summary: 'A variant worker started on the image', producer: 'variant worker' },
  VariantCreated: { summary: 'One variant file was written', producer: 'variant worker' },
  ImageMetadataExtracted: { summary: 'EXIF metadata was read from the original', producer: 'variant worker' },
  ImageProcessed: { summary: 'Every variant of the image exists', producer: 'variant worker' },
  ImageProcessingFailed: {
    summary: 'The image could not be processed (corrupt input, or the last delivery failed)',
    producer: 'variant worker',
  },
  ImageReprocessRequested: {
    summary: 'An operator asked for the variants again',
    producer: 'operator (CLI, admin API)',
  },
  ImageDeleted: { summary: 'The owner deleted the image; it is gone from the API', producer: 'API' },
  ImageFilesDeleted: { summary: "The image's files were removed from its pool", producer: 'deleter' },
  ImagePurged: { summary: 'Nothing of the image remains (no completed backup left)', producer: 'deleter' },
  BackupRequested: {
    summary: 'A backup of the original is due at `due_at`',
    producer: 'backup scheduler, backup worker',
  },
  BackupStarted: { summary: 'A backup attempt started', producer: 'backup worker' },
  BackupCompleted: {
    summary: 'The original is in the backup bucket, checksum verified',
    producer: 'backup worker',
  },
  BackupFailed: {
    summary: 'A backup attempt failed (`final`: no attempt follows)',
    producer: 'backup worker',
  },
  BackupDeleted: { summary: 'The backup object was removed', producer: 'deleter' },
  MoveRequested: { summary: 'The image is to move to another pool', producer: 'operator (CLI, admin API)' },
  ImageMoved: {
    summary: 'The target pool confirmed every file; the image now lives there',
    producer: 'mover',
  },
  SourceFilesDeleted: { summary: 'The files on the old pool were removed after the move', producer: 'mover' },
  MoveFailed: { summary: 'The move was abandoned; the image stays where it was', producer: 'mover' },
};

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface AsyncApiDocument extends JsonObject {
  asyncapi: string;
  info: JsonObject;
  channels: JsonObject;
  operations: JsonObject;
  components: { messages: JsonObject; schemas: JsonObject; parameters: JsonObject };
}

/** TypeBox schema → plain JSON Schema (drops TypeBox's symbol keys). */
function plain(schema: TSchema): JsonObject {
  return JSON.parse(JSON.stringify(schema)) as JsonObject;
}

// Placeholders that cannot clash with anything names() spells itself.
const NS = 'NAMESPACE0';
const NODE = 'NODE0';
const IMAGE = 'IMAGE0';
const PARAM: Record<string, string> = { [NS]: '{namespace}', [NODE]: '{nodeId}', [IMAGE]: '{imageId}' };

/** A subject spelled by subjects.ts with the placeholders turned into AsyncAPI parameters. */
function parameterised(subject: string): string {
  return subject
    .split('.')
    .map((token) => PARAM[token] ?? token)
    .join('.');
}

const address = (type: EventType) => parameterised(names(NS).eventSubject(type, NODE, IMAGE));

function seconds(ms: number): string {
  return ms % 60_000 === 0 ? `${ms / 60_000} min` : `${ms / 1000} s`;
}

export function asyncApiDocument(): AsyncApiDocument {
  const envelope = plain(EnvelopeSchema);
  const envelopeProps = envelope.properties as JsonObject;

  const channels: JsonObject = {};
  const messages: JsonObject = {};
  const schemas: JsonObject = {};
  const operations: JsonObject = {};

  for (const type of EVENT_TYPES) {
    const about = ABOUT[type];
    schemas[`${type}Data`] = { ...plain(EventData[type]), title: `${type}Data` };
    messages[type] = {
      name: type,
      title: type,
      summary: about.summary,
      description: `Written by: ${about.producer}. Schema version ${CURRENT_VERSION[type]} of \`data\`; older versions are upcast on read.`,
      contentType: 'application/json',
      headers: {
        type: 'object',
        properties: {
          'Nats-Msg-Id': {
            type: 'string',
            format: 'uuid',
            description:
              'The event id; JetStream drops a second publish of the same id within the duplicate window',
          },
        },
      },
      payload: {
        ...envelope,
        title: `${type}Event`,
        properties: {
          ...envelopeProps,
          type: { type: 'string', const: type },
          version: { type: 'integer', const: CURRENT_VERSION[type] },
          data: { $ref: `#/components/schemas/${type}Data` },
        },
      },
      'x-event-version': CURRENT_VERSION[type],
    };
    channels[type] = {
      address: address(type),
      title: type,
      summary: about.summary,
      parameters: {
        namespace: { $ref: '#/components/parameters/namespace' },
        nodeId: { $ref: '#/components/parameters/nodeId' },
        imageId: { $ref: '#/components/parameters/imageId' },
      },
      messages: { [type]: { $ref: `#/components/messages/${type}` } },
    };
    operations[`publish${type}`] = {
      action: 'send',
      title: `Publish ${type}`,
      summary: `${about.producer} publishes ${type}`,
      channel: { $ref: `#/channels/${type}` },
      messages: [{ $ref: `#/channels/${type}/messages/${type}` }],
    };
  }

  for (const c of Object.values(CONSUMERS)) {
    const durable = names(NS).durable(c.kind, NODE).replace(NS, '{namespace}').replace(NODE, '{nodeId}');
    const filter = parameterised(names(NS).typeFilter(c.event, NODE));
    const deliveries = c.maxDeliver < 0 ? 'unlimited deliveries' : `max_deliver ${c.maxDeliver}`;
    const backoff = c.backoffMs.length ? `, backoff ${c.backoffMs.map(seconds).join('/')}` : '';
    operations[`consume-${c.kind}`] = {
      action: 'receive',
      title: `Durable consumer ${c.kind}`,
      summary: `Durable \`${durable}\` (one per node, filter \`${filter}\`)`,
      description: `Explicit ack, ack_wait ${seconds(c.ackWaitMs)}, ${deliveries}${backoff}.`,
      channel: { $ref: `#/channels/${c.event}` },
      messages: [{ $ref: `#/channels/${c.event}/messages/${c.event}` }],
    };
  }

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'PixelFox Storage events',
      version: '1.0.0',
      description: [
        `Everything that happens to an image is an event in one JetStream stream, \`${names(NS).stream.replace(NS, '{namespace}')}\` (subjects \`${parameterised(names(NS).allEvents)}\`).`,
        'Events are the source of truth: file storage, no limits, message delete and purge refused, duplicate window 10 minutes (the event id is the `Nats-Msg-Id`).',
        'Every message is one JSON envelope; `data` depends on `type`. Subscribe with any NATS client, filtering on the subject tokens (type, node, image).',
      ].join(' '),
    },
    defaultContentType: 'application/json',
    servers: {
      nats: {
        host: '127.0.0.1:4222',
        protocol: 'nats',
        description: 'NATS with JetStream (NATS_URL); the address of a deployment is its own',
      },
    },
    channels,
    operations,
    components: {
      messages,
      schemas,
      parameters: {
        namespace: {
          description: 'PIXELFOX_NAMESPACE: prefix of the stream, every consumer and KV bucket',
          default: 'pixelfox',
          examples: ['pixelfox'],
        },
        nodeId: {
          description: `Storage node that owns the image's pool when the event is written (the node that acts on it); \`${ANY_NODE}\` for pools every node may serve`,
          examples: ['local', ANY_NODE],
        },
        imageId: { description: 'The image the event is about (uuid)' },
      },
    },
  };
}

/** The document as written to streams/asyncapi.json (formatted like the rest of the repo). */
export async function asyncApiFileText(file: string): Promise<string> {
  const text = `${JSON.stringify(asyncApiDocument(), null, 2)}\n`;
  try {
    const prettier = await import('prettier');
    const options = (await prettier.resolveConfig(file)) ?? {};
    return await prettier.format(text, { ...options, filepath: file });
  } catch {
    return text; // prettier is a dev dependency: without it the plain JSON is written
  }
}

export const ASYNCAPI_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'asyncapi.json');

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  await fs.writeFile(ASYNCAPI_FILE, await asyncApiFileText(ASYNCAPI_FILE));
  console.log(`wrote ${path.relative(process.cwd(), ASYNCAPI_FILE)}`);
}

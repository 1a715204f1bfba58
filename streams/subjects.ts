// The only place subject strings and stream/consumer names are spelled.
//
// Subject scheme (tokens coarse → fine, every filterable token has its own position):
//   <ns>.ev.<EventType>.<nodeId>.<imageId>
// - one event type of one node:   <ns>.ev.ImageStored.node-a.*   (node-filtered durable consumers)
// - one image's whole history:    <ns>.ev.*.*.<imageId>
// - everything:                   <ns>.ev.>
// `nodeId` is the node that owns the pool the event is about (the node that must act on it).
import type { EventType } from './events/catalog.js';

/** Node token used for pools that every node may serve (S3 pools) and for events no node acts on. */
export const ANY_NODE = '_any';

const TOKEN = /^[A-Za-z0-9_-]+$/;

export function assertToken(kind: string, value: string): string {
  if (!TOKEN.test(value)) throw new Error(`${kind} "${value}" may only contain letters, digits, "_" and "-"`);
  return value;
}

export interface Names {
  readonly ns: string;
  readonly stream: string;
  readonly allEvents: string;
  /** Stream capturing JetStream advisories about our consumers (failed work). */
  readonly advisoryStream: string;
  readonly advisorySubjects: string[];
  eventSubject(type: EventType, nodeId: string, imageId: string): string;
  typeFilter(type: EventType, nodeId?: string): string;
  imageFilter(imageId: string): string;
  /** Parses `<ns>.ev.<Type>.<node>.<image>`. */
  parseSubject(subject: string): { type: string; nodeId: string; imageId: string } | null;
  durable(kind: string, nodeId: string): string;
  kvBucket(kind: string): string;
}

export function names(namespace: string): Names {
  const ns = assertToken('PIXELFOX_NAMESPACE', namespace);
  return {
    ns,
    stream: `${ns}_events`,
    allEvents: `${ns}.ev.>`,
    advisoryStream: `${ns}_advisories`,
    advisorySubjects: [
      `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${ns}_events.*`,
      `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.${ns}_events.*`,
    ],
    eventSubject: (type, nodeId, imageId) => `${ns}.ev.${type}.${assertToken('node id', nodeId)}.${imageId}`,
    typeFilter: (type, nodeId) => `${ns}.ev.${type}.${nodeId ?? '*'}.*`,
    imageFilter: (imageId) => `${ns}.ev.*.*.${imageId}`,
    parseSubject: (subject) => {
      const p = subject.split('.');
      if (p.length !== 5 || p[0] !== ns || p[1] !== 'ev') return null;
      return { type: p[2] ?? '', nodeId: p[3] ?? '', imageId: p[4] ?? '' };
    },
    durable: (kind, nodeId) => `${ns}_${kind}-${assertToken('node id', nodeId)}`,
    kvBucket: (kind) => `${ns}_${kind}`,
  };
}

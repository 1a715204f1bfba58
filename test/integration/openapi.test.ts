// The API documents of a running stack: /openapi.json (OpenAPI 3.1, generated from the route schemas)
// checked against the rules of the spec that matter to clients, every schema compiled with Ajv; /docs;
// and /asyncapi.json (AsyncAPI 3.0, generated from the event catalog), which must equal the file in the
// repo and describe the events the stack really writes.
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { Ajv } from 'ajv';
import { Ajv2020 } from 'ajv/dist/2020.js';
import formats from 'ajv-formats';
import { ASYNCAPI_FILE, asyncApiDocument } from '../../streams/asyncapi.js';
import { CURRENT_VERSION, EVENT_TYPES, EventData } from '../../streams/events/catalog.js';
import { names } from '../../streams/subjects.js';
import { FIXTURES, makeUser, startInProcess, testEnv, uploadFile, waitForStatus } from '../helpers/stack.js';

const addFormats = formats.default;
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;

/** POST/PUT/PATCH operations that take no body by design (the path says everything). */
const NO_BODY = new Set([
  'POST /api/v1/uploads/{upload_id}/complete',
  'POST /api/admin/keys/{id}/revoke',
  'POST /api/admin/keys/{id}/rotate',
  'POST /api/admin/images/{id}/reprocess',
  'POST /api/admin/images/reprocess-failed',
]);

/** Resolves a local JSON pointer (`#/a/b~1c`) in `doc`; undefined when it does not exist. */
function resolvePointer(doc: unknown, ref: string): unknown {
  if (!ref.startsWith('#')) return undefined;
  let cur: unknown = doc;
  for (const raw of ref.slice(1).split('/').slice(1)) {
    const key = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    if (!isObj(cur) && !Array.isArray(cur)) return undefined;
    cur = (cur as Obj)[key];
    if (cur === undefined) return undefined;
  }
  return cur;
}

/** Every `$ref` value in the document, with where it was found. */
function refsIn(node: unknown, at = '#'): { at: string; ref: string }[] {
  if (Array.isArray(node)) return node.flatMap((v, i) => refsIn(v, `${at}/${i}`));
  if (!isObj(node)) return [];
  return Object.entries(node).flatMap(([k, v]) =>
    k === '$ref' && typeof v === 'string'
      ? [{ at, ref: v }]
      : refsIn(v, `${at}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`),
  );
}

/** Does any schema below this node carry `examples` or `example`? */
function hasExamples(node: unknown, doc: Obj, seen = new Set<unknown>()): boolean {
  if (seen.has(node)) return false;
  seen.add(node);
  if (Array.isArray(node)) return node.some((v) => hasExamples(v, doc, seen));
  if (!isObj(node)) return false;
  if ('examples' in node || 'example' in node) return true;
  if (typeof node.$ref === 'string') return hasExamples(resolvePointer(doc, node.$ref), doc, seen);
  return Object.values(node).some((v) => hasExamples(v, doc, seen));
}

/** Deep copy with local refs rewritten to point into a schema registered under `base`. */
function rebase(node: unknown, from: string, base: string): unknown {
  if (Array.isArray(node)) return node.map((v) => rebase(v, from, base));
  if (!isObj(node)) return node;
  return Object.fromEntries(
    Object.entries(node).map(([k, v]) => [
      k,
      k === '$ref' && typeof v === 'string' && v.startsWith(from)
        ? `${base}#/$defs/${v.slice(from.length)}`
        : rebase(v, from, base),
    ]),
  );
}

t.test('API documents', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const api = node.url;

  const res = await fetch(`${api}/openapi.json`);
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /application\/json/);
  const doc = (await res.json()) as Obj;

  await t.test('OpenAPI 3.1: structure', async (t) => {
    t.match(doc.openapi, /^3\.1\.\d+$/, 'OpenAPI 3.1');
    t.match(doc.info, { title: String, version: String });
    t.ok(isObj(doc.paths) && Object.keys(doc.paths).length > 10, 'paths listed');
    const components = isObj(doc.components) ? doc.components : {};
    const schemes = isObj(components.securitySchemes) ? components.securitySchemes : {};
    const operationIds = new Set<string>();
    // Collected, then compared with [] once: the diff lists every violation.
    const problems: string[] = [];
    const check = (ok: boolean, what: string) => void (ok || problems.push(what));
    let operations = 0;
    for (const [p, item] of Object.entries(doc.paths as Obj)) {
      check(p.startsWith('/'), `${p}: path must start with /`);
      if (!isObj(item)) {
        problems.push(`${p}: path item is not an object`);
        continue;
      }
      const ops = HTTP_METHODS.filter((m) => isObj(item[m]));
      check(ops.length > 0, `${p}: no operations`);
      const templated = [...p.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
      for (const m of ops) {
        operations++;
        const op = item[m] as Obj;
        const where = `${m.toUpperCase()} ${p}`;
        if (typeof op.operationId === 'string') {
          check(!operationIds.has(op.operationId), `${where}: operationId ${op.operationId} not unique`);
          operationIds.add(op.operationId);
        }
        const responses = isObj(op.responses) ? op.responses : {};
        check(Object.keys(responses).length > 0, `${where}: no responses`);
        for (const [code, r] of Object.entries(responses)) {
          check(/^([1-5]\d\d|[1-5]XX|default)$/.test(code), `${where}: bad response key ${code}`);
          const resolved = isObj(r) && typeof r.$ref === 'string' ? resolvePointer(doc, r.$ref) : r;
          check(
            isObj(resolved) && typeof resolved.description === 'string',
            `${where} ${code}: response without description`,
          );
          if (isObj(resolved) && isObj(resolved.content)) {
            for (const [mt, media] of Object.entries(resolved.content)) {
              check(isObj(media) && isObj(media.schema), `${where} ${code} ${mt}: media type without schema`);
            }
          }
        }
        const params = [
          ...(Array.isArray(item.parameters) ? item.parameters : []),
          ...(Array.isArray(op.parameters) ? op.parameters : []),
        ]
          .map((x) => (isObj(x) && typeof x.$ref === 'string' ? resolvePointer(doc, x.$ref) : x))
          .filter(isObj);
        for (const prm of params) {
          const name = String(prm.name);
          check(
            typeof prm.name === 'string' && ['query', 'header', 'path', 'cookie'].includes(String(prm.in)),
            `${where}: parameter ${name} lacks name or in`,
          );
          check(isObj(prm.schema) || isObj(prm.content), `${where}: parameter ${name} has no schema`);
          if (prm.in === 'path') {
            check(prm.required === true, `${where}: path parameter ${name} not required`);
            check(templated.includes(name), `${where}: path parameter ${name} not in the path`);
          }
        }
        for (const name of templated)
          check(
            params.some((x) => x.in === 'path' && x.name === name),
            `${where}: {${name}} not declared`,
          );
        if (isObj(op.requestBody)) {
          check(
            isObj(op.requestBody.content) && Object.keys(op.requestBody.content).length > 0,
            `${where}: request body without content`,
          );
        }
        for (const req of Array.isArray(op.security) ? op.security : []) {
          for (const scheme of Object.keys(isObj(req) ? req : {}))
            check(scheme in schemes, `${where}: security scheme ${scheme} undefined`);
        }
      }
    }
    t.ok(operations > 20, `${operations} operations checked`);
    t.same(problems, [], 'paths, operations, responses, parameters and security follow OpenAPI 3.1');
  });

  await t.test('OpenAPI: every $ref resolves', async (t) => {
    const refs = refsIn(doc);
    t.ok(refs.length > 0, 'the document uses refs');
    const broken = refs.filter((r) => resolvePointer(doc, r.ref) === undefined);
    t.same(broken, [], 'no dangling $ref');
  });

  await t.test('OpenAPI: every schema compiles (JSON Schema 2020-12, Ajv strict)', async (t) => {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12 plus a few annotation keywords of its own.
    const ajv = new Ajv2020({ strict: true, allErrors: true, validateFormats: true });
    addFormats(ajv);
    ajv.addVocabulary(['discriminator', 'xml', 'externalDocs', 'example']);
    const components = isObj(doc.components) && isObj(doc.components.schemas) ? doc.components.schemas : {};
    const BASE = 'urn:pixelfox:openapi-components';
    ajv.addSchema({ $id: BASE, $defs: rebase(components, '#/components/schemas/', BASE) as Obj });
    const found: { at: string; schema: unknown }[] = Object.entries(components).map(([k, s]) => ({
      at: `#/components/schemas/${k}`,
      schema: s,
    }));
    const walk = (n: unknown, at: string) => {
      if (Array.isArray(n)) return n.forEach((v, i) => walk(v, `${at}/${i}`));
      if (!isObj(n)) return;
      for (const [k, v] of Object.entries(n)) {
        if (k === 'schema' && isObj(v)) found.push({ at: `${at}/schema`, schema: v });
        else walk(v, `${at}/${k}`);
      }
    };
    walk(doc.paths, '#/paths');
    t.ok(found.length > 50, `found ${found.length} schemas`);
    const failed: string[] = [];
    for (const f of found) {
      try {
        ajv.compile(rebase(f.schema, '#/components/schemas/', BASE) as Obj);
      } catch (err) {
        failed.push(`${f.at}: ${(err as Error).message}`);
      }
    }
    t.same(failed, [], 'every schema compiles');
  });

  await t.test('OpenAPI: routes document their input and output, with examples', async (t) => {
    const gaps: Record<string, ('response' | 'body')[]> = {};
    const noExamples: string[] = [];
    for (const [p, item] of Object.entries(doc.paths as Obj)) {
      for (const m of HTTP_METHODS) {
        const op = isObj(item) ? item[m] : undefined;
        if (!isObj(op)) continue;
        const key = `${m.toUpperCase()} ${p}`;
        const responses = isObj(op.responses) ? op.responses : {};
        const success = Object.entries(responses).filter(([code]) => /^2/.test(code));
        const documented = success.some(
          ([code, r]) =>
            code === '204' ||
            (isObj(r) &&
              isObj(r.content) &&
              Object.values(r.content).some((c) => isObj(c) && isObj(c.schema))),
        );
        const missing: ('response' | 'body')[] = [];
        if (!documented) missing.push('response');
        if (['post', 'put', 'patch'].includes(m) && !isObj(op.requestBody) && !NO_BODY.has(key))
          missing.push('body');
        if (missing.length) gaps[key] = missing;
        // An example of what the client sends or gets back on success; the shared error shape's own
        // examples do not count.
        if (!hasExamples([op.requestBody, op.parameters, success.map(([, r]) => r)], doc))
          noExamples.push(key);
      }
    }
    t.same(gaps, {}, 'every operation documents its success response and the body it reads');
    t.same(noExamples, [], 'every operation has an example of its request or success response');
    t.ok(
      doc.paths && isObj((doc.paths as Obj)['/api/admin/overview']),
      'the status page endpoint is documented',
    );
  });

  await t.test('/docs serves Swagger UI', async (t) => {
    const r = await fetch(`${api}/docs`);
    t.equal(r.status, 200);
    t.match(r.headers.get('content-type'), /text\/html/);
    t.match(await r.text(), /swagger-ui/i);
  });

  await t.test('AsyncAPI: served document equals the generator and the file in the repo', async (t) => {
    const r = await fetch(`${api}/asyncapi.json`);
    t.equal(r.status, 200);
    t.match(r.headers.get('content-type'), /application\/json/);
    const served = (await r.json()) as Obj;
    t.same(served, asyncApiDocument(), 'served = generated');
    const file = JSON.parse(await fs.readFile(ASYNCAPI_FILE, 'utf8')) as unknown;
    t.same(
      file,
      asyncApiDocument(),
      `${path.relative(process.cwd(), ASYNCAPI_FILE)} is current (regenerate: node --import tsx streams/asyncapi.ts)`,
    );
  });

  const asyncDoc = asyncApiDocument();
  await t.test('AsyncAPI: every event type with its payload schema and subject', async (t) => {
    t.equal(asyncDoc.asyncapi, '3.0.0');
    const messages = asyncDoc.components.messages;
    const channels = asyncDoc.channels;
    t.same(Object.keys(messages).sort(), [...EVENT_TYPES].sort(), 'one message per event type');
    const n = names('ns1');
    const imageId = '0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11';
    for (const type of EVENT_TYPES) {
      const msg = messages[type] as Obj;
      const payload = msg.payload as Obj;
      const props = payload.properties as Obj;
      t.match(props.type, { const: type }, `${type}: type const`);
      t.match(props.version, { const: CURRENT_VERSION[type] }, `${type}: version const`);
      const data = resolvePointer(asyncDoc, String((props.data as Obj).$ref)) as Obj;
      const { title: _title, ...dataSchema } = data;
      t.same(
        dataSchema,
        JSON.parse(JSON.stringify(EventData[type])),
        `${type}: data schema is the catalog's`,
      );
      t.ok(
        Array.isArray(payload.required) &&
          ['id', 'type', 'version', 'data', 'image_id'].every((k) =>
            (payload.required as unknown[]).includes(k),
          ),
        `${type}: envelope fields required`,
      );
      const channel = channels[type] as Obj;
      const address = String(channel.address)
        .replace('{namespace}', 'ns1')
        .replace('{nodeId}', 'node-a')
        .replace('{imageId}', imageId);
      t.equal(address, n.eventSubject(type, 'node-a', imageId), `${type}: address is the subject`);
      const params = [...String(channel.address).matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
      t.same(
        Object.keys(channel.parameters as Obj).sort(),
        params.sort(),
        `${type}: every address parameter is described`,
      );
    }
    for (const [id, op] of Object.entries(asyncDoc.operations)) {
      const o = op as Obj;
      const channelRef = String((o.channel as Obj).$ref);
      t.ok(resolvePointer(asyncDoc, channelRef), `${id}: channel exists`);
      for (const m of o.messages as Obj[])
        t.ok(String(m.$ref).startsWith(`${channelRef}/messages/`), `${id}: message of its channel`);
    }
    const broken = refsIn(asyncDoc).filter((r) => resolvePointer(asyncDoc, r.ref) === undefined);
    t.same(broken, [], 'no dangling $ref');
  });

  await t.test('AsyncAPI: payload schemas accept the events the stack writes', async (t) => {
    const ajv = new Ajv({ strict: true, allErrors: true });
    addFormats(ajv);
    const BASE = 'urn:pixelfox:asyncapi-schemas';
    ajv.addSchema({
      $id: BASE,
      $defs: rebase(asyncDoc.components.schemas, '#/components/schemas/', BASE) as Obj,
    });
    const validators = new Map(
      Object.entries(asyncDoc.components.messages).map(([type, m]) => [
        type,
        ajv.compile(rebase((m as Obj).payload, '#/components/schemas/', BASE) as Obj),
      ]),
    );
    t.equal(validators.size, EVENT_TYPES.length, 'every payload compiles');

    const user = await makeUser(env);
    const photo = await fs.readFile(path.join(FIXTURES, 'Canon_40D.jpg'));
    const up = await uploadFile(api, user.apiKey, photo, 'Canon_40D.jpg');
    t.equal(up.status, 201);
    const imageId = String(up.body.image_uuid);
    await waitForStatus(api, user.apiKey, imageId, ['completed']);
    t.equal(
      (
        await fetch(`${api}/api/v1/images/${imageId}`, {
          method: 'DELETE',
          headers: { authorization: `Bearer ${user.apiKey}` },
        })
      ).status,
      202,
    );
    const h = await fetch(`${api}/api/admin/images/${imageId}/history`, {
      headers: { authorization: `Bearer ${env.secrets.ADMIN_TOKEN}` },
    });
    const events = (await h.json()) as Obj[];
    const types = new Set(events.map((e) => String(e.type)));
    t.ok(
      ['ImageStored', 'VariantCreated', 'ImageMetadataExtracted', 'ImageProcessed', 'ImageDeleted'].every(
        (x) => types.has(x),
      ),
      `real events: ${[...types].join(', ')}`,
    );
    const invalid = events.flatMap(({ seq, ...event }) => {
      const validate = validators.get(String(event.type));
      return validate?.(event) ? [] : [{ seq, type: event.type, errors: validate?.errors ?? 'no schema' }];
    });
    t.same(invalid, [], `${events.length} real events match their AsyncAPI payload schema`);
  });
});

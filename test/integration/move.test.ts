// Pool moves across two real nodes (separate processes): uploads processed on their own node, a move of
// node A's pool to node B with a kill -9 of A (which runs the mover) in the middle, a local move between
// two pools of B, refusals, and the routing of later events to the image's new node.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { addPool } from '../../shared/pools.js';
import { publisher } from '../../shared/publish.js';
import { names } from '../../streams/subjects.js';
import { makeEvent } from '../../streams/events/codec.js';
import { startMove } from '../../services/mover/enqueue.js';
import { imageHistory } from '../../services/ops/events.js';
import { requestReprocess } from '../../services/ops/images.js';
import {
  FIXTURES,
  freePort,
  makeUser,
  spawnNode,
  testEnv,
  uploadFile,
  waitFor,
  type Spawned,
} from '../helpers/stack.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Files under a pool directory (relative path → size), temp files excluded. */
async function diskFiles(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const walk = async (d: string) => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== '.tmp') await walk(p);
      } else out.set(path.relative(dir, p), (await fs.stat(p)).size);
    }
  };
  await walk(dir);
  return out;
}

/** Runs `f` over `items`, `n` at a time. */
async function inParallel<T, R>(items: readonly T[], n: number, f: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await f(items[i] as T);
      }
    }),
  );
  return out;
}

t.test('pool moves between two nodes survive kill -9 of the mover', async (t) => {
  const env = await testEnv(t);
  const sql = env.sql();
  const nc = await connect({ servers: process.env.NATS_URL ?? 'nats://127.0.0.1:4222' });
  t.teardown(() => nc.close());
  const n = names(env.namespace);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const ops = { sql, pub: publisher(nc, n) };

  const [portA, portB] = [await freePort(), await freePort()];
  const urlA = `http://127.0.0.1:${portA}`;
  const urlB = `http://127.0.0.1:${portB}`;
  const dir = {
    a: path.join(env.dataDir, 'pools', 'a'),
    b: path.join(env.dataDir, 'pools', 'b'),
    b2: path.join(env.dataDir, 'pools', 'b2'),
  };
  const local = (
    name: string,
    node: string,
    url: string,
    basePath: string,
    more: Record<string, unknown> = {},
  ) =>
    addPool(sql, {
      name,
      storage_type: 'local',
      base_path: basePath,
      public_base_url: url,
      upload_api_url: `${url}/api/internal/upload`,
      node_id: node,
      ...more,
    });
  // Pools exist before the nodes start, so each node applies its consumers and knows its pools at once.
  const poolA = await local('a', 'node-a', urlA, dir.a, { priority: 200 });
  const poolB = await local('b', 'node-b', urlB, dir.b, { priority: 100 });
  const poolB2 = await local('b2', 'node-b', urlB, dir.b2, { storage_tier: 'warm', priority: 1 });
  const poolOff = await local('b-off', 'node-b', urlB, path.join(env.dataDir, 'pools', 'off'), {
    is_active: false,
  });
  const poolS3 = await addPool(sql, {
    name: 's3',
    storage_type: 's3',
    s3_bucket: 'bucket',
    public_base_url: 'http://s3.invalid',
  });
  // Small thumbnails only (no AVIF) keep processing fast; 60 uploads a minute per address would throttle the test.
  await sql`insert into settings (key, value) values ('thumbnail_avif', 'false'), ('upload_rate_limit_per_minute', '100000'),
                                                   ('upload_user_rate_limit_per_minute', '100000')`;

  const nodes: Spawned[] = [];
  const start = async (node: 'node-a' | 'node-b', port: number) => {
    const s = await spawnNode(env, { port, extra: { NODE_ID: node } });
    nodes.push(s);
    return s;
  };
  t.teardown(async () => {
    for (const s of nodes) if (s.child.exitCode === null) s.kill9();
    await Promise.all(nodes.map((s) => s.exited));
  });
  let a = await start('node-a', portA);
  const b = await start('node-b', portB);

  const free = await makeUser(env, 'free');
  const premium = await makeUser(env, 'premium');
  const generated = await Promise.all(
    Array.from({ length: 50 }, (_, i) =>
      sharp({
        create: {
          width: 300 + i * 7,
          height: 220 + i,
          channels: 3,
          background: { r: (i * 37) % 256, g: (i * 11) % 256, b: 200 - i },
        },
      })
        .jpeg({ quality: 80 })
        .toBuffer(),
    ),
  );
  const photos = await Promise.all(
    ['Canon_40D.jpg', 'Nikon_D70.jpg', 'Pentax_K10D.jpg'].map((f) => fs.readFile(path.join(FIXTURES, f))),
  );
  const upload = async (items: { user: { apiKey: string }; bytes: Buffer; name: string }[], api: string) =>
    inParallel(items, 8, async (x) => {
      const r = await uploadFile(api, x.user.apiKey, x.bytes, x.name);
      if (r.status !== 201) throw new Error(`upload failed: ${r.status} ${JSON.stringify(r.body)}`);
      return String(r.body.image_uuid);
    });
  const settled = (ids: string[]) =>
    waitFor(
      `${ids.length} images processed`,
      async () => {
        const [row] = await sql<
          { n: number }[]
        >`select count(*)::int as n from images where id = any(${ids}) and status in ('completed', 'failed')`;
        return row?.n === ids.length;
      },
      120_000,
    );

  // Uploads go to the hot pool with the highest priority: A first, then B.
  const onA = await upload(
    [
      ...generated.map((bytes, i) => ({ user: free, bytes, name: `gen-${i}.jpg` })),
      ...photos.map((bytes, i) => ({ user: premium, bytes, name: `photo-${i}.jpg` })),
    ],
    urlA,
  );
  await sql`update storage_pools set priority = 300 where id = ${poolB.id}`;
  const onB = await upload(
    [
      {
        user: free,
        bytes: await sharp({ create: { width: 640, height: 480, channels: 3, background: '#336699' } })
          .jpeg()
          .toBuffer(),
        name: 'b-0.jpg',
      },
      {
        user: free,
        bytes: await sharp({ create: { width: 320, height: 640, channels: 3, background: '#996633' } })
          .png()
          .toBuffer(),
        name: 'b-1.png',
      },
      { user: premium, bytes: await fs.readFile(path.join(FIXTURES, 'Sony_HDR-HC3.jpg')), name: 'b-2.jpg' },
    ],
    urlB,
  );
  await settled([...onA, ...onB]);

  await t.test('each image was stored and processed on its own node', async (t) => {
    const rows = await sql<{ id: string; storage_pool_id: string; node_id: string; status: string }[]>`
      select id, storage_pool_id, node_id, status from images where id = any(${[...onA, ...onB]})`;
    const byId = new Map(rows.map((r) => [r.id, r]));
    t.ok(
      onA.every((id) => byId.get(id)?.storage_pool_id === poolA.id && byId.get(id)?.node_id === 'node-a'),
      'A images in pool a, node-a',
    );
    t.ok(
      onB.every((id) => byId.get(id)?.storage_pool_id === poolB.id && byId.get(id)?.node_id === 'node-b'),
      'B images in pool b, node-b',
    );
    t.ok(
      rows.every((r) => r.status === 'completed'),
      'all completed',
    );
    // Deliveries of each node's processor consumer (no redeliveries happen here).
    const delivered = async (kind: string, node: string) =>
      (await jsm.consumers.info(n.stream, n.durable(kind, node))).delivered.consumer_seq;
    t.equal(await delivered('processor', 'node-a'), onA.length, "node-a's processor got exactly A's uploads");
    t.equal(await delivered('processor', 'node-b'), onB.length, "node-b's processor got exactly B's uploads");
    const filesA = await diskFiles(dir.a);
    const filesB = await diskFiles(dir.b);
    t.ok(
      [...filesA.keys()].every((f) => onA.some((id) => f.includes(id))),
      "pool a holds only A's files",
    );
    t.ok(
      [...filesB.keys()].every((f) => onB.some((id) => f.includes(id))),
      "pool b holds only B's files",
    );
    t.ok(filesA.size >= onA.length * 3, `${filesA.size} files in pool a (original + variants)`);
  });

  await t.test('refused moves', async (t) => {
    await t.rejects(startMove(ops, { fromPoolId: poolA.id, toPoolId: poolS3.id }), {
      status: 400,
      message: /S3/,
    });
    await t.rejects(startMove(ops, { fromPoolId: poolA.id, toPoolId: poolOff.id }), {
      status: 400,
      message: /inactive/,
    });
    await t.rejects(startMove(ops, { fromPoolId: poolA.id, toPoolId: poolA.id }), {
      status: 400,
      message: /same pool/,
    });
    await t.rejects(
      startMove(ops, { fromPoolId: poolA.id, toPoolId: '00000000-0000-4000-8000-000000000000' }),
      { status: 404, message: /not found/ },
    );
    await t.rejects(startMove(ops, { fromPoolId: poolA.id, toPoolId: poolB.id, limit: 0 }), {
      status: 400,
      message: /limit/,
    });
    // A move the enqueuer would refuse, published anyway: the mover refuses it with MoveFailed.
    const victim = onB[0] ?? '';
    await ops.pub.publish(
      makeEvent('MoveRequested', {
        image_id: victim,
        node_id: 'node-b',
        pool_id: poolB.id,
        data: {
          move_id: '7d1c9f3e-5b0a-4c2e-9f1d-2a3b4c5d6e7f',
          from_pool_id: poolB.id,
          to_pool_id: poolOff.id,
        },
      }),
    );
    const failed = await waitFor('MoveFailed', async () =>
      (await imageHistory(js, n, victim)).find((e) => e.event.type === 'MoveFailed'),
    );
    t.match(failed.event.data, { to_pool_id: poolOff.id, reason: /inactive/ });
    await waitFor('moving marker cleared', async () => {
      const [r] = await sql<
        { moving_to_pool_id: string | null; storage_pool_id: string }[]
      >`select moving_to_pool_id, storage_pool_id from images where id = ${victim}`;
      return r && r.moving_to_pool_id === null && r.storage_pool_id === poolB.id;
    });
  });

  let moveId = '';
  await t.test('move A → B with kill -9 of node A in the middle', async (t) => {
    const started = Date.now();
    const move = await startMove(ops, { fromPoolId: 'a', toPoolId: 'b' });
    moveId = move.move_id;
    t.equal(move.count, onA.length, 'one MoveRequested per image');
    const movedCount = async () => {
      const [r] = await sql<
        { n: number }[]
      >`select count(*)::int as n from images where id = any(${onA}) and storage_pool_id = ${poolB.id}`;
      return r?.n ?? 0;
    };
    await waitFor('the first images to switch', async () => (await movedCount()) >= 5, 60_000);
    a.kill9();
    await a.exited;
    const atKill = await movedCount();
    t.ok(atKill < onA.length, `killed with ${atKill}/${onA.length} switched`);
    a = await start('node-a', portA);
    await waitFor(
      'every image moved and cleaned up',
      async () => {
        const [r] = await sql<{ n: number }[]>`
          select count(*)::int as n from images where id = any(${onA}) and storage_pool_id = ${poolB.id} and last_cleanup_move_id = ${moveId}`;
        return r?.n === onA.length;
      },
      170_000,
    ).catch((err: unknown) => {
      t.comment(a.output().slice(-4000));
      throw err;
    });
    t.comment(`move of ${onA.length} images took ${Math.round((Date.now() - started) / 1000)} s`);
    // A move that finished just before the kill but was not acknowledged comes back (after the first
    // backoff step) and is acknowledged as done.
    const ci = await waitFor('no move left unacknowledged', async () => {
      const info = await jsm.consumers.info(n.stream, n.durable('mover', 'node-a'));
      return info.num_ack_pending === 0 && info.num_pending === 0 ? info : null;
    });
    t.pass('every MoveRequested acknowledged');
    // Deliveries beyond one per image: the moves that were in flight when node A died, redone.
    t.comment(`${ci.delivered.consumer_seq - onA.length} move(s) redelivered after the kill`);
  });

  await t.test('after the move: everything is served by B, nothing remains on A', async (t) => {
    const images = await sql<
      {
        id: string;
        node_id: string;
        storage_pool_id: string;
        moving_to_pool_id: string | null;
        sha256: string;
      }[]
    >`
      select id, node_id, storage_pool_id, moving_to_pool_id, sha256 from images where id = any(${onA})`;
    t.ok(
      images.every(
        (i) => i.node_id === 'node-b' && i.storage_pool_id === poolB.id && i.moving_to_pool_id === null,
      ),
      'read model points at B',
    );
    const variants = await sql<
      { storage_pool_id: string }[]
    >`select storage_pool_id from image_variants where image_id = any(${onA})`;
    t.ok(
      variants.length >= onA.length * 2 && variants.every((v) => v.storage_pool_id === poolB.id),
      `${variants.length} variants point at B`,
    );
    t.same([...(await diskFiles(dir.a)).keys()], [], 'no file left in pool a');

    const key = (id: string) => (onA.indexOf(id) >= generated.length ? premium.apiKey : free.apiKey);
    let checked = 0;
    await inParallel(onA, 8, async (id) => {
      const r = await fetch(`${urlA}/api/v1/images/${id}`, {
        headers: { authorization: `Bearer ${key(id)}` },
      });
      const body = (await r.json()) as { url: string; sha256: string; variants: { url: string }[] };
      const urls = [body.url, ...body.variants.map((v) => v.url)];
      for (const u of urls) {
        if (!u.startsWith(`${urlB}/uploads/`)) t.fail(`${u} is not on node B`);
        const f = await fetch(u);
        if (f.status !== 200) t.fail(`${u} answered ${f.status}`);
        const bytes = Buffer.from(await f.arrayBuffer());
        if (u === body.url && sha(bytes) !== body.sha256) t.fail(`${u} serves other bytes`);
        checked++;
      }
    });
    t.ok(checked >= onA.length * 3, `${checked} image and variant URLs answer 200 from node B`);
    const failures = await jsm.streams.info(n.stream, { subjects_filter: `${n.ns}.ev.MoveFailed.*.*` });
    t.same(
      Object.keys(failures.state.subjects ?? {}),
      [`${n.ns}.ev.MoveFailed.node-b.${onB[0] ?? ''}`],
      'no MoveFailed besides the refused one',
    );
  });

  await t.test('later events of a moved image go to its new node', async (t) => {
    const [reprocessed, deleted] = onA;
    const before = (await jsm.consumers.info(n.stream, n.durable('reprocessor', 'node-b'))).delivered
      .consumer_seq;
    await requestReprocess(sql, ops.pub, { imageId: reprocessed ?? '' }, 'test');
    await waitFor(
      'reprocess on node-b',
      async () =>
        (await jsm.consumers.info(n.stream, n.durable('reprocessor', 'node-b'))).delivered.consumer_seq >
        before,
    );
    await waitFor('reprocessed', async () => {
      const [r] = await sql<{ status: string }[]>`select status from images where id = ${reprocessed ?? ''}`;
      return r?.status === 'completed';
    });
    t.equal(
      (await jsm.consumers.info(n.stream, n.durable('reprocessor', 'node-a'))).delivered.consumer_seq,
      0,
      'node-a got no reprocess',
    );

    const del = await fetch(`${urlB}/api/v1/images/${deleted ?? ''}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${free.apiKey}` },
    });
    t.equal(del.status, 202);
    await waitFor(
      'purged',
      async () => (await sql`select 1 from images where id = ${deleted ?? ''}`).length === 0,
      60_000,
    );
    t.notOk(
      [...(await diskFiles(dir.b)).keys()].some((f) => f.includes(deleted ?? '')),
      'its files are gone from pool b',
    );
    const history = await imageHistory(js, n, deleted ?? '');
    t.ok(
      history.filter((e) => e.event.type === 'ImageDeleted').every((e) => e.event.node_id === 'node-b'),
      'ImageDeleted routed to node-b',
    );
  });

  await t.test('local move between two pools of node B', async (t) => {
    const move = await startMove(ops, { fromPoolId: poolB.id, toPoolId: poolB2.id, limit: 3 });
    t.equal(move.count, 3);
    const moved = await waitFor(
      '3 images in pool b2',
      async () => {
        const rows = await sql<
          { id: string }[]
        >`select id from images where storage_pool_id = ${poolB2.id} and last_cleanup_move_id = ${move.move_id}`;
        return rows.length === 3 ? rows.map((r) => r.id) : null;
      },
      60_000,
    );
    const b2 = await diskFiles(dir.b2);
    const bFiles = await diskFiles(dir.b);
    t.ok(
      moved.every((id) => [...b2.keys()].some((f) => f.includes(id))),
      'files are in pool b2',
    );
    t.notOk(
      moved.some((id) => [...bFiles.keys()].some((f) => f.includes(id))),
      'and gone from pool b',
    );
    for (const id of moved) {
      const [img] = await sql<{ stored_path: string }[]>`select stored_path from images where id = ${id}`;
      t.equal(
        (await fetch(`${urlB}/uploads/${img?.stored_path ?? ''}`)).status,
        200,
        `${id} still served by B`,
      );
    }
  });

  await t.test('pool usage equals the bytes on disk', async (t) => {
    // Let every event reach the projection (the projector's checkpoint catches up with the stream).
    const last = (await jsm.streams.info(n.stream)).state.last_seq;
    await waitFor('projection caught up', async () => {
      const [r] = await sql<
        { last_seq: number }[]
      >`select last_seq from projection_checkpoint where name = 'main'`;
      return Number(r?.last_seq ?? 0) >= last;
    });
    for (const [name, p, d] of [
      ['a', poolA, dir.a],
      ['b', poolB, dir.b],
      ['b2', poolB2, dir.b2],
    ] as const) {
      const files = await diskFiles(d);
      const bytes = [...files.values()].reduce((s, x) => s + x, 0);
      const [u] = await sql<
        { used_bytes: number; file_count: number }[]
      >`select used_bytes, file_count from pool_usage where pool_id = ${p.id}`;
      t.equal(Number(u?.used_bytes ?? 0), bytes, `pool ${name}: used_bytes = ${bytes} bytes on disk`);
      t.equal(
        Number(u?.file_count ?? 0),
        files.size,
        `pool ${name}: file_count = ${files.size} files on disk`,
      );
    }
  });

  await b.stop();
  await a.stop();
});

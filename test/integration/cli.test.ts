// The operator CLI as operators run it (`bin/pixelfox.mjs`, output piped, so no TTY): the help lists
// every command, listings take --json, and reprocessing every failed image prints progress lines
// against a real stack (projector only: nothing consumes the requests, so the images stay pending).
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import t from 'tap';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { waitForCheckpoint } from '../../projections/projector.js';
import { COMMANDS } from '../../services/cli/commands.js';
import { imageHistory } from '../../services/ops/events.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import { makeEvent } from '../../streams/events/codec.js';
import { derivedShareLink } from '../../streams/events/upcast.js';
import { names } from '../../streams/subjects.js';
import { publishAll } from '../helpers/events.js';
import {
  makeUser,
  NATS_URL,
  ROOT,
  startInProcess,
  testEnv,
  waitFor,
  type TestEnv,
} from '../helpers/stack.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string | undefined> = process.env): Promise<Run> {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'pixelfox.mjs'), ...args], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise((resolve) =>
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
}

const exited = (r: Run) => (r.code === 0 ? 'exit 0' : `exit ${r.code}: ${r.stderr}`);
const systemEnv = (env: TestEnv) => ({ ...process.env, ...env.env() });

t.test('--help lists every command; listings take --json', async (t) => {
  const r = await cli(['--help']);
  t.equal(r.code, 0, exited(r));
  const lines = r.stdout.split('\n');
  for (const c of COMMANDS)
    t.ok(
      lines.some((l) => l.trimStart().startsWith(`${c.usage} `) && l.includes(c.summary)),
      `listed: ${c.name}`,
    );

  const listings = [
    'users list',
    'users keys',
    'pools list',
    'settings get',
    'images history',
    'jobs failed',
    'projections verify',
  ];
  for (const name of listings) {
    const c = COMMANDS.find((x) => x.name === name);
    t.ok(c?.options?.json && c.usage.includes('--json'), `${name} takes --json`);
  }

  const unknown = await cli(['no-such-command']);
  t.equal(unknown.code, 2, 'an unknown command exits 2');
  t.match(unknown.stderr, /unknown command: no-such-command[\s\S]*Usage: npx pixelfox/, 'with the help');
});

t.test('images reprocess --failed: progress lines without a TTY, then every image requested', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env, { roles: ['projector'] });
  t.teardown(() => node.close());
  const nc = await connect({ servers: NATS_URL });
  t.teardown(() => nc.close());
  const js = jetstream(nc);
  const n = names(env.namespace);
  const sql = env.sql();
  const user = await makeUser(env);

  // Three images whose processing failed (an expected failure is a fact in the stream).
  const poolId = '9d0c6a8e-3f57-4a4e-8c1e-6f1b2a3c4d5e';
  const events: AnyEvent[] = [];
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const base = { node_id: 'cli-node', pool_id: poolId, image_id: randomUUID() };
    ids.push(base.image_id);
    events.push(
      makeEvent('ImageStored', {
        ...base,
        data: {
          user_id: user.id,
          stored_path: `original/2026/11/28/${base.image_id}.jpg`,
          size: 1000 + i,
          sha256: String(i).repeat(64),
          mime: 'image/jpeg',
          ext: 'jpg',
          width: 64,
          height: 48,
          original_filename: `cli-${i}.jpg`,
          share_link: derivedShareLink(base.image_id),
        },
      }),
      makeEvent('ImageProcessingFailed', { ...base, data: { reason: 'corrupt image', attempt: 1 } }),
    );
  }
  await waitForCheckpoint(sql, await publishAll(nc, n, events));
  const failed = await sql<{ id: string }[]>`select id from images where status = 'failed'`;
  t.same(failed.map((r) => r.id).sort(), [...ids].sort(), 'three failed images');

  const r = await cli(['images', 'reprocess', '--failed'], systemEnv(env));
  t.equal(r.code, 0, exited(r));
  t.match(r.stdout, /reprocessing requested for 3 image\(s\)/);
  // Plain lines (no carriage returns or bar characters): the first at the start, the last at the end.
  t.notMatch(r.stderr, /\r|█/, 'no progress bar without a TTY');
  t.match(r.stderr, /^reprocess: 0\/3 /m, 'a line when it starts');
  t.match(r.stderr, /^reprocess: 3\/3 .*ETA 0s$/m, 'a line when it is done');

  for (const id of ids) {
    const history = await imageHistory(js, n, id);
    t.match(
      history.at(-1)?.event,
      { type: 'ImageReprocessRequested', data: { requested_by: 'cli' } },
      `${id}: reprocess requested`,
    );
  }
  await waitFor('the images to be pending again', async () => {
    const rows = await sql<{ n: number }[]>`select count(*)::int as n from images where status = 'pending'`;
    return rows[0]?.n === 3;
  });

  const none = await cli(['images', 'reprocess', '--failed', '--json'], systemEnv(env));
  t.equal(none.code, 0, exited(none));
  t.same(JSON.parse(none.stdout), { requested: 0, image_ids: [] }, '--json: nothing failed any more');
  t.match(none.stderr, /^reprocess: 0\/0 /m);

  const one = await cli(['images', 'reprocess', ids[0] ?? '', '--json'], systemEnv(env));
  t.equal(one.code, 0, exited(one));
  t.same(JSON.parse(one.stdout), { requested: 1, image_ids: [ids[0]] }, '--json: one image');
});

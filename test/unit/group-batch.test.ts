// The projector's batch grouping: every group holds one event type about distinct images, each image's
// events keep their stream order, nothing is lost or repeated, and a batch of image lives needs few groups.
import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { groupBatch } from '../../projections/projector.js';
import type { Applied } from '../../projections/read-models/types.js';
import { imageLife } from '../helpers/events.js';
import { interleave, richLife, seeded } from '../helpers/histories.js';

const pools = { a: randomUUID(), b: randomUUID(), s3: randomUUID() };
const applied = (events: ReturnType<typeof imageLife>): Applied[] =>
  events.map((event, i) => ({ seq: i + 1, event }));

function check(t: Test, batch: Applied[]) {
  const groups = groupBatch(batch);
  const flat = groups.flat();
  t.equal(flat.length, batch.length, 'every event once');
  t.same(new Set(flat.map((a) => a.seq)).size, batch.length, 'no event twice');
  let oneTypeDistinctImages = true;
  for (const g of groups) {
    if (new Set(g.map((a) => a.event.type)).size !== 1) oneTypeDistinctImages = false;
    if (new Set(g.map((a) => a.event.image_id)).size !== g.length) oneTypeDistinctImages = false;
  }
  t.ok(oneTypeDistinctImages, 'each group: one type, distinct images');
  // Applying the groups in order must apply each image's events in stream order.
  const lastSeq = new Map<string, number>();
  let inOrder = true;
  for (const a of flat) {
    if ((lastSeq.get(a.event.image_id) ?? 0) > a.seq) inOrder = false;
    lastSeq.set(a.event.image_id, a.seq);
  }
  t.ok(inOrder, "each image's events stay in stream order");
  return groups;
}

t.test('image lives one after another (as a rebuild reads them)', async (t) => {
  const user = randomUUID();
  const batch = applied(Array.from({ length: 300 }, (_, i) => imageLife(i, pools, user)).flat());
  const groups = check(t, batch);
  t.ok(groups.length <= 20, `${batch.length} events in ${groups.length} groups`);
});

t.test('interleaved lives with failures, reprocessing, retries and duplicates', async (t) => {
  const user = randomUUID();
  const lives = Array.from({ length: 400 }, (_, i) => richLife(i, pools, user));
  const batch = applied(interleave(lives, seeded(1)));
  const groups = check(t, batch);
  t.ok(groups.length < batch.length / 20, `${batch.length} events in ${groups.length} groups`);
});

t.test('one image only: one group per event, in order', async (t) => {
  const batch = applied(richLife(21, pools, randomUUID()));
  const groups = check(t, batch);
  t.equal(groups.length, batch.length);
  t.same(
    groups.map((g) => g[0]?.seq),
    batch.map((a) => a.seq),
  );
});

t.test('empty batch', async (t) => {
  t.same(groupBatch([]), []);
});

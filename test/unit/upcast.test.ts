// Upcasting on read: a stored ImageStored v1 is lifted to v2 (by `upcast` and through `decodeEvent`);
// an event of a version newer than this code, or of a version with no upcaster, is refused.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { CURRENT_VERSION } from '../../streams/events/catalog.js';
import { decodeEvent, EventValidationError } from '../../streams/events/codec.js';
import { derivedShareLink, upcast } from '../../streams/events/upcast.js';
import type { ImageStoredV1 } from '../../streams/events/v1.js';

const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

function storedV1(imageId = randomUUID()) {
  const data: ImageStoredV1 = {
    user_id: randomUUID(),
    stored_path: `original/2025/01/02/${imageId}.JPEG`,
    bytes: 1234,
    hash: 'a'.repeat(64),
    mime: 'image/jpeg',
    width: 30,
    height: 20,
    filename: 'holiday.jpeg',
  };
  return {
    id: randomUUID(),
    type: 'ImageStored',
    version: 1,
    occurred_at: '2025-01-02T03:04:05.000Z',
    image_id: imageId,
    node_id: 'n1',
    pool_id: randomUUID(),
    causation_id: null,
    correlation_id: 'req-1',
    data,
  };
}

t.test('upcast: ImageStored v1 data becomes v2 data', async (t) => {
  const v1 = storedV1();
  const v2 = upcast('ImageStored', 1, 2, v1.data, { image_id: v1.image_id });
  t.same(v2, {
    user_id: v1.data.user_id,
    stored_path: v1.data.stored_path,
    size: 1234,
    sha256: 'a'.repeat(64),
    mime: 'image/jpeg',
    ext: 'jpeg',
    width: 30,
    height: 20,
    original_filename: 'holiday.jpeg',
    share_link: derivedShareLink(v1.image_id),
  });
  t.same(
    upcast('ImageStored', 1, 2, v1.data, { image_id: v1.image_id }),
    v2,
    'the same answer on every replay (the share link is derived, not random)',
  );
  t.equal(upcast('ImageStored', 2, 2, v2, { image_id: v1.image_id }), v2, 'the current version is untouched');
  t.throws(
    () => upcast('ImageProcessed', 0, 1, {}, { image_id: v1.image_id }),
    /no upcaster for ImageProcessed v0/,
    'a version without an upcaster is refused',
  );
});

t.test('decodeEvent: a stored v1 is read as a valid current-version event', async (t) => {
  t.equal(CURRENT_VERSION.ImageStored, 2);
  const v1 = storedV1();
  const e = decodeEvent(encode(v1));
  if (e.type !== 'ImageStored') throw new Error('not an ImageStored');
  t.equal(e.version, 2);
  t.equal(e.id, v1.id, 'the envelope is kept');
  t.equal(e.correlation_id, 'req-1');
  t.equal(e.data.size, 1234);
  t.equal(e.data.sha256, 'a'.repeat(64));
  t.equal(e.data.ext, 'jpeg');
  t.equal(e.data.original_filename, 'holiday.jpeg');
  t.match(e.data.share_link, /^[A-Za-z0-9]{10}$/);
  t.equal(e.data.share_link, derivedShareLink(v1.image_id));

  const noName = storedV1();
  noName.data.filename = null;
  const e2 = decodeEvent(encode(noName));
  t.equal(e2.type === 'ImageStored' && e2.data.original_filename, null, 'a missing v1 filename stays null');
});

t.test('decodeEvent: refuses what this code cannot read', async (t) => {
  const v1 = storedV1();
  t.throws(
    () => decodeEvent(encode({ ...v1, version: 3 })),
    { name: 'EventValidationError', message: 'ImageStored v3 is newer than this code' },
    'a version newer than this code is refused, not guessed at',
  );
  try {
    decodeEvent(encode({ ...v1, version: 99 }));
    t.fail('v99 decoded');
  } catch (err) {
    t.type(err, EventValidationError);
  }
  t.throws(
    () => decodeEvent(encode({ ...v1, data: { ...v1.data, hash: 'not-a-hash' } })),
    EventValidationError,
    'a v1 that does not upcast to valid v2 data is refused',
  );
  t.throws(
    () => decodeEvent(encode({ ...v1, version: 2 })),
    EventValidationError,
    'v1-shaped data claiming to be v2 is refused (no silent upcast)',
  );
  t.throws(() => decodeEvent(new TextEncoder().encode('{not json')), /event is not JSON/);
});

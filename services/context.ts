// What every service of a process shares: built once by the stack, passed explicitly.
import type { Config } from '../shared/config.js';
import type { Sql } from '../shared/db.js';
import type { KvBuckets } from '../shared/kv.js';
import type { Logger } from '../shared/logger.js';
import type { Nats } from '../shared/nats.js';
import type { ProjectionWatch } from '../shared/projection-watch.js';
import type { Publisher } from '../shared/publish.js';
import type { SettingsStore } from '../shared/settings.js';
import type { Names } from '../streams/subjects.js';
import type { ProjectorState } from '../projections/projector.js';

export interface Ctx {
  config: Config;
  log: Logger;
  sql: Sql;
  nats: Nats;
  names: Names;
  pub: Publisher;
  settings: SettingsStore;
  kv: KvBuckets;
  /** Set when this process runs the projector. */
  projector: ProjectorState | null;
  /** Set when this process answers HTTP for the API or a storage node: read-your-writes, long polls. */
  projection: ProjectionWatch | null;
}

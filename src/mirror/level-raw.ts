/**
 * Where the `level` kind keeps blocks in the data directory's LevelDB: the sublevel
 * `b`, keyed by the multihash's bytes. Apart from level-blockstore.ts so a one-off
 * reader (`block get --offline`) needs neither blockstore-level nor the store.
 */
import type { LevelDatastore } from 'datastore-level'

/** The sublevel that holds the blocks: keys `!b!<multihash bytes>` in the shared database. */
export const BLOCK_SUBLEVEL = 'b'

/** The sublevel's raw form: multihash bytes → block bytes. */
export interface RawBlocks {
  /** Resolves once the sublevel is usable (a new sublevel opens a tick after its parent). */
  open: () => Promise<void>
  getSync: (key: Uint8Array) => Uint8Array | undefined
  put: (key: Uint8Array, value: Uint8Array, options?: { sync?: boolean }) => Promise<void>
  del: (key: Uint8Array, options?: { sync?: boolean }) => Promise<void>
  iterator: () => AsyncIterable<[Uint8Array, Uint8Array]>
  batch: () => { put: (key: Uint8Array, value: Uint8Array) => unknown, del: (key: Uint8Array) => unknown, write: (options?: { sync?: boolean }) => Promise<void>, close: () => Promise<void>, length: number }
}

/** The raw block sublevel of an open database. */
export function rawBlocks (db: LevelDatastore['db']): RawBlocks {
  return db.sublevel<Uint8Array, Uint8Array>(BLOCK_SUBLEVEL, { keyEncoding: 'view', valueEncoding: 'view' }) as unknown as RawBlocks
}

/**
 * Reading one stored block without opening the store, for `atmirror block get`:
 * neither the data directory's lock nor the blockstore's classes are needed.
 *
 * - `fs` kind: the block's file (blockstore-fs's layout, sharded by the
 *   next-to-last two base32 characters of the multihash), read synchronously; this
 *   works next to a running daemon (files appear complete or not at all) and loads
 *   no more than blockstore-fs's sharding (blockstore-fs as a whole brings glob
 *   packages that cost ~40 ms of start-up).
 * - `level` kind: the data directory's LevelDB, opened for the one read. LevelDB
 *   allows one process at a time, so next to a running daemon this answers
 *   `'locked'` and the caller asks the daemon instead.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { NextToLast } from 'blockstore-fs/sharding'
import type { CID } from 'multiformats/cid'
import { readBlockstoreKind } from './blockstore.ts'

const sharding = new NextToLast()

/** The file a block lives in, under the blockstore directory `location` (`fs` kind). */
export function blockFilePath (location: string, cid: CID): string {
  const { dir, file } = sharding.encode(cid)
  return join(location, dir, file)
}

/** The bytes of a block file as stored (not hash-checked), or `undefined` when there is none. */
export function readBlockFile (location: string, cid: CID): Uint8Array | undefined {
  try {
    const buf = readFileSync(blockFilePath(location, cid))
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/**
 * A block of the data directory `dataDir` as stored (not hash-checked), whichever
 * kind holds it; `undefined` when it is not stored; `'locked'` when the `level`
 * store is open in another process (a daemon).
 */
export async function readStoredBlock (dataDir: string, cid: CID): Promise<Uint8Array | undefined | 'locked'> {
  const kind = readBlockstoreKind(dataDir)
  if (kind === undefined) return undefined
  if (kind === 'fs') return readBlockFile(join(dataDir, 'blocks'), cid)
  const [{ LevelDatastore }, { rawBlocks }] = await Promise.all([import('datastore-level'), import('./level-raw.ts')])
  const { db } = new LevelDatastore(join(dataDir, 'datastore'))
  try {
    await db.open({ createIfMissing: false })
  } catch (err) {
    if ((err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED') return 'locked'
    throw err
  }
  try {
    const blocks = rawBlocks(db)
    await blocks.open()
    return blocks.getSync(cid.multihash.bytes)
  } finally {
    await db.close()
  }
}

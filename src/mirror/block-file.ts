/**
 * Where a block lives in the on-disk blockstore (blockstore-fs's layout, sharded by
 * the next-to-last two base32 characters of the multihash), and a synchronous read
 * of it. Kept apart from MirrorBlockstore so that `atmirror block get` reads a block
 * without loading blockstore-fs as a whole (its glob dependencies cost ~40 ms of
 * start-up), and needs neither the store opened nor its lock.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { NextToLast } from 'blockstore-fs/sharding'
import type { CID } from 'multiformats/cid'

const sharding = new NextToLast()

/** The file a block lives in, under the blockstore directory `location`. */
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

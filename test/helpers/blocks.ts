/**
 * Blocks for tests: a DAG-CBOR block from a value, and a look at what a data
 * directory's blockstore holds on disk.
 */
import { readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LevelDatastore } from 'datastore-level'
import { base32upper } from 'multiformats/bases/base32'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import type { Block } from '../../src/repo/block-store.ts'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes, sha256 } from '../../src/repo/cid.ts'
import { blockFilePath, readBlockFile } from '../../src/mirror/block-file.ts'
import { readBlockstoreKind, type BlockstoreKind } from '../../src/mirror/blockstore.ts'
import { rawBlocks, type RawBlocks } from '../../src/mirror/level-raw.ts'
import type { MirrorStore } from '../../src/mirror/store.ts'

/** A DAG-CBOR block for a value. */
export function block (value: unknown): Block {
  const bytes = encodeCbor(value)
  return { cid: cidForBytes(bytes), bytes }
}

/** Both blockstore kinds, for suites that run on each. */
export const BLOCKSTORE_KINDS: readonly BlockstoreKind[] = ['level', 'fs']

/** An open store (its blockstore is read), or a data directory no process has open. */
export type StoreOrDir = string | Pick<MirrorStore, 'dir' | 'blockstore' | 'datastore'>

/**
 * Runs `read` on the data directory's raw stored blocks: an `fs` store's files,
 * or a `level` store's sublevel (through the open store's database, or the
 * directory's database opened for the call).
 */
async function withRaw<T> (where: StoreOrDir, read: (raw: { kind: 'fs', base: string } | { kind: 'level', raw: RawBlocks & { keys: (options?: unknown) => AsyncIterable<Uint8Array> } }) => Promise<T>): Promise<T> {
  const dir = typeof where === 'string' ? where : where.dir
  const kind = typeof where === 'string' ? readBlockstoreKind(dir) : where.blockstore.kind
  if (kind !== 'level') return await read({ kind: 'fs', base: join(dir, 'blocks') })
  if (typeof where !== 'string') {
    const raw = rawBlocks(where.datastore.db)
    await raw.open()
    return await read({ kind: 'level', raw: raw as never })
  }
  const { db } = new LevelDatastore(join(dir, 'datastore'))
  await db.open({ createIfMissing: false })
  try {
    const raw = rawBlocks(db)
    await raw.open()
    return await read({ kind: 'level', raw: raw as never })
  } finally {
    await db.close()
  }
}

/** Multihashes (hex) of every block stored in the data directory, sorted. */
export async function storedBlocks (where: StoreOrDir): Promise<string[]> {
  return await withRaw(where, async (store) => {
    const out: string[] = []
    if (store.kind === 'level') {
      for await (const key of store.raw.keys()) out.push(Buffer.from(key).toString('hex'))
      return out.sort()
    }
    let shards: string[]
    try {
      shards = await readdir(store.base)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
      throw err
    }
    for (const shard of shards) {
      if (shard.startsWith('.')) continue
      for (const file of await readdir(join(store.base, shard))) {
        if (!file.endsWith('.data')) continue
        out.push(Buffer.from(base32upper.decode(file.slice(0, -'.data'.length))).toString('hex'))
      }
    }
    return out.sort()
  })
}

/** A stored block's bytes as they are on disk (not hash-checked), or `undefined`. */
export async function readRawBlock (where: StoreOrDir, cid: CID): Promise<Uint8Array | undefined> {
  const bytes = await withRaw(where, async (store) => store.kind === 'level' ? store.raw.getSync(cid.multihash.bytes) : readBlockFile(store.base, cid))
  // a copy, and no Buffer (whose slice() is a view)
  return bytes === undefined ? undefined : Uint8Array.from(bytes)
}

/** Overwrites a stored block's bytes as a failing disk would (no hash check). */
export async function overwriteRawBlock (where: StoreOrDir, cid: CID, bytes: Uint8Array): Promise<void> {
  await withRaw(where, async (store) => {
    if (store.kind === 'level') await store.raw.put(cid.multihash.bytes, bytes)
    else await writeFile(blockFilePath(store.base, cid), bytes)
  })
}

/** Removes a stored block behind the store's back (a lost file, a lost key). */
export async function removeRawBlock (where: StoreOrDir, cid: CID): Promise<void> {
  await withRaw(where, async (store) => {
    if (store.kind === 'level') await store.raw.del(cid.multihash.bytes)
    else await rm(blockFilePath(store.base, cid), { force: true })
  })
}

/** The multihash (hex) of a CID, as {@link storedBlocks} lists it. */
export function hexOf (cid: CID): string {
  return Buffer.from(cid.multihash.bytes).toString('hex')
}

/** Checks that every stored block hashes to its name; returns how many were checked. */
export async function checkEveryStoredBlock (where: StoreOrDir, read: (cid: CID) => Uint8Array | undefined): Promise<number> {
  let n = 0
  for (const hex of await storedBlocks(where)) {
    const cid = CID.createV1(0x71, Digest.decode(Uint8Array.from(Buffer.from(hex, 'hex'))))
    const bytes = read(cid)
    if (bytes === undefined) throw new Error(`block ${cid.toString()} vanished`)
    const digest = Buffer.from(sha256(bytes)).toString('hex')
    if (`1220${digest}` !== hex) throw new Error(`block file ${cid.toString()} is corrupt`)
    n++
  }
  return n
}

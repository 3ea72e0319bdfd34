/**
 * The on-disk blockstore as the mirror sees it, whichever kind holds the blocks:
 *
 * - `level` (the default for new data directories, level-blockstore.ts): blocks
 *   packed into the data directory's LevelDB, next to the repo states and the GC
 *   index;
 * - `fs` (`--blockstore fs`, and every data directory made before the packed store,
 *   fs-blockstore.ts): blockstore-fs's one file per block.
 *
 * A data directory records its kind in `<dir>/blockstore` (one word), written
 * before anything is stored. A directory without it that already has a datastore
 * (or block files) was made before the kind was recorded, so it is `fs`. Asking for the other kind
 * than the recorded one is a BlockstoreKindError, never a silent switch: the blocks
 * would seem gone. Only node:fs here: `block get --offline` reads the kind before it
 * decides what to load.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setImmediate as nextTurn } from 'node:timers/promises'
import type { AbortOptions } from '@libp2p/interface'
import type { Blockstore, Pair } from 'interface-blockstore'
import { NotFoundError } from 'interface-store'
import type { CID } from 'multiformats/cid'
import { BlockstoreKindError, DataDirError } from '../errors.ts'
import type { Block } from '../repo/block-store.ts'

export type BlockstoreKind = 'fs' | 'level'

export const BLOCKSTORE_KINDS: readonly BlockstoreKind[] = ['level', 'fs']

/** The kind a new data directory gets. */
export const DEFAULT_BLOCKSTORE_KIND: BlockstoreKind = 'level'

/** What a blockstore holds: blocks and their bytes (contents, not disk allocation). */
export interface BlockstoreUsage {
  blocks: number
  bytes: number
}

export interface MirrorBlockstoreInit {
  /**
   * Blocks written (or read) per slice before the event loop gets a turn (`fs`).
   *
   * @default 64
   */
  slice?: number
  /**
   * Power-loss safety: every block is on disk before `put` or `putVerified`
   * resolves (`fs`: fsync of each file before its rename; `level`: synchronous
   * batches). Process crashes never need it (the page cache survives them).
   *
   * @default false
   */
  fsync?: boolean
  /**
   * Block files written at once by `putVerified` (`fs`, on the thread pool).
   *
   * @default 16
   */
  writers?: number
}

/**
 * What the mirror needs of a blockstore, on top of Helia's `Blockstore` (which
 * Bitswap serves from). Every `put` hash-checks the bytes against the CID; a block
 * is either absent or complete, whenever the process dies.
 */
export interface MirrorBlockstore extends Blockstore {
  readonly kind: BlockstoreKind
  open: () => Promise<void>
  close: () => Promise<void>
  /** The block's bytes in one piece, or `undefined` when it is not stored (not hash-checked). */
  getBytesSync: (cid: CID) => Uint8Array | undefined
  getBytes: (cid: CID, options?: AbortOptions) => Promise<Uint8Array | undefined>
  hasSync: (cid: CID) => boolean
  /**
   * Writes blocks whose bytes the caller has just hash-checked (what a sync stores).
   * Resolves (or rejects) only once no write is under way: every block is then
   * either complete or absent.
   */
  putVerified: (blocks: readonly Block[], options?: AbortOptions) => Promise<void>
  /** Deletes blocks (absent ones are skipped); resolves with how many were deleted. */
  deleteBlocks: (cids: readonly CID[], options?: AbortOptions) => Promise<number>
  /** How many blocks are stored and their bytes: a full scan, for metrics now and then, never on a hot path. */
  usage: (options?: AbortOptions) => Promise<BlockstoreUsage>
  /** Bytes the blocks take on disk (allocated, as `du` counts; `level`: LevelDB's estimate for the block range in its table files). */
  diskUsage: () => Promise<number>
}

/** Where a data directory records its blockstore kind. */
export function blockstoreKindPath (dataDir: string): string {
  return join(dataDir, 'blockstore')
}

/**
 * The kind the data directory records; `fs` for one made before kinds were
 * recorded (it has a datastore but no record); `undefined` for a new one.
 *
 * @throws DataDirError when the record names no known kind
 */
export function readBlockstoreKind (dataDir: string): BlockstoreKind | undefined {
  let text: string
  try {
    text = readFileSync(blockstoreKindPath(dataDir), 'utf8').trim()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    return existsSync(join(dataDir, 'datastore')) || existsSync(join(dataDir, 'blocks')) ? 'fs' : undefined
  }
  if (!(BLOCKSTORE_KINDS as readonly string[]).includes(text)) {
    throw new DataDirError(dataDir, `${blockstoreKindPath(dataDir)} names no blockstore kind (${BLOCKSTORE_KINDS.join(', ')}): ${JSON.stringify(text.slice(0, 40))}`)
  }
  return text as BlockstoreKind
}

/**
 * The data directory's kind, recorded now if it was not: the recorded one, else
 * `requested`, else {@link DEFAULT_BLOCKSTORE_KIND}. The directory must exist and
 * be locked by the caller.
 *
 * @throws BlockstoreKindError when `requested` contradicts the recorded kind
 */
export function settleBlockstoreKind (dataDir: string, requested?: BlockstoreKind): BlockstoreKind {
  const recorded = readBlockstoreKind(dataDir)
  if (recorded !== undefined && requested !== undefined && recorded !== requested) {
    throw new BlockstoreKindError(dataDir, recorded, requested)
  }
  const kind = recorded ?? requested ?? DEFAULT_BLOCKSTORE_KIND
  if (!existsSync(blockstoreKindPath(dataDir))) {
    // whole or absent: a killed write must not leave an empty record behind
    const tmp = `${blockstoreKindPath(dataDir)}.${process.pid}.tmp`
    writeFileSync(tmp, `${kind}\n`)
    renameSync(tmp, blockstoreKindPath(dataDir))
  }
  return kind
}

/** Chunks (a `put`'s value, a `get`'s answer) as one piece; a lone chunk is not copied. */
export async function wholeBytes (value: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  if (value instanceof Uint8Array) return value
  const parts: Uint8Array[] = []
  for await (const part of value) parts.push(part)
  return parts.length === 1 ? parts[0] : Buffer.concat(parts)
}

/** How both kinds read whole blocks: bytes, or undefined when not held. */
type BytesReader = (cid: CID, options?: AbortOptions) => Promise<Uint8Array | undefined>

/** `Blockstore.get` over a whole-block read: one chunk, or NotFoundError naming the CID. */
export async function * getOrThrow (getBytes: BytesReader, cid: CID, options?: AbortOptions): AsyncGenerator<Uint8Array> {
  const bytes = await getBytes(cid, options)
  if (bytes === undefined) throw new NotFoundError(`block not found: ${cid.toString()}`)
  yield bytes
}

/**
 * `Blockstore.getMany` over a whole-block read, yielding the event loop every
 * `slice` blocks (reads may be synchronous underneath).
 */
export async function * getManyOrThrow (getBytes: BytesReader, source: Iterable<CID> | AsyncIterable<CID>, slice: number, options?: AbortOptions): AsyncGenerator<Pair> {
  let n = 0
  for await (const cid of source) {
    const bytes = await getBytes(cid, options)
    if (bytes === undefined) throw new NotFoundError(`block not found: ${cid.toString()}`)
    if (++n % slice === 0) await nextTurn()
    yield { cid, bytes: (function * () { yield bytes })() }
  }
}

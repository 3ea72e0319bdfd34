/**
 * The smallest block store the repo engine needs. Everything in src/repo works
 * against this, so it runs on bytes alone; the node plugs in its blockstore.
 */
import type { CID } from 'multiformats/cid'
import { cidKey, verifyBlock } from './cid.ts'
import { isPromise } from './mst/check.ts'

export interface BlockStoreOptions {
  signal?: AbortSignal
}

/** Read-only access to blocks by CID. */
export interface ReadonlyBlockStore {
  /** The block's bytes, or `undefined` when this store does not hold it. */
  get: (cid: CID, options?: BlockStoreOptions) => Promise<Uint8Array | undefined> | Uint8Array | undefined
  /** Whether this store holds the block. */
  has: (cid: CID, options?: BlockStoreOptions) => Promise<boolean> | boolean
}

/** A block store that can also take blocks. */
export interface BlockStore extends ReadonlyBlockStore {
  put: (cid: CID, bytes: Uint8Array, options?: BlockStoreOptions) => Promise<void> | void
}

/** A block with its CID. */
export interface Block {
  cid: CID
  bytes: Uint8Array
}

/**
 * An in-memory block store. `put` hash-checks unless constructed with
 * `{ verified: true }` (for blocks already checked, e.g. read from a CAR).
 */
export class MemoryBlockStore implements BlockStore {
  readonly #blocks = new Map<string, Block>()
  readonly #verified: boolean

  constructor (init: { verified?: boolean } = {}) {
    this.#verified = init.verified ?? false
  }

  get size (): number {
    return this.#blocks.size
  }

  get (cid: CID): Uint8Array | undefined {
    return this.#blocks.get(cidKey(cid))?.bytes
  }

  has (cid: CID): boolean {
    return this.#blocks.has(cidKey(cid))
  }

  put (cid: CID, bytes: Uint8Array): void {
    if (!this.#verified) verifyBlock(cid, bytes)
    this.#blocks.set(cidKey(cid), { cid, bytes })
  }

  delete (cid: CID): boolean {
    return this.#blocks.delete(cidKey(cid))
  }

  * blocks (): IterableIterator<Block> {
    yield * this.#blocks.values()
  }
}

/**
 * Blocks of `top` over those of `bottom`: a `#commit` event's blocks over the
 * stored repo, for checking an advance before anything is written. Answers stay
 * synchronous where both stores are.
 */
export class OverlayBlockStore implements ReadonlyBlockStore {
  readonly #top: ReadonlyBlockStore
  readonly #bottom: ReadonlyBlockStore

  constructor (top: ReadonlyBlockStore, bottom: ReadonlyBlockStore) {
    this.#top = top
    this.#bottom = bottom
  }

  get (cid: CID, options?: BlockStoreOptions): Promise<Uint8Array | undefined> | Uint8Array | undefined {
    const found = this.#top.get(cid, options)
    if (isPromise(found)) return found.then(bytes => bytes ?? this.#bottom.get(cid, options))
    return found ?? this.#bottom.get(cid, options)
  }

  has (cid: CID, options?: BlockStoreOptions): Promise<boolean> | boolean {
    const found = this.#top.has(cid, options)
    if (isPromise(found)) return found.then(yes => yes || this.#bottom.has(cid, options))
    return found || this.#bottom.has(cid, options)
  }
}

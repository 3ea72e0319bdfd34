/**
 * The blockstore Helia sees: the mirror's blocks, read-only.
 *
 * Bitswap serves peers from it (`has` + `get`). What Helia would write (a block it
 * fetched for us) is dropped: the syncer stores fetched blocks itself through the
 * store's staged write path, which is what lets garbage collection account for every
 * block on disk. A block Helia stored behind that path's back would be held by no
 * repo and never collected. Deletes are dropped too: blocks leave only through the
 * store's GC, never through `helia.gc()` (Helia's own pin set is empty and would
 * delete everything).
 */
import type { AbortOptions } from '@libp2p/interface'
import type { Blockstore, InputPair, Pair } from 'interface-blockstore'
import type { CID } from 'multiformats/cid'

export class ServingBlockstore implements Blockstore {
  readonly #store: Blockstore

  constructor (store: Blockstore) {
    this.#store = store
  }

  has (cid: CID, options?: AbortOptions): boolean | Promise<boolean> {
    return this.#store.has(cid, options)
  }

  get (cid: CID, options?: AbortOptions): Generator<Uint8Array> | AsyncGenerator<Uint8Array> {
    return this.#store.get(cid, options)
  }

  getMany (cids: Iterable<CID> | AsyncIterable<CID>, options?: AbortOptions): Generator<Pair> | AsyncGenerator<Pair> {
    return this.#store.getMany(cids, options)
  }

  getAll (options?: AbortOptions): Generator<Pair> | AsyncGenerator<Pair> {
    return this.#store.getAll(options)
  }

  put (cid: CID): CID {
    return cid
  }

  async * putMany (source: Iterable<InputPair> | AsyncIterable<InputPair>): AsyncGenerator<CID> {
    for await (const { cid } of source) yield cid
  }

  delete (): void {}

  async * deleteMany (source: Iterable<CID> | AsyncIterable<CID>): AsyncGenerator<CID> {
    for await (const cid of source) yield cid
  }
}

/**
 * The blockstore Helia sees: the mirror's blocks, read-only, minus those of repos
 * that are not to be handed out.
 *
 * Bitswap serves peers from it (`has` + `get`). What Helia would write (a block it
 * fetched for us) is dropped: the syncer stores fetched blocks itself through the
 * store's staged write path, which is what lets garbage collection account for every
 * block on disk. A block Helia stored behind that path's back would be held by no
 * repo and never collected. Deletes are dropped too: blocks leave only through the
 * store's GC, never through `helia.gc()` (Helia's own pin set is empty and would
 * delete everything).
 *
 * Withheld repos: a suspended or deactivated account keeps its blocks here (they
 * come back when the account does), but its content is not redistributed while it
 * is not active (atproto.com/specs/account), as the head exchange already refuses
 * it. The node tells this store which DIDs are withheld (`setServable`). While none
 * is, every stored block is served at no extra cost; while some are, a block is
 * served only if at least one repo that holds it (the mirror's holder index,
 * injected by the node) is not withheld, so a block shared with an active repo
 * still is. A block no repo holds yet (staged by a running sync) is
 * served as before.
 */
import { logger } from '@libp2p/logger'
import { NotFoundError } from 'interface-store'
import type { AbortOptions } from '@libp2p/interface'
import type { Blockstore, InputPair, Pair } from 'interface-blockstore'
import type { CID } from 'multiformats/cid'

const log = logger('atmirror:net:serving')

/** Which repos hold a block. */
export interface BlockHolderIndex {
  /** The DIDs whose current repo holds `cid` (in any order; may stop early when the caller stops iterating). */
  holders: (cid: CID, options?: AbortOptions) => AsyncIterable<string>
}

export interface ServingBlockstoreComponents {
  /** The mirror's blockstore. */
  blockstore: Blockstore
  /** Where the holders of a block are looked up while some repo is withheld; without it nothing is withheld. */
  holders?: BlockHolderIndex
}

export interface ServingStats {
  /** Requests (`has`/`get`) refused because every repo holding the block is withheld. */
  refused: number
}

export class ServingBlockstore implements Blockstore {
  readonly #store: Blockstore
  readonly #holders: BlockHolderIndex | undefined
  readonly #withheld = new Set<string>()
  #refused = 0

  constructor (components: ServingBlockstoreComponents) {
    this.#store = components.blockstore
    this.#holders = components.holders
  }

  /** Marks `did`'s repo as served (active) or withheld (suspended, deactivated…). */
  setServable (did: string, servable: boolean): void {
    if (servable) {
      if (this.#withheld.delete(did)) log('serving the blocks of %s again', did)
    } else if (!this.#withheld.has(did)) {
      this.#withheld.add(did)
      log('withholding the blocks of %s', did)
    }
  }

  /** The DIDs whose blocks are withheld now. */
  get withheld (): ReadonlySet<string> {
    return this.#withheld
  }

  stats (): ServingStats {
    return { refused: this.#refused }
  }

  /** Whether `cid` may be handed out: no repo is withheld, or some holder of it is not. */
  async #servable (cid: CID, options?: AbortOptions): Promise<boolean> {
    if (this.#withheld.size === 0 || this.#holders === undefined) return true
    let held = false
    for await (const did of this.#holders.holders(cid, options)) {
      if (!this.#withheld.has(did)) return true
      held = true
    }
    if (held) {
      this.#refused++
      log.trace('not serving %c: every repo holding it is withheld', cid)
    }
    return !held
  }

  has (cid: CID, options?: AbortOptions): boolean | Promise<boolean> {
    if (this.#withheld.size === 0) return this.#store.has(cid, options)
    return this.#servable(cid, options).then(async ok => ok && await this.#store.has(cid, options))
  }

  get (cid: CID, options?: AbortOptions): Generator<Uint8Array> | AsyncGenerator<Uint8Array> {
    if (this.#withheld.size === 0) return this.#store.get(cid, options)
    return this.#getChecked(cid, options)
  }

  async * #getChecked (cid: CID, options?: AbortOptions): AsyncGenerator<Uint8Array> {
    if (!await this.#servable(cid, options)) throw new NotFoundError(`block not found: ${cid.toString()}`)
    yield * this.#store.get(cid, options)
  }

  getMany (cids: Iterable<CID> | AsyncIterable<CID>, options?: AbortOptions): Generator<Pair> | AsyncGenerator<Pair> {
    if (this.#withheld.size === 0) return this.#store.getMany(cids, options)
    return this.#getManyChecked(cids, options)
  }

  async * #getManyChecked (cids: Iterable<CID> | AsyncIterable<CID>, options?: AbortOptions): AsyncGenerator<Pair> {
    for await (const cid of cids) {
      if (!await this.#servable(cid, options)) throw new NotFoundError(`block not found: ${cid.toString()}`)
      yield { cid, bytes: this.#store.get(cid, options) }
    }
  }

  async * getAll (options?: AbortOptions): AsyncGenerator<Pair> {
    for await (const pair of this.#store.getAll(options)) {
      if (this.#withheld.size === 0 || await this.#servable(pair.cid, options)) yield pair
    }
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

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
 *
 * Every block handed out is hash-checked first: through the mirror's checked read
 * (`verified`, MirrorStore.getVerified), which removes a damaged block's file and
 * refetches it in the background, or, without one, by hashing it here. A damaged
 * block is answered as not found: a peer is never sent bytes that do not match
 * their CID.
 *
 * Blobs (raw 0x55 CIDs): small ones are blocks in the blockstore; larger ones live
 * in files of their own (src/mirror/blob-store.ts) and are served from there
 * (`blobs`), hash-checked, up to Bitswap's block size. Whether a blob of a withheld
 * repo is served is decided the same way, by the repos that reference it (the
 * holder index the node injects answers for blobs too).
 */
import { logger } from '@libp2p/logger'
import { NotFoundError } from 'interface-store'
import type { AbortOptions } from '@libp2p/interface'
import type { Blockstore, InputPair, Pair } from 'interface-blockstore'
import type { CID } from 'multiformats/cid'
import { RAW, SHA2_256, sha256 } from '../repo/cid.ts'
import { BITSWAP_MAX_BLOB } from '../blocks/blob-fetch.ts'

const log = logger('atmirror:net:serving')

/** Which repos hold a block. */
export interface BlockHolderIndex {
  /** The DIDs whose current repo holds `cid` (in any order; may stop early when the caller stops iterating). */
  holders: (cid: CID, options?: AbortOptions) => AsyncIterable<string>
}

/** Hash-checked reads that repair what they find damaged (MirrorStore fits). */
export interface VerifiedBlockReader {
  /** The block's bytes, hash-checked; `undefined` when absent or damaged (then refetched in the background). */
  getVerified: (cid: CID, options: { signal?: AbortSignal, repair: 'background' }) => Promise<Uint8Array | undefined>
}

/** Blobs stored outside the blockstore (the mirror's BlobStore fits). */
export interface ServedBlobs {
  /** The whole blob, hash-checked, when stored and at most `maxBytes`; otherwise undefined. */
  getBytes: (cid: CID, maxBytes: number, options?: { signal?: AbortSignal }) => Promise<Uint8Array | undefined>
  /** Its size when stored. */
  stat: (cid: CID) => Promise<{ size: number } | undefined>
}

export interface ServingBlockstoreComponents {
  /** The mirror's blockstore. */
  blockstore: Blockstore
  /** The mirror's checked read; without it blocks are hash-checked here (and a damaged one is only refused). */
  verified?: VerifiedBlockReader
  /** Where the holders of a block are looked up while some repo is withheld; without it nothing is withheld. */
  holders?: BlockHolderIndex
  /** Blobs kept outside the blockstore; without it only those in the blockstore are served. */
  blobs?: ServedBlobs
}

export interface ServingStats {
  /** Requests (`has`/`get`) refused because every repo holding the block is withheld. */
  refused: number
  /** Blocks handed out (hash-checked), and their bytes: what Bitswap served peers. */
  served: number
  servedBytes: number
}

export class ServingBlockstore implements Blockstore {
  readonly #store: Blockstore
  readonly #holders: BlockHolderIndex | undefined
  readonly #verified: VerifiedBlockReader | undefined
  readonly #blobs: ServedBlobs | undefined
  readonly #withheld = new Set<string>()
  #refused = 0
  #served = 0
  #servedBytes = 0

  constructor (components: ServingBlockstoreComponents) {
    this.#store = components.blockstore
    this.#holders = components.holders
    this.#verified = components.verified
    this.#blobs = components.blobs
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
    return { refused: this.#refused, served: this.#served, servedBytes: this.#servedBytes }
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
    if (this.#blobs !== undefined && cid.code === RAW) return this.#hasBlob(this.#blobs, cid, options)
    if (this.#withheld.size === 0) return this.#store.has(cid, options)
    return this.#servable(cid, options).then(async ok => ok && await this.#store.has(cid, options))
  }

  async #hasBlob (blobs: ServedBlobs, cid: CID, options?: AbortOptions): Promise<boolean> {
    if (!await this.#servable(cid, options)) return false
    if (await this.#store.has(cid, options)) return true
    const stat = await blobs.stat(cid)
    return stat !== undefined && stat.size <= BITSWAP_MAX_BLOB
  }

  async * #getBlob (blobs: ServedBlobs, cid: CID, options?: AbortOptions): AsyncGenerator<Uint8Array> {
    if (!await this.#servable(cid, options)) throw new NotFoundError(`block not found: ${cid.toString()}`)
    if (await this.#store.has(cid, options)) {
      yield await this.#checkedBytes(cid, options)
      return
    }
    const bytes = await blobs.getBytes(cid, BITSWAP_MAX_BLOB, { signal: options?.signal })
    if (bytes === undefined) throw new NotFoundError(`block not found: ${cid.toString()}`)
    this.#count(bytes)
    yield bytes
  }

  get (cid: CID, options?: AbortOptions): Generator<Uint8Array> | AsyncGenerator<Uint8Array> {
    if (this.#blobs !== undefined && cid.code === RAW) return this.#getBlob(this.#blobs, cid, options)
    if (this.#verified === undefined && this.#withheld.size === 0) {
      // a synchronous store answers synchronously (Bitswap's ledger then needs no promise per block)
      const answer = this.#store.get(cid, options)
      if (Symbol.iterator in answer) return this.#checkedSync(cid, answer)
      return this.#checked(cid, answer)
    }
    return this.#get(cid, options)
  }

  * #checkedSync (cid: CID, answer: Iterable<Uint8Array>): Generator<Uint8Array> {
    yield this.#check(cid, [...answer])
  }

  async * #checked (cid: CID, answer: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    const parts: Uint8Array[] = []
    for await (const part of answer) parts.push(part)
    yield this.#check(cid, parts)
  }

  /** The block's bytes if they hash to `cid`; NotFoundError otherwise. */
  #check (cid: CID, parts: Uint8Array[]): Uint8Array {
    const bytes = parts.length === 1 ? parts[0] : Buffer.concat(parts)
    if (!hashMatches(cid, bytes)) {
      log.error('not serving %c: its stored bytes do not hash to it', cid)
      throw new NotFoundError(`block not found: ${cid.toString()}`)
    }
    this.#count(bytes)
    return bytes
  }

  #count (bytes: Uint8Array): void {
    this.#served++
    this.#servedBytes += bytes.byteLength
  }

  async * #get (cid: CID, options?: AbortOptions): AsyncGenerator<Uint8Array> {
    if (!await this.#servable(cid, options)) throw new NotFoundError(`block not found: ${cid.toString()}`)
    yield await this.#checkedBytes(cid, options)
  }

  /** The block's bytes, hash-checked; NotFoundError when absent or damaged. */
  async #checkedBytes (cid: CID, options?: AbortOptions): Promise<Uint8Array> {
    let bytes: Uint8Array | undefined
    if (this.#verified !== undefined) {
      bytes = await this.#verified.getVerified(cid, { signal: options?.signal, repair: 'background' })
    } else {
      const parts: Uint8Array[] = []
      for await (const part of this.#store.get(cid, options)) parts.push(part)
      bytes = this.#check(cid, parts)
    }
    if (bytes === undefined) throw new NotFoundError(`block not found: ${cid.toString()}`)
    if (this.#verified !== undefined) this.#count(bytes) // #check counted the other path
    return bytes
  }

  async * getMany (cids: Iterable<CID> | AsyncIterable<CID>, options?: AbortOptions): AsyncGenerator<Pair> {
    for await (const cid of cids) {
      if (!await this.#servable(cid, options)) throw new NotFoundError(`block not found: ${cid.toString()}`)
      const bytes = await this.#checkedBytes(cid, options)
      yield { cid, bytes: (function * () { yield bytes })() }
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

/** Whether `bytes` hash to `cid` (the mirror stores sha2-256 blocks only). */
function hashMatches (cid: CID, bytes: Uint8Array): boolean {
  if (cid.multihash.code !== SHA2_256) return false
  return Buffer.from(sha256(bytes)).equals(cid.multihash.digest)
}

/**
 * Garbage collection by a holder index, so a one-record change never rescans a repo.
 *
 * For every stored repo the datastore says which blocks it consists of and how
 * often each occurs in it (a record CID can sit under two record keys). Blocks are
 * named by their multihash in hex:
 *
 *   /atmirror/holders/<multihash>/<did>   → occurrences in the DID's current repo (decimal)
 *
 * A sync that stores blocks first writes them to a staging list, ahead of the block
 * files (write-ahead), so blocks of a sync that fails or is killed can be found
 * again. One key per written batch keeps this cheap (a full sync of 25,000 blocks
 * writes about a hundred keys):
 *
 *   /atmirror/staged/<did>/<seq>          → the batch's multihashes, concatenated
 *
 * When a repo advances from commit A to commit B, the syncer computes a
 * {@link HoldDelta}: from the MST diff of A and B for an incremental sync (created
 * and deleted nodes, old and new record CIDs, the two commits), or from the walk of
 * B for a full one. One atomic batch applies the delta, drops the DID's staging
 * list, writes the new repo state and records GC candidates:
 *
 *   /atmirror/gc/<multihash>              → '' (blocks that lost a holder, and staged
 *                                              blocks the new repo does not use)
 *
 * Collection deletes each candidate that has no holder left (one short prefix seek
 * per candidate) and drops its key. A crash anywhere leaves either the old state
 * with its holds plus a staging list, or the new state with candidates still listed
 * (the next collection finishes them). A staging list found when the store opens
 * belongs to no running sync (the data directory is locked to one process, and
 * this one has started none yet). Opening releases the lists of DIDs that are not
 * pinned, list by list, deleting the blocks no repo holds: a killed first sync of
 * a DID that is never run again leaves nothing behind, and cleaning up costs about
 * what writing did (a seek and a delete per block, memory flat). A pinned DID's list stays for its next
 * sync, which reuses the blocks already stored (a peer-to-peer walk fetches only
 * what is missing) and releases the rest when it advances or fails. Blocks shared by several repos survive while any
 * holder remains.
 *
 * Releasing a whole repo (unpin, takedown) walks the stored repo to find its
 * blocks: it is rare, and keeping a second key per block just for it would double
 * the index writes of every full sync.
 */
import { setImmediate as nextTurn } from 'node:timers/promises'
import { logger } from '@libp2p/logger'
import type { AbortOptions } from '@libp2p/interface'
import type { LevelDatastore } from 'datastore-level'
import type { Datastore } from 'interface-datastore'
import { CID } from 'multiformats/cid'
import { MissingBlockError } from '../errors.ts'
import * as Digest from 'multiformats/hashes/digest'
import type { ReadonlyBlockStore } from '../repo/block-store.ts'
import { DAG_CBOR, SHA2_256 } from '../repo/cid.ts'
import { decodeCommit } from '../repo/commit.ts'
import { diffMst, type MstDiff } from '../repo/mst/diff.ts'
import { walkMstSteps } from '../repo/mst/walk.ts'
import type { MirrorBlockstore } from './blockstore.ts'
import { DigestTable } from './digest-table.ts'

const log = logger('atmirror:mirror:gc')

const PREFIX = '/atmirror'
const EMPTY = new Uint8Array(0)
const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()
/** A sha2-256 multihash: code, length, 32-byte digest. */
const MULTIHASH_BYTES = 34
const CHUNK = 1000

type Db = LevelDatastore['db']

/**
 * A batch being built: the caller's writes go in with the plan's, and it is written
 * atomically. A chained batch copies each operation into native memory as it is
 * added, so planning a 25,000-block advance leaves no large array on the JS heap.
 */
export interface PlanBatch {
  put: (key: string, value: Uint8Array) => unknown
  del: (key: string) => unknown
}

/** Pre-encoded small hold counts (most blocks occur once). */
const COUNTS = Array.from({ length: 16 }, (_, n) => utf8.encode(String(n)))
const encodeCount = (n: number): Uint8Array => COUNTS[n] ?? utf8.encode(String(n))

/** A block's name in the index: its multihash in hex. */
export function blockKey (cid: CID): string {
  const mh = cid.multihash.bytes
  return Buffer.from(mh.buffer, mh.byteOffset, mh.byteLength).toString('hex')
}

/** A CID for a block named by {@link blockKey} (the codec does not matter to the blockstore). */
export function cidOfBlockKey (key: string): CID {
  return CID.createV1(DAG_CBOR, Digest.decode(Uint8Array.from(Buffer.from(key, 'hex'))))
}

/** Datastore keys of the holder index. */
export const holdKeys = {
  holder: (block: string, did: string) => `${PREFIX}/holders/${block}/${did}`,
  holderPrefix: (block: string) => `${PREFIX}/holders/${block}/`,
  holdersPrefix: `${PREFIX}/holders/`,
  staged: (did: string, seq: string) => `${PREFIX}/staged/${did}/${seq}`,
  stagedPrefix: (did: string) => `${PREFIX}/staged/${did}/`,
  stagedAll: `${PREFIX}/staged/`,
  candidate: (block: string) => `${PREFIX}/gc/${block}`,
  candidatePrefix: `${PREFIX}/gc/`
}

/** What an MST diff says changed, as far as holds go. */
type TreeChange = Pick<MstDiff, 'createdNodes' | 'deletedNodes' | 'recordOps'>

/**
 * How a repo's set of blocks changes: occurrences added (+) and removed (−) per block.
 * A full sync holds one entry per block of the repo until the advance, the sync's
 * largest set: kept in a {@link DigestTable} (flat arrays, no object per block; that
 * file says what a `Map` of strings cost).
 */
export class HoldDelta {
  readonly #changes = new DigestTable()

  /** `n` more occurrences of `cid`. */
  add (cid: CID, n = 1): void {
    this.#changes.add(cid.multihash.bytes, n)
  }

  /** `n` fewer occurrences of `cid`. */
  remove (cid: CID, n = 1): void {
    this.add(cid, -n)
  }

  /**
   * The blocks an MST diff (or an incremental verification) changes: the created
   * and deleted nodes, and the old and new CIDs of every changed record.
   */
  addDiff (diff: TreeChange): void {
    for (const cid of diff.createdNodes) this.add(cid)
    for (const cid of diff.deletedNodes) this.remove(cid)
    for (const op of diff.recordOps) {
      if (op.oldValue !== null) this.remove(op.oldValue)
      if (op.newValue !== null) this.add(op.newValue)
    }
  }

  /** Net change for `cid` (0 when untouched). */
  changeOf (cid: CID): number {
    return this.#changes.get(cid.multihash.bytes) ?? 0
  }

  /** Net change for a block named by {@link blockKey} (0 when untouched). */
  change (block: string): number {
    return this.#changes.get(Buffer.from(block, 'hex')) ?? 0
  }

  /** Blocks touched (including net-zero ones). */
  get size (): number {
    return this.#changes.size
  }

  /** `[block, change]` for every non-zero net change, blocks named by {@link blockKey}. */
  * entries (): IterableIterator<[string, number]> {
    for (const [multihash, change] of this.#changes.entries()) {
      if (change !== 0) yield [Buffer.from(multihash.buffer, multihash.byteOffset, multihash.byteLength).toString('hex'), change]
    }
  }
}

/** A repo version as the holder index sees it. */
export interface RepoPointer {
  commit: CID
  /** MST root. */
  data: CID
}

/**
 * The hold changes of moving a repo from `before` (`null`: nothing held) to
 * `after`: the two commits, the created and deleted MST nodes and the old and new
 * record CIDs of every changed record, from the MST diff. Only changed nodes are
 * read, so a one-record change costs a few blocks, not the repo.
 */
export async function repoHoldDelta (blocks: ReadonlyBlockStore, before: RepoPointer | null, after: RepoPointer, options: { signal?: AbortSignal } = {}): Promise<HoldDelta> {
  return holdDeltaOf(before, after, await diffMst(blocks, before?.data ?? null, after.data, { signal: options.signal }))
}

/** {@link repoHoldDelta} from a diff already made (an incremental verification makes one). */
export function holdDeltaOf (before: RepoPointer | null, after: RepoPointer, diff: TreeChange): HoldDelta {
  const delta = new HoldDelta()
  delta.add(after.commit)
  if (before !== null) delta.remove(before.commit)
  delta.addDiff(diff)
  return delta
}

/**
 * Every block of the repo at `commit` with its occurrence count, as a delta (all
 * positive). Reads the commit and MST nodes, never the records. The tree was
 * verified when it was stored, so nodes are not checked again; a node linked
 * twice is still refused rather than counted twice.
 *
 * @throws MissingBlockError when the commit or a node is not stored;
 * MstInvalidError for a node reached twice
 */
export async function repoBlocksDelta (blocks: ReadonlyBlockStore, commit: CID, options: { signal?: AbortSignal } = {}): Promise<HoldDelta> {
  const { signal } = options
  const delta = new HoldDelta()
  const commitBytes = await blocks.get(commit, { signal })
  if (commitBytes === undefined) throw new MissingBlockError(commit, { what: 'commit' })
  delta.add(commit)
  let steps = 0
  for await (const batch of walkMstSteps(blocks, decodeCommit(commitBytes, commit).data, { signal, check: false })) {
    // nodes and records alike: a record under two keys counts twice
    for (const step of batch) delta.add(step.cid)
    // a synchronous store never lets the walk wait: give the event loop a turn
    if ((steps += batch.length) >= 1024) {
      steps = 0
      await nextTurn()
    }
  }
  return delta
}

/** What one application of a delta changed in the batch. */
export interface HoldPlan {
  /** Blocks that became candidates for deletion. */
  candidates: number
  /** Blocks the staging lists dropped by the plan named (an advance). */
  staged?: number
}

/**
 * The holder index over the level database behind the datastore. Methods that
 * plan return batch operations; the caller commits them with its own writes so the
 * whole advance is one atomic batch.
 */
export class BlockHolds {
  readonly #db: Db
  readonly #blockstore: MirrorBlockstore
  #stageSeq = 0

  constructor (db: Db, blockstore: MirrorBlockstore) {
    this.#db = db
    this.#blockstore = blockstore
  }

  /** Records, before the blocks are written, that `did`'s running sync is storing them. */
  async stage (did: string, cids: readonly CID[]): Promise<void> {
    if (cids.length === 0) return
    const value = new Uint8Array(cids.length * MULTIHASH_BYTES)
    for (let i = 0; i < cids.length; i++) {
      const mh = cids[i].multihash
      // verifyBlock already refused anything but a 32-byte sha2-256 before this
      if (mh.code !== SHA2_256 || mh.bytes.byteLength !== MULTIHASH_BYTES) throw new TypeError(`unsupported multihash in ${cids[i].toString()}`)
      value.set(mh.bytes, i * MULTIHASH_BYTES)
    }
    // sortable and unique within the process; across processes the time part differs
    const seq = `${Date.now().toString(36).padStart(9, '0')}-${(++this.#stageSeq).toString(36).padStart(6, '0')}`
    await this.#db.put(holdKeys.staged(did, seq), value)
  }

  /** The staging keys of `did` (every DID's without one) with the blocks each lists. */
  async * #staged (did?: string): AsyncGenerator<{ key: string, blocks: string[] }> {
    const prefix = did === undefined ? holdKeys.stagedAll : holdKeys.stagedPrefix(did)
    for await (const [key, value] of this.#db.iterator({ gte: prefix, lt: prefix + '\xff' })) {
      const buf = Buffer.from(value.buffer, value.byteOffset, value.byteLength)
      const blocks: string[] = []
      for (let offset = 0; offset + MULTIHASH_BYTES <= buf.byteLength; offset += MULTIHASH_BYTES) {
        blocks.push(buf.toString('hex', offset, offset + MULTIHASH_BYTES))
      }
      yield { key, blocks }
    }
  }

  /** Whether any repo holds the block. */
  async isHeld (cid: CID | string): Promise<boolean> {
    const prefix = holdKeys.holderPrefix(typeof cid === 'string' ? cid : blockKey(cid))
    const keys = await this.#db.keys({ gte: prefix, lt: prefix + '\xff', limit: 1 }).all()
    return keys.length > 0
  }

  /** The DIDs whose stored repo holds the block (at most `limit`). */
  async holders (cid: CID, options: { limit?: number } = {}): Promise<string[]> {
    const prefix = holdKeys.holderPrefix(blockKey(cid))
    const keys = await this.#db.keys({ gte: prefix, lt: prefix + '\xff', limit: options.limit ?? 16 }).all()
    return keys.map(key => key.slice(prefix.length))
  }

  /** Whether `did`'s stored repo holds each of `cids`. */
  async heldBy (did: string, cids: readonly CID[]): Promise<boolean[]> {
    return (await this.#counts(did, cids.map(blockKey))).map(n => n > 0)
  }

  /** Whether `did` holds anything at all. */
  async holdsAny (did: string): Promise<boolean> {
    // holder keys are grouped by block, so "anything of did" has no prefix; the
    // state says whether the DID's blocks are held, this is for tests and repairs
    for await (const key of this.#db.keys({ gte: holdKeys.holdersPrefix, lt: holdKeys.holdersPrefix + '\xff' })) {
      if (key.endsWith(`/${did}`)) return true
    }
    return false
  }

  async #counts (did: string, blocks: readonly string[]): Promise<number[]> {
    const out: number[] = []
    for (let i = 0; i < blocks.length; i += CHUNK) {
      const keys = blocks.slice(i, i + CHUNK).map(block => holdKeys.holder(block, did))
      for (const value of await this.#db.getMany(keys)) out.push(value === undefined ? 0 : Number(fromUtf8.decode(value)))
    }
    return out
  }

  /**
   * Adds to `batch` what applies `delta` to `did`'s holds and turns its staging list
   * into candidates (staged blocks the new repo does not hold). `fresh` says the DID
   * holds nothing yet (first sync, or after a takedown released everything), which
   * saves reading the current counts.
   */
  async planAdvance (did: string, delta: HoldDelta, batch: PlanBatch, options: { fresh?: boolean } = {}): Promise<HoldPlan> {
    let candidates = 0
    const apply = (block: string, before: number, change: number): void => {
      let after = before + change
      if (after < 0) {
        // the delta removes more than was held: the index is behind the repo it
        // describes; clamp so the block becomes a candidate and collection decides
        log.error('hold count below zero for %s in %s (%d%+d)', block, did, before, change)
        after = 0
      }
      if (after > 0) {
        batch.put(holdKeys.holder(block, did), encodeCount(after))
      } else {
        if (before > 0) batch.del(holdKeys.holder(block, did))
        batch.put(holdKeys.candidate(block), EMPTY)
        candidates++
      }
    }
    if (options.fresh === true) {
      for (const [block, change] of delta.entries()) apply(block, 0, change)
    } else {
      let chunk: Array<[string, number]> = []
      const flush = async (): Promise<void> => {
        const current = await this.#counts(did, chunk.map(([block]) => block))
        for (let i = 0; i < chunk.length; i++) apply(chunk[i][0], current[i], chunk[i][1])
        chunk = []
      }
      for (const entry of delta.entries()) {
        chunk.push(entry)
        if (chunk.length >= CHUNK) await flush()
      }
      await flush()
    }
    // staged blocks: drop the list; those the delta does not touch may or may not be
    // held (unchanged blocks the download brought again): look them up
    const untouched = new Set<string>()
    let staged = 0
    for await (const { key, blocks } of this.#staged(did)) {
      batch.del(key)
      staged += blocks.length
      for (const block of blocks) {
        if (delta.change(block) === 0) untouched.add(block)
      }
    }
    const list = [...untouched]
    const counts = options.fresh === true ? list.map(() => 0) : await this.#counts(did, list)
    for (let i = 0; i < list.length; i++) {
      if (counts[i] > 0) continue
      batch.put(holdKeys.candidate(list[i]), EMPTY)
      candidates++
    }
    return { candidates, staged }
  }

  /**
   * Adds to `batch` what drops every hold of `did` (its stored repo's blocks, as
   * listed by `blocks`) and its staging list, making all of them candidates.
   */
  async planRelease (did: string, blocks: HoldDelta | undefined, batch: PlanBatch): Promise<HoldPlan> {
    let candidates = 0
    if (blocks !== undefined) {
      for (const [block] of blocks.entries()) {
        batch.del(holdKeys.holder(block, did))
        batch.put(holdKeys.candidate(block), EMPTY)
        candidates++
      }
    } else {
      // the stored repo could not be walked: find the DID's holds the slow way
      log.error('releasing %s by scanning the whole holder index', did)
      const suffix = `/${did}`
      for await (const key of this.#db.keys({ gte: holdKeys.holdersPrefix, lt: holdKeys.holdersPrefix + '\xff' })) {
        if (!key.endsWith(suffix)) continue
        const block = key.slice(holdKeys.holdersPrefix.length, key.length - suffix.length)
        batch.del(key)
        batch.put(holdKeys.candidate(block), EMPTY)
        candidates++
      }
    }
    const staged = await this.planDiscardStaged(did, batch)
    return { candidates: candidates + staged.candidates }
  }

  /** Adds to `batch` what turns `did`'s staging list into candidates (with a release). */
  async planDiscardStaged (did: string, batch: PlanBatch): Promise<HoldPlan> {
    return await this.#discard(this.#staged(did), batch)
  }

  /**
   * Turns `did`'s staging list into candidates after a failed sync, a few lists per
   * batch (each list's key dropped in the batch that lists its blocks), so a large
   * failed download never builds one huge batch.
   */
  async discardStaged (did: string): Promise<HoldPlan> {
    let candidates = 0
    let batch = this.#db.batch()
    try {
      for await (const list of this.#staged(did)) {
        candidates += (await this.#discard([list], batch)).candidates
        if (batch.length >= CHUNK * 4) {
          await batch.write()
          batch = this.#db.batch()
        }
      }
      if (batch.length > 0) await batch.write()
    } finally {
      // a written batch is closed already; this is for one left by an error
      await batch.close().catch(() => {})
    }
    return { candidates }
  }

  async #discard (lists: AsyncIterable<{ key: string, blocks: string[] }> | Iterable<{ key: string, blocks: string[] }>, batch: PlanBatch): Promise<HoldPlan> {
    // a block listed twice is put twice: the same key, and no set of every block
    let candidates = 0
    for await (const { key, blocks } of lists) {
      batch.del(key)
      for (const block of blocks) {
        batch.put(holdKeys.candidate(block), EMPTY)
        candidates++
      }
    }
    return { candidates }
  }

  /** Whether any collection work is waiting. */
  async hasCandidates (): Promise<boolean> {
    const prefix = holdKeys.candidatePrefix
    const keys = await this.#db.keys({ gte: prefix, lt: prefix + '\xff', limit: 1 }).all()
    return keys.length > 0
  }

  /**
   * Deletes every candidate block that no repo holds, and forgets the candidates.
   * Must not run while a sync is storing blocks (MirrorStore serialises the two).
   *
   * Cheap per block and flat in memory, so that it costs about what writing the
   * blocks did: one iterator walks the candidates (a fresh seek from the prefix per
   * chunk would step over every tombstone the chunks before left), one more answers
   * "held by anyone?" with a seek each, and the candidates are dropped chunk by chunk.
   */
  async collect (options: { signal?: AbortSignal } = {}): Promise<{ checked: number, deleted: number }> {
    let checked = 0
    let deleted = 0
    const prefix = holdKeys.candidatePrefix
    const candidates = this.#db.keys({ gte: prefix, lt: prefix + '\xff' })
    const holders = this.#holderProbe()
    try {
      while (true) {
        options.signal?.throwIfAborted()
        const keys = await candidates.nextv(CHUNK)
        if (keys.length === 0) break
        const result = await this.#deleteUnheld(keys.map(key => key.slice(prefix.length)), holders)
        deleted += result.deleted
        const done = this.#db.batch()
        for (const key of keys) done.del(key)
        await done.write()
        checked += keys.length
      }
    } finally {
      await candidates.close()
      await holders.close()
    }
    if (checked > 0) log('collected: %d candidates checked, %d blocks deleted', checked, deleted)
    return { checked, deleted }
  }

  /**
   * Releases the staging lists of every DID but those `keep` names, deleting the
   * listed blocks no repo holds, list by list: a list's key goes only once its
   * blocks are dealt with, so a crash halfway leaves the rest listed. Only for when
   * no sync runs on the store at all (at open: a staging list can then only be left
   * by a process killed mid-sync). Time and memory go with the blocks listed, a
   * seek and a delete each, and a chunk of them at a time.
   */
  async releaseStaged (keep: ReadonlySet<string> = new Set(), options: { signal?: AbortSignal } = {}): Promise<{ dids: string[], checked: number, deleted: number }> {
    const dids = new Set<string>()
    let checked = 0
    let deleted = 0
    let keys: string[] = []
    let blocks: string[] = []
    const holders = this.#holderProbe()
    const flush = async (): Promise<void> => {
      if (keys.length === 0) return
      options.signal?.throwIfAborted()
      deleted += (await this.#deleteUnheld(blocks, holders)).deleted
      checked += blocks.length
      const done = this.#db.batch()
      for (const key of keys) done.del(key)
      await done.write()
      keys = []
      blocks = []
    }
    try {
      for await (const list of this.#staged()) {
        // `<prefix><did>/<seq>`: DIDs have no slash
        const rest = list.key.slice(holdKeys.stagedAll.length)
        const did = rest.slice(0, rest.lastIndexOf('/'))
        if (keep.has(did)) continue
        dids.add(did)
        keys.push(list.key)
        for (const block of list.blocks) blocks.push(block)
        if (blocks.length >= CHUNK) await flush()
      }
      await flush()
    } finally {
      await holders.close()
    }
    if (checked > 0) log('released the staging lists of %d DIDs: %d blocks checked, %d deleted', dids.size, checked, deleted)
    return { dids: [...dids], checked, deleted }
  }

  /** Deletes the blocks of `blocks` (named by {@link blockKey}) that no repo holds. */
  async #deleteUnheld (blocks: readonly string[], holders: HolderProbe): Promise<{ deleted: number }> {
    const doomed: CID[] = []
    // in key order, so the probe mostly answers from the key it already read
    for (const block of [...blocks].sort()) {
      if (await holders.held(block)) continue
      try {
        doomed.push(cidOfBlockKey(block))
      } catch {
        log.error('ignoring malformed block name %s', block)
      }
    }
    return { deleted: await this.#blockstore.deleteBlocks(doomed) }
  }

  /**
   * One iterator over the holder index answering "held by anyone?". It remembers the
   * first live key at or after its last seek, so a block asked for in key order after
   * that one is answered without seeking again whenever that key lies beyond it. That
   * matters after a release: the holder keys it deleted stay in LevelDB as tombstones
   * until compaction, a seek steps over every tombstone up to the next live key, and
   * seeking once per released block would cost the square of the blocks released
   * (an unpin of 6,000 blocks spent over a minute in seeks).
   */
  #holderProbe (): HolderProbe {
    const iterator = this.#db.keys({ gte: holdKeys.holdersPrefix, lt: holdKeys.holdersPrefix + '\xff' })
    let sought: string | undefined // the last prefix sought
    let found: string | undefined // the first live key at or after it; undefined: none
    return {
      held: async (block) => {
        const prefix = holdKeys.holderPrefix(block)
        if (sought === undefined || prefix < sought || (found !== undefined && found < prefix)) {
          iterator.seek(prefix)
          sought = prefix
          found = await iterator.next()
        }
        // no live key lies in [sought, found), and sought <= prefix <= found
        return found !== undefined && found.startsWith(prefix)
      },
      close: async () => { await iterator.close() }
    }
  }
}

interface HolderProbe {
  held: (block: string) => Promise<boolean>
  close: () => Promise<void>
}

/** The holder index read through the datastore it lives in, for whoever must know which repos hold a block (Bitswap serving). */
export function datastoreHolderIndex (datastore: Pick<Datastore, 'queryKeys'>): { holders: (cid: CID, options?: AbortOptions) => AsyncIterable<string> } {
  return {
    async * holders (cid, options) {
      const prefix = holdKeys.holderPrefix(blockKey(cid))
      for await (const key of datastore.queryKeys({ prefix }, options)) {
        const name = key.toString()
        if (name.startsWith(prefix)) yield name.slice(prefix.length)
      }
    }
  }
}

/**
 * What a mirror keeps on disk, under one data directory:
 *
 *   <dir>/blockstore  the blockstore kind the directory uses (blockstore.ts)
 *   <dir>/datastore   datastore-level: pins, per-DID repo state, the GC holder index
 *                     (gc.ts), whatever else the node keeps (libp2p identity), and
 *                     with the `level` kind the blocks (level-blockstore.ts)
 *   <dir>/blocks      with the `fs` kind: one file per block (fs-blockstore.ts)
 *
 * The store does not lock the directory; the node (or a one-shot command) takes
 * `<dir>/lock` before opening it. Within the process it serialises garbage
 * collection against block writers: syncs enter as writers, and collection runs only
 * when the last writer leaves, so it can never delete a block that a running sync
 * has just found present and is about to hold. Opening releases the staging lists
 * a killed process left behind for DIDs that are not pinned (see gc.ts), deleting
 * their blocks that no repo holds as it goes.
 */
import { join } from 'node:path'
import { logger } from '@libp2p/logger'
import { LevelDatastore } from 'datastore-level'
import { CID } from 'multiformats/cid'
import { DamagedBlockError, DataDirLockedError } from '../errors.ts'
import type { Block, ReadonlyBlockStore } from '../repo/block-store.ts'
import { SHA2_256, cidForBytes, sha256, verifyBlock } from '../repo/cid.ts'
import { settleBlockstoreKind, type BlockstoreKind, type MirrorBlockstore } from './blockstore.ts'
import { FsMirrorBlockstore } from './fs-blockstore.ts'
import { COMPACT_AFTER, LevelMirrorBlockstore } from './level-blockstore.ts'
import { ensureDataDir } from './lock.ts'
import { BlockHolds, HoldDelta, holdKeys, repoBlocksDelta } from './gc.ts'
import { BlobStore, type BlobPlanBatch } from './blob-store.ts'
import { holdsBlocks, type RepoStatus } from './status-policy.ts'

const log = logger('atmirror:mirror:store')

/** The last verified state of a mirrored repo. */
export interface RepoState {
  did: string
  /** CID of the signed commit. */
  commit: string
  rev: string
  /** The MST root CID (the commit's `data`). */
  data: string
  /** The PDS the repo came from. */
  pds?: string
  handle?: string
  /**
   * What the host says about the account; what that means for the blocks is in
   * status-policy.ts (when they are gone, commit/rev/data name the last commit held).
   */
  status: RepoStatus
  /** ISO time of the last successful check. */
  syncedAt: string
  error?: string
  /** Records in the stored repo (as of `commit`). */
  records?: number
}

export interface MirrorStoreInit {
  /**
   * Power-loss safety: every block is on disk before it counts as written (`fs`:
   * fsync of each file before its rename; `level`: synchronous batches), and the
   * advance batch is written synchronously. Process crashes never need it (the page
   * cache survives them). @default false
   */
  fsync?: boolean
  /**
   * The blockstore kind a new data directory gets; an existing one keeps its own,
   * and naming another is a BlockstoreKindError. @default the recorded kind, else 'level'
   */
  blockstore?: BlockstoreKind
}

export interface StoreOptions {
  signal?: AbortSignal
}

/** Options of {@link MirrorStore.getVerified}. */
export interface VerifiedReadOptions {
  signal?: AbortSignal
  /** The repo the block is read for: a repair asks that repo's sources (default: those of every repo holding it). */
  did?: string
  /**
   * What to do about a damaged block once its file is removed: `'wait'` refetches
   * it through the repairer and answers with the good bytes; `'background'` starts
   * the refetch and answers `undefined` at once (a peer asking over Bitswap is told
   * the block is not here); `false` only throws DamagedBlockError.
   *
   * @default 'wait'
   */
  repair?: 'wait' | 'background' | false
  /**
   * Refetch a block that is absent too, the same way (for checks of a repo that
   * holds it, such as `verify`).
   *
   * @default false
   */
  fetchMissing?: boolean
  /** Called for each block refetched by a `'wait'` repair: `damaged`, or `missing` (with `fetchMissing`). */
  onRepaired?: (cid: CID, was: 'damaged' | 'missing') => void
}

/** Refetches a block a stored repo holds and stores it (BlockRepairer, set by the node). */
export interface BlockRepairSource {
  /** The good bytes, stored; throws when no source has them. */
  repair: (cid: CID, options: { did?: string, signal?: AbortSignal }) => Promise<Uint8Array>
}

/** How long a pending collection waits for writers before writers that yield wait for it. */
const GC_PATIENCE_MS = 500

const KEYS = {
  pin: (did: string) => `/atmirror/pins/${did}`,
  pinPrefix: '/atmirror/pins/',
  repo: (did: string) => `/atmirror/repos/${did}`,
  repoPrefix: '/atmirror/repos/'
}

/** The staging lists' key range (gc.ts). */
const STAGED_RANGE = [holdKeys.stagedAll, holdKeys.stagedAll + '\xff'] as const

const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()

/** The pinned DIDs: the repos this mirror keeps. */
export interface PinSet {
  add: (did: string) => Promise<void>
  remove: (did: string) => Promise<void>
  has: (did: string) => Promise<boolean>
  list: () => Promise<string[]>
}

export class MirrorStore {
  /** The data directory. */
  readonly dir: string
  readonly blockstore: MirrorBlockstore
  readonly datastore: LevelDatastore
  /** The holder index that drives garbage collection. */
  readonly holds: BlockHolds
  readonly pins: PinSet
  /** Mirrored blobs and the index of which repos reference them (blob-store.ts). */
  readonly blobs: BlobStore
  /** The blockstore as the repo engine's small store interface (whole-block reads). */
  readonly blocks: ReadonlyBlockStore
  readonly #sync: boolean
  #repairer: BlockRepairSource | undefined
  #writers = 0
  #collecting: Promise<void> | undefined
  /** A compaction of the staging range under way (see #compactStaging). */
  #compacting: Promise<void> | undefined
  /** When the pending collection became pending; `undefined`: none is. */
  #gcPendingSince: number | undefined
  /** Writers waiting for the others to leave so an overdue collection can run. */
  readonly #drained: Array<() => void> = []

  get #gcPending (): boolean {
    return this.#gcPendingSince !== undefined
  }

  set #gcPending (pending: boolean) {
    if (!pending) this.#gcPendingSince = undefined
    else this.#gcPendingSince ??= performance.now()
  }
  #closed = false

  private constructor (dir: string, blockstore: MirrorBlockstore, datastore: LevelDatastore, sync: boolean) {
    this.dir = dir
    this.blockstore = blockstore
    this.datastore = datastore
    this.#sync = sync
    this.holds = new BlockHolds(datastore.db, blockstore)
    this.blobs = new BlobStore(join(dir, 'blobs'), { db: datastore.db, blocks: blockstore, blockHeld: async (cid) => await this.holds.isHeld(cid) }, { fsync: sync })
    const db = datastore.db
    this.pins = {
      add: async (did) => { if (await db.get(KEYS.pin(did)) === undefined) await db.put(KEYS.pin(did), pinRecord(did)) },
      remove: async (did) => { await db.del(KEYS.pin(did)) },
      has: async (did) => (await db.get(KEYS.pin(did))) !== undefined,
      list: async () => (await db.keys({ gte: KEYS.pinPrefix, lt: KEYS.pinPrefix + '\xff' }).all()).map(key => key.slice(KEYS.pinPrefix.length))
    }
    // synchronous answers: the repo engine's walkers skip a microtask per block then
    this.blocks = {
      get: (cid) => blockstore.getBytesSync(cid),
      has: (cid) => blockstore.hasSync(cid)
    }
  }

  /**
   * Opens (creating if needed) the stores under `dataDir`. Throws DataDirLockedError
   * when another process has the datastore open.
   */
  static async open (dataDir: string, init: MirrorStoreInit = {}): Promise<MirrorStore> {
    await ensureDataDir(dataDir)
    // before the datastore exists: a directory with one and no record is an old fs one
    const kind = settleBlockstoreKind(dataDir, init.blockstore)
    const datastore = new LevelDatastore(join(dataDir, 'datastore'))
    try {
      // opened here rather than by datastore.open(), which hides the reason. Snappy:
      // the holder index repeats the DID in every key and records repeat their
      // DIDs and collections, which LevelDB's prefix compression alone leaves
      // (bench/mirror.ts measures the disk; tables written before stay as they are)
      await datastore.db.open({ createIfMissing: true, compression: true })
    } catch (err) {
      // leveldb's own LOCK file: another process has this data directory open
      if ((err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED') throw new DataDirLockedError(dataDir)
      throw err
    }
    await datastore.open()
    const blockstore: MirrorBlockstore = kind === 'level'
      ? new LevelMirrorBlockstore(datastore.db, { fsync: init.fsync })
      : new FsMirrorBlockstore(join(dataDir, 'blocks'), { fsync: init.fsync })
    try {
      await blockstore.open()
    } catch (err) {
      await datastore.close()
      throw err
    }
    const store = new MirrorStore(dataDir, blockstore, datastore, init.fsync ?? false)
    try {
      await store.blobs.open()
      store.#gcPending = await store.holds.hasCandidates() || await store.blobs.hasCandidates()
      await store.#releaseOrphanedStaging()
    } catch (err) {
      await store.close()
      throw err
    }
    return store
  }

  /**
   * Staging lists present at open belong to syncs that no longer run: one process
   * has the data directory (the lock, and LevelDB's own LOCK, see to that) and this
   * one has started none yet, so they were left by a process killed mid-sync. Those
   * of DIDs that are not pinned are released now, their blocks deleted unless a
   * stored repo holds them: nothing would ever sync such a DID again, so without
   * this a killed first sync would leave its blocks on disk for good. A pinned
   * DID's list waits for its next sync, which reuses what is stored.
   */
  async #releaseOrphanedStaging (): Promise<void> {
    // streamed list by list, a seek and an unlink per block: what a killed sync
    // left costs about what writing it did (see BlockHolds.releaseStaged)
    const { dids, checked, deleted } = await this.holds.releaseStaged(new Set(await this.pins.list()))
    if (dids.length === 0) return
    log('released the staged blocks of interrupted syncs (%s): %d blocks checked, %d deleted', dids.join(', '), checked, deleted)
  }

  /** The last verified state of `did`'s repo, if any. */
  async getState (did: string): Promise<RepoState | undefined> {
    const value = await this.datastore.db.get(KEYS.repo(did))
    return value === undefined ? undefined : JSON.parse(fromUtf8.decode(value)) as RepoState
  }

  /** Writes a repo state as is (holds are not touched; see {@link commitRepo}). */
  async putState (state: RepoState): Promise<void> {
    await this.datastore.db.put(KEYS.repo(state.did), encodeState(state))
  }

  /** Every stored repo state. */
  async listStates (): Promise<RepoState[]> {
    const values = await this.datastore.db.values({ gte: KEYS.repoPrefix, lt: KEYS.repoPrefix + '\xff' }).all()
    return values.map(value => JSON.parse(fromUtf8.decode(value)) as RepoState)
  }

  /**
   * The block's bytes from local storage, hash-checked (the fetch chain's local
   * source, head exchange); `undefined` when absent, or when damaged: its file is
   * then removed (see {@link getVerified}) and the caller fetches it as missing.
   */
  async getBlock (cid: CID, options: StoreOptions = {}): Promise<Uint8Array | undefined> {
    try {
      return await this.getVerified(cid, { signal: options.signal, repair: false })
    } catch (err) {
      if (err instanceof DamagedBlockError) return undefined
      throw err
    }
  }

  /**
   * Where damaged (and, when asked, missing) blocks are refetched from; without one,
   * a damaged block is removed and reported, not replaced.
   */
  setRepairer (repairer: BlockRepairSource | undefined): void {
    this.#repairer = repairer
  }

  /**
   * The block's bytes, hash-checked against its CID: the read for everything that
   * leaves the node (export, Bitswap, and the HTTP API to come). Blocks were checked
   * when written, but a disk can damage them since. A damaged block's file is
   * removed at once, so it is never served, and the block is refetched through the
   * repairer as `repair` says; `undefined` when the block is not stored (or is being
   * repaired in the background).
   *
   * @throws DamagedBlockError when the block is damaged and not repaired (its `cause`
   * says why the refetch failed); the repairer's error when a missing block asked
   * for with `fetchMissing` cannot be refetched
   */
  async getVerified (cid: CID, options: VerifiedReadOptions = {}): Promise<Uint8Array | undefined> {
    options.signal?.throwIfAborted()
    const bytes = this.blockstore.getBytesSync(cid)
    let damage: DamagedBlockError | undefined
    if (bytes !== undefined) {
      const actual = actualDigest(cid, bytes)
      if (actual === undefined) return bytes
      damage = new DamagedBlockError(cid, { did: options.did, actual: cidForBytes(bytes, cid.code) })
      await this.#removeDamaged(cid, actual)
    } else if (options.fetchMissing !== true) {
      return undefined
    }
    const mode = options.repair ?? 'wait'
    if (this.#repairer === undefined || mode === false) {
      if (damage !== undefined) throw damage
      return undefined
    }
    const repairing = this.#repairer.repair(cid, { did: options.did, signal: mode === 'background' ? undefined : options.signal })
    if (mode === 'background') {
      repairing.catch(() => {}) // the repairer logs its failures
      return undefined
    }
    try {
      const good = await repairing
      options.onRepaired?.(cid, damage === undefined ? 'missing' : 'damaged')
      return good
    } catch (err) {
      if (damage === undefined || (err as Error).name === 'AbortError') throw err
      throw new DamagedBlockError(cid, { did: options.did, repaired: false }, { cause: err })
    }
  }

  /**
   * The stored blocks as the repo engine's store interface, read through
   * {@link getVerified} with `options` (for export and checks of a stored repo).
   */
  verifiedBlocks (options: VerifiedReadOptions = {}): ReadonlyBlockStore {
    return {
      get: async (cid, getOptions) => await this.getVerified(cid, { ...options, signal: getOptions?.signal ?? options.signal }),
      has: (cid) => this.blockstore.hasSync(cid)
    }
  }

  async #removeDamaged (cid: CID, actual: Buffer): Promise<void> {
    // checked again right before the delete: a block rewritten meanwhile is good now
    const again = this.blockstore.getBytesSync(cid)
    if (again === undefined || actualDigest(cid, again) === undefined) return
    await this.blockstore.deleteBlocks([cid])
    log.error('block %c is damaged on disk (its bytes hash to sha256 %s); removed it so it is never served', cid, actual.toString('hex'))
  }

  async hasBlock (cid: CID, options: StoreOptions = {}): Promise<boolean> {
    return await this.blockstore.has(cid, options)
  }

  /**
   * Stores blocks for `did`'s running sync: hash-checks every block, records them in
   * the DID's staging list (before any file is written, so a crash cannot leave an
   * untracked block), then writes the files. Must be called between
   * {@link beginWrite} and its release.
   *
   * @throws CidMismatchError / UnsupportedCidError before anything is written
   */
  async putBlocks (did: string, blocks: readonly Block[], options: StoreOptions = {}): Promise<void> {
    if (blocks.length === 0) return
    for (const { cid, bytes } of blocks) verifyBlock(cid, bytes)
    await this.holds.stage(did, blocks.map(b => b.cid))
    options.signal?.throwIfAborted()
    await this.blockstore.putVerified(blocks, options)
  }

  /**
   * Advances `did` to `state` in one atomic batch: the state itself, the hold changes
   * of `delta` (old repo → new repo), the staging list turned into GC candidates, and
   * the pin (`pin: true`). `fresh`: the DID held nothing before (its current counts
   * need not be read).
   */
  async commitRepo (state: RepoState, delta: HoldDelta, options: { pin?: boolean, fresh?: boolean, blobs?: (batch: BlobPlanBatch) => Promise<number> } = {}): Promise<{ candidates: number }> {
    const batch = this.datastore.db.batch()
    try {
      const plan = await this.holds.planAdvance(state.did, delta, batch, { fresh: options.fresh })
      // the blob references of the new commit (blobs.ts), in the same batch
      if (options.blobs !== undefined) plan.candidates += await options.blobs(batch)
      batch.put(KEYS.repo(state.did), encodeState(state))
      if (options.pin === true && !await this.pins.has(state.did)) batch.put(KEYS.pin(state.did), pinRecord(state.did))
      await batch.write({ sync: this.#sync })
      if (plan.candidates > 0) this.#gcPending = true
      // in the background, as LevelDB's own compactions run; close() waits for it
      if ((plan.staged ?? 0) > COMPACT_AFTER && this.#compacting === undefined) {
        this.#compacting = this.#compactStaging().catch(err => { log.error('compacting the staging range failed: %e', err) }).finally(() => { this.#compacting = undefined })
      }
      return { candidates: plan.candidates }
    } finally {
      await batch.close()
    }
  }

  /**
   * A full sync's staging lists (34 bytes per block) are dead once it advances, yet
   * they and their tombstones stay in LevelDB's log and tables until compaction
   * reaches them: about a fifth of the repo's size. Compacting just their key range
   * (which flushes the write buffer first) drops them now, at the cost of rewriting
   * the recent writes once (bench/mirror.ts: the disk figures, the sync time).
   */
  async #compactStaging (): Promise<void> {
    const started = Date.now()
    await (this.datastore.db as unknown as { compactRange: (start: string, end: string) => Promise<void> }).compactRange(STAGED_RANGE[0], STAGED_RANGE[1])
    log('compacted the staging range after an advance in %d ms', Date.now() - started)
  }

  /**
   * Unpins `did`: removes its pin and state and collects the blocks no other repo
   * holds. The caller keeps it apart from syncs of the same DID (the node runs it as
   * the DID's job in its runner).
   */
  async unpinRepo (did: string): Promise<void> {
    const release = await this.beginWrite()
    try {
      const { candidates } = await this.releaseRepo(did, { unpin: true })
      log('unpinned %s: %d blocks to check', did, candidates)
    } finally {
      await release()
    }
  }

  /**
   * Drops every hold of `did` (its blocks become GC candidates) and, in the same
   * batch, either replaces its state (takedown, deletion) or removes state and pin
   * (unpin).
   */
  async releaseRepo (did: string, next: { state: RepoState } | { unpin: true }): Promise<{ candidates: number }> {
    const current = await this.getState(did)
    let blocks: HoldDelta | undefined = new HoldDelta()
    if (holdsBlocks(current)) {
      try {
        blocks = await repoBlocksDelta(this.blocks, CID.parse(current.commit))
      } catch (err) {
        log.error('%s: cannot walk the stored repo (%e); releasing by index scan', did, err)
        blocks = undefined
      }
    }
    const batch = this.datastore.db.batch()
    try {
      const plan = await this.holds.planRelease(did, blocks, batch)
      plan.candidates += await this.blobs.planRelease(did, batch, { unpin: !('state' in next) })
      if ('state' in next) {
        batch.put(KEYS.repo(did), encodeState(next.state))
      } else {
        batch.del(KEYS.repo(did))
        batch.del(KEYS.pin(did))
      }
      await batch.write({ sync: this.#sync })
      if (plan.candidates > 0) this.#gcPending = true
      return { candidates: plan.candidates }
    } finally {
      await batch.close()
    }
  }

  /** After a failed sync: its staged blocks become candidates (collected when writers leave). */
  async discardStaged (did: string): Promise<{ candidates: number }> {
    const plan = await this.holds.discardStaged(did)
    if (plan.candidates > 0) this.#gcPending = true
    return { candidates: plan.candidates }
  }

  /**
   * Enters as a block writer (or a reader that needs blocks to stay put, such as an
   * export). Garbage collection waits until every writer has left; the returned
   * release runs any pending collection when the last one leaves, and resolves after
   * it.
   */
  async beginWrite (options: { yieldToGc?: boolean } = {}): Promise<() => Promise<void>> {
    // `yieldToGc`: a collection pending for longer than GC_PATIENCE_MS goes first
    // (this writer waits until the others leave and it has run). Under a steady
    // stream of short writers, such as a followed firehose, the last writer would
    // otherwise never leave and a deleted record would stay stored. Only for a
    // writer that holds no other write (a nested one would wait for itself).
    while (this.#collecting !== undefined || (options.yieldToGc === true && this.#gcOverdue())) {
      if (this.#collecting !== undefined) await this.#collecting
      else await new Promise<void>(resolve => { this.#drained.push(resolve) })
    }
    this.#writers++
    let released = false
    return async () => {
      if (released) return
      released = true
      this.#writers--
      if (this.#writers > 0) return
      const waiting = this.#drained.splice(0)
      const collecting = this.#gcPending ? this.#collect() : undefined
      for (const resolve of waiting) resolve()
      await collecting
    }
  }

  #gcOverdue (): boolean {
    return this.#writers > 0 && this.#gcPendingSince !== undefined && performance.now() - this.#gcPendingSince > GC_PATIENCE_MS
  }

  /**
   * Runs pending garbage collection now if no writer is active (otherwise the last
   * writer will). `force` also scans for candidates left by an earlier process.
   */
  async collectGarbage (options: { force?: boolean } = {}): Promise<void> {
    if (options.force === true) this.#gcPending = true
    if (!this.#gcPending || this.#writers > 0) return
    await this.#collect()
  }

  async #collect (): Promise<void> {
    if (this.#collecting !== undefined) {
      await this.#collecting
      return
    }
    this.#gcPending = false
    this.#collecting = (async () => {
      try {
        const { deleted } = await this.holds.collect()
        if (deleted > COMPACT_AFTER && this.blockstore instanceof LevelMirrorBlockstore) {
          // the space of deleted blocks comes back now rather than over later writes
          const started = Date.now()
          await this.blockstore.compact()
          log('compacted the block range after deleting %d blocks in %d ms', deleted, Date.now() - started)
        }
        await this.blobs.collect()
      } catch (err) {
        // background work: keep the candidates for the next run
        this.#gcPending = true
        log.error('garbage collection failed: %e', err)
      } finally {
        this.#collecting = undefined
      }
    })()
    await this.#collecting
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    while (this.#collecting !== undefined) await this.#collecting
    await this.#compacting
    await this.blockstore.close()
    await this.datastore.close()
  }

  async [Symbol.asyncDispose] (): Promise<void> {
    await this.close()
  }
}

/**
 * The SHA-256 of `bytes` when it is not the digest `cid` names; `undefined` when
 * they match (or the CID names another hash, which the store never holds: `put`
 * accepts sha2-256 only).
 */
function actualDigest (cid: CID, bytes: Uint8Array): Buffer | undefined {
  if (cid.multihash.code !== SHA2_256) return undefined
  const digest = sha256(bytes)
  const want = cid.multihash.digest
  return Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).equals(want) ? undefined : Buffer.from(digest)
}

function pinRecord (did: string): Uint8Array {
  return utf8.encode(JSON.stringify({ did, addedAt: new Date().toISOString() }))
}

function encodeState (state: RepoState): Uint8Array {
  return utf8.encode(JSON.stringify(state))
}

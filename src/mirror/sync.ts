/**
 * Syncing one repo: head → blocks → verification → one atomic advance → GC.
 *
 * One identity per sync: it is resolved once, handed to the head resolver, and
 * from then on the identity the head was verified against (the refreshed one when
 * the key rotated or the account moved) is the only one used: `getRepo` and the
 * PDS broker ask its PDS, verification uses its key, the stored state records its
 * PDS and handle. An account status (deactivated, taken down, …) is recorded only
 * when it comes from the PDS the current DID document names.
 *
 * Full sync (nothing stored): `getRepo` is streamed through the CAR reader and
 * stored in batches as it arrives; only MST nodes, the commit and a set of the
 * CIDs seen stay in memory, never the records. Incremental sync: `getRepo?since=`
 * the stored rev brings the blocks written since; then the tree is walked from the
 * new root, skipping every subtree the stored repo already holds, and whatever is
 * still missing goes through the fetch chain (local → bitswap → PDS getBlocks).
 *
 * Crash safety comes from the write order: every block is hash-checked, listed in
 * the DID's staging list, then written; the new repo is verified (signature, MST
 * structure, every record present: whole on a full sync, in proportion to the
 * change on an incremental one, see ../repo/verify-incremental.ts); only then one
 * atomic batch writes the new state together with the hold changes (see gc.ts). Until that batch the previous
 * state and its blocks are untouched, so a crash at any point leaves the previous
 * state intact, and the next run redoes the sync (the killed run's staged blocks
 * are collected when the store next opens, see MirrorStore.open).
 */
import { setImmediate as nextTurn } from 'node:timers/promises'
import { logger } from '@libp2p/logger'
import {
  CarParseError,
  DidNotFoundError,
  HeadUnavailableError,
  DownloadLimitError,
  MethodNotImplementedError,
  NotPinnedError,
  PdsResponseError,
  PdsUnavailableError
} from '../errors.ts'
import { LocalBroker } from '../blocks/local.ts'
import { BlockFetcher } from '../blocks/fetcher.ts'
import { PdsBroker, PdsClient, type PdsClientInit } from '../blocks/pds.ts'
import { completeMst } from '../blocks/walker.ts'
import type { Head, HeadResolver } from '../head/head-resolver.ts'
import { compareRevs } from '../head/head-resolver.ts'
import type { Identity, IdentityResolver } from '../identity/resolver.ts'
import type { Block, ReadonlyBlockStore } from '../repo/block-store.ts'
import { readCar } from '../repo/car.ts'
import { CID, cidKey, verifyBlock } from '../repo/cid.ts'
import { decodeCommit } from '../repo/commit.ts'
import { verifyRepo } from '../repo/verify.ts'
import { verifyIncremental } from '../repo/verify-incremental.ts'
import { verifyStoredRepo, type StoredRepoReport, type VerifyStoredOptions } from './repair.ts'
import { DownloadGuard, type DownloadLimits } from './download-guard.ts'
import { HoldDelta, holdDeltaOf, repoHoldDelta } from './gc.ts'
import { BlobScan, blobDelta, blobRecount, withoutStoredRefs, type BlobCheckResult, type BlobMirror, type BlobPassResult } from './blobs.ts'
import type { BlobDelta } from './blob-store.ts'
import type { MirrorStore, RepoState } from './store.ts'
import { holdsBlocks, statusOf, statusRules, type RepoStatus } from './status-policy.ts'

const log = logger('atmirror:mirror:sync')
const repoLog = logger('atmirror:repo')

/** Blocks fetched for a sync, by source. */
export interface FetchedCounts {
  local: number
  bitswap: number
  pds: number
}

export interface SyncResult {
  did: string
  rev: string
  commit: CID
  /** Records in the repo now stored. */
  records: number
  /** Whether the stored repo moved to a new commit. */
  changed: boolean
  /** Whether everything was downloaded (nothing usable was stored before). */
  full: boolean
  /** Blocks that had to be obtained, by source (`local`: found already stored during the walk). */
  fetched: FetchedCounts
  /** Bytes downloaded. */
  bytes: number
  seconds: number
  /**
   * Set when the head offered was a validly signed commit older than the stored
   * rev: the PDS rolled the repo back (or served a stale copy). The stored repo
   * is kept (`changed` is false); this says why.
   */
  rollback?: { rev: string, commit: CID }
  /** Damaged or missing blocks of the stored repo refetched by the `check` of an unchanged repo. */
  repaired?: number
  /** Where the head came from: `pds:<url>` or `peer:<peer id>`. */
  source: string
  /** What the blob pass after the sync did (absent without blob mirroring). */
  blobs?: BlobPassResult
  /** Where the DID document the head was verified with came from (`Identity.source`). */
  identitySource?: string
}

/** Progress of a sync, for a terminal display. */
export interface SyncProgress {
  did: string
  phase: 'head' | 'download' | 'walk' | 'verify' | 'commit' | 'blobs'
  /** Blocks received so far. */
  blocks: number
  /** Bytes received so far. */
  bytes: number
  /** Blobs stored so far (phase `blobs`). */
  blobs?: number
  /** Blob bytes received so far (phase `blobs`). */
  blobBytes?: number
}

export interface SyncOptions {
  signal?: AbortSignal
  onProgress?: (progress: SyncProgress) => void
  /**
   * Pin the DID as part of the advance. With `false`, a DID that is not pinned
   * (unpinned while a scheduled re-check was queued) fails with NotPinnedError
   * before anything is fetched. @default true
   */
  pin?: boolean
  /**
   * When the head is the stored commit, check the stored repo end to end
   * (verifyStoredRepo: every block hash-checked, signature, MST, every record) and
   * refetch what is damaged or missing, rather than trusting the disk. Costs a read
   * of the whole repo; a one-shot `atmirror mirror` does it, the scheduler does not.
   * @default false
   */
  check?: boolean
}

export interface RepoSyncerComponents {
  store: MirrorStore
  identity: IdentityResolver
  heads: HeadResolver
  /**
   * The fetch chain for blocks missing after the download. Default: local → PDS;
   * the node passes one with its bitswap broker in between.
   */
  fetcher?: BlockFetcher
  /** Fetches the blobs a repo references after each sync (blobs.ts); without it blob references are counted, nothing is fetched. */
  blobs?: BlobMirror
}

export interface RepoSyncerInit {
  /** Timeouts and fetch for getRepo/getBlocks. */
  pds?: PdsClientInit
  /** Blocks written per batch while a CAR streams in. @default 256 */
  writeBatch?: number
  /** Verify record blocks by full DRISL decode instead of hash + map header. @default false */
  decodeRecords?: boolean
  /**
   * Bytes of record blocks a sync keeps in memory after storing them, so that
   * verification need not read them back from disk (MST nodes are always kept).
   * Reading them back from the page cache is cheap; holding them costs heap.
   * @default 0
   */
  cacheBytes?: number
  /** What one sync may download (see download-guard.ts for the defaults and why). */
  limits?: DownloadLimits
  /**
   * How an incremental sync verifies: `'incremental'` only what changed
   * (../repo/verify-incremental.ts, docs/ARCHITECTURE.md says why that is enough),
   * `'full'` the whole new repo, as a first sync does (reads every block; the
   * baseline of bench/incremental.ts). @default 'incremental'
   */
  verify?: 'incremental' | 'full'
}

/** Serialises work per key: one writer per DID. */
class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>()

  async run<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>(resolve => { release = resolve })
    const tail = previous.then(async () => await mine)
    this.#tails.set(key, tail)
    try {
      await previous
      return await fn()
    } finally {
      release()
      if (this.#tails.get(key) === tail) this.#tails.delete(key)
    }
  }
}

/**
 * A view of the blocks a sync works with: MST nodes and commits this sync received
 * stay in memory (the walk, the diff and verification all read them), other blocks
 * only up to a byte budget (0 by default); the rest is read back from the
 * blockstore, where it was just written (the page cache still has it), or where the
 * previous repo left it, hash-checked: a damaged block is refetched through the
 * store's repairer rather than verified as is. Keeping the
 * view small matters more than it seems: every block retained across the sync is
 * promoted by V8's scavenger, which then grows the young generation, and peak RSS
 * with it. Answers are synchronous (the repo engine's walkers skip a microtask per
 * block then), with a turn of the event loop every so often so a large repo does
 * not hold it.
 */
class SyncView implements ReadonlyBlockStore {
  readonly #store: MirrorStore
  readonly #cached = new Map<string, Uint8Array>()
  readonly #budget: number
  #cachedBytes = 0
  #slab = new Uint8Array(0)
  #slabUsed = 0
  #calls = 0
  /** Blocks this sync needed and found already stored before it started. */
  diskHits = 0
  /** Blocks this sync stored (not counted as disk hits). */
  readonly #mine = new Set<string>()
  readonly #countMine: boolean

  readonly #did: string

  constructor (store: MirrorStore, did: string, budget: number, countDiskHits: boolean) {
    this.#store = store
    this.#did = did
    this.#budget = budget
    this.#countMine = countDiskHits
  }

  /** A block this sync stored; `structural` ones (nodes, commits) are kept whatever the budget. */
  note (block: Block, structural: boolean): void {
    const key = cidKey(block.cid)
    if (this.#countMine) this.#mine.add(key)
    if (this.#cached.has(key)) return
    if (structural || this.#cachedBytes + block.bytes.byteLength <= this.#budget) {
      // a copy: the block is a view into a network chunk, which it would keep alive
      this.#cached.set(key, this.#copy(block.bytes))
      this.#cachedBytes += block.bytes.byteLength
    }
  }

  /**
   * A copy of a block kept for the sync, packed into 256 KiB slabs: a copy of its
   * own (`slice`) is an ArrayBuffer per block, each with its own native allocation
   * and bookkeeping for V8 (27,000 of them for the nodes of a 100,000-record repo).
   */
  #copy (bytes: Uint8Array): Uint8Array {
    const n = bytes.byteLength
    if (n > SLAB / 8) return bytes.slice()
    if (this.#slabUsed + n > this.#slab.byteLength) {
      this.#slab = new Uint8Array(SLAB)
      this.#slabUsed = 0
    }
    const copy = this.#slab.subarray(this.#slabUsed, this.#slabUsed + n)
    copy.set(bytes)
    this.#slabUsed += n
    return copy
  }

  cached (cid: CID): Uint8Array | undefined {
    return this.#cached.get(cidKey(cid))
  }

  get (cid: CID): Uint8Array | undefined | Promise<Uint8Array | undefined> {
    const cached = this.#cached.get(cidKey(cid))
    if (cached !== undefined) return this.#turn(cached)
    const bytes = this.#store.blockstore.getBytesSync(cid)
    if (bytes === undefined || hashes(cid, bytes)) return this.#turn(bytes)
    // spoiled on disk since it was stored: removed and refetched through the store's
    // repairer, or the sync fails (an absent block is the walk's to fetch, staged)
    return this.#store.getVerified(cid, { did: this.#did })
  }

  has (cid: CID): boolean | Promise<boolean> {
    const key = cidKey(cid)
    if (this.#cached.has(key)) return this.#turn(true)
    const found = this.#store.blockstore.hasSync(cid)
    if (found && this.#countMine && !this.#mine.has(key)) this.diskHits++
    return this.#turn(found)
  }

  #turn<T> (value: T): T | Promise<T> {
    if (++this.#calls % 1024 !== 0) return value
    return nextTurn().then(() => value)
  }
}

/** Bytes per slab of the blocks a sync keeps (SyncView). */
const SLAB = 256 * 1024

/** Whether `bytes` hash to `cid` (blocks read back from disk: a disk can spoil them). */
function hashes (cid: CID, bytes: Uint8Array): boolean {
  try {
    verifyBlock(cid, bytes)
    return true
  } catch {
    return false
  }
}

/**
 * MST nodes are maps whose first key (canonical order) is `e`: `a2 61 65`. Keeping
 * every block that starts so costs little memory (records rarely do) and saves
 * reading the tree back from disk for the walk, the diff and verification.
 */
function looksLikeMstNode (bytes: Uint8Array): boolean {
  return bytes[0] === 0xa2 && bytes[1] === 0x61 && bytes[2] === 0x65
}

export class RepoSyncer {
  readonly #store: MirrorStore
  readonly #identity: IdentityResolver
  readonly #heads: HeadResolver
  readonly #fetcher: BlockFetcher
  readonly #blobs: BlobMirror | undefined
  readonly #client: PdsClient
  readonly #writeBatch: number
  readonly #decodeRecords: boolean
  readonly #cacheBytes: number
  readonly #limits: DownloadLimits | undefined
  readonly #verifyFull: boolean
  readonly #mutex = new KeyedMutex()

  constructor (components: RepoSyncerComponents, init: RepoSyncerInit = {}) {
    this.#store = components.store
    this.#identity = components.identity
    this.#heads = components.heads
    this.#client = new PdsClient({ fetch: components.identity.fetch, ...init.pds })
    this.#fetcher = components.fetcher ?? new BlockFetcher({
      store: components.store,
      brokers: [
        new LocalBroker({ store: components.store }),
        new PdsBroker({ identity: components.identity }, { client: this.#client })
      ]
    })
    this.#blobs = components.blobs
    this.#writeBatch = init.writeBatch ?? 256
    this.#decodeRecords = init.decodeRecords ?? false
    this.#cacheBytes = init.cacheBytes ?? 0
    this.#limits = init.limits
    this.#verifyFull = init.verify === 'full'
  }

  /** The fetch chain this syncer uses. */
  get fetcher (): BlockFetcher {
    return this.#fetcher
  }

  /**
   * Brings the stored copy of a repo up to its head (full or incremental), verifies
   * it (whole, or what changed), advances its state and collects garbage. A head resolution that says
   * the repo is taken down, deleted, suspended or deactivated updates the stored
   * status (see {@link RepoState}) and is thrown; transient failures leave the
   * stored state exactly as it was.
   */
  async sync (didOrHandle: string, options: SyncOptions = {}): Promise<SyncResult> {
    const started = performance.now()
    let identity: Identity
    try {
      identity = await this.#identity.resolve(didOrHandle, { signal: options.signal, verifyHandle: false })
    } catch (err) {
      if (err instanceof DidNotFoundError && err.tombstoned && didOrHandle.startsWith('did:')) {
        await this.#mutex.run(didOrHandle, async () => { await this.#applyStatus(didOrHandle, 'deleted', undefined, err) })
      }
      throw err
    }
    return await this.#mutex.run(identity.did, async () => await this.#sync(identity, started, options))
  }

  /**
   * {@link BlobMirror.checkStored} for `did`, in turn with its syncs: removes the
   * blobs its PDS no longer serves, and fetches those it serves again.
   */
  async checkBlobs (did: string, options: { signal?: AbortSignal } = {}): Promise<BlobCheckResult> {
    if (this.#blobs === undefined) return { checked: 0, removed: 0, restored: 0 }
    const blobs = this.#blobs
    return await this.#mutex.run(did, async () => {
      const pds = (await this.#store.getState(did))?.pds
      const out = await blobs.checkStored(did, { pds, signal: options.signal })
      if (out.restored > 0) await blobs.fetchWanted(did, { pds, signal: options.signal })
      return out
    })
  }

  /**
   * {@link BlobMirror.recheckStored} for `did` (a bounded round, at most once per its
   * interval), in turn with its syncs: what a daemon's re-checks run, so a blob taken
   * down after it was stored is removed without an explicit check.
   */
  async recheckBlobs (did: string, options: { signal?: AbortSignal } = {}): Promise<BlobCheckResult> {
    const none = { checked: 0, removed: 0, restored: 0 }
    if (this.#blobs === undefined) return none
    const blobs = this.#blobs
    return await this.#mutex.run(did, async () => {
      const state = await this.#store.getState(did)
      if (state === undefined || state.status !== 'active') return none
      const out = await blobs.recheckStored(did, { pds: state.pds, signal: options.signal })
      if (out.restored > 0) await blobs.fetchWanted(did, { pds: state.pds, signal: options.signal })
      return out
    })
  }

  /**
   * {@link verifyStoredRepo} for `did`, its blobs included, in turn with its syncs (a
   * sync does not move the repo meanwhile).
   */
  async verifyStored (did: string, options: VerifyStoredOptions = {}): Promise<StoredRepoReport> {
    return await this.#mutex.run(did, async () => await verifyStoredRepo(this.#store, did, { blobs: this.#blobs, ...options }))
  }

  /** The blob fetch pass for `did` (blobs.ts), after an advance made outside `sync` (a firehose event). */
  async fetchBlobs (did: string, options: { pds?: string, signal?: AbortSignal } = {}): Promise<BlobPassResult | undefined> {
    return await this.#blobs?.fetchWanted(did, options)
  }

  /** Runs `fn` in turn with the DID's syncs (for writers of a repo other than `sync`: firehose events). */
  async exclusive<T> (did: string, fn: () => Promise<T>): Promise<T> {
    return await this.#mutex.run(did, fn)
  }

  /**
   * Records a status the repo's host gave (a firehose `#account`), releasing the
   * blocks where the status policy says they go; in turn with the DID's syncs.
   */
  async recordStatus (did: string, status: RepoStatus, identity: Identity | undefined, reason: Error): Promise<void> {
    await this.#mutex.run(did, async () => { await this.#applyStatus(did, status, identity, reason) })
  }

  async #sync (resolved: Identity, started: number, options: SyncOptions): Promise<SyncResult> {
    let identity = resolved
    const { signal } = options
    const did = identity.did
    const pin = options.pin ?? true
    if (!pin && !await this.#store.pins.has(did)) throw new NotPinnedError(did)
    const state = await this.#store.getState(did)
    const progress: SyncProgress = { did, phase: 'head', blocks: 0, bytes: 0 }
    options.onProgress?.({ ...progress })

    let head: Head
    try {
      head = await this.#heads.resolveHead(did, { signal, identity })
    } catch (err) {
      const status = statusOf(err)
      if (status !== undefined && !(signal?.aborted ?? false)) {
        // the head resolver refreshes the identity before it reports a status: the cache holds the current one
        const current = await this.#identity.resolve(did, { signal, verifyHandle: false }).catch(() => undefined)
        if (current !== undefined && namesSourceOf(current, err)) await this.#applyStatus(did, status, current, err as Error)
        else log('%s: %s said by a host the DID document does not name (%s); status unchanged', did, status, (err as Error).message)
      }
      throw err
    }
    // from here on, the identity the head was verified against
    identity = head.identity

    const now = new Date().toISOString()
    const unchanged = (current: RepoState, records: number | undefined): SyncResult => ({
      did,
      rev: current.rev,
      commit: CID.parse(current.commit),
      records: records ?? 0,
      changed: false,
      full: false,
      fetched: { local: 0, bitswap: 0, pds: 0 },
      bytes: 0,
      seconds: (performance.now() - started) / 1000,
      source: head.source,
      identitySource: head.identity.source
    })
    if (holdsBlocks(state)) {
      const same = state.commit === head.cid.toString()
      const older = compareRevs(head.rev, state.rev) < 0
      if (same || older) {
        // a signed commit older than one already verified: the host went back in
        // time. Not taken, and said loudly (the logger's levels are debug, error
        // and trace: error is the one an operator sees)
        if (older) log.error('%s: PDS rollback: the head offered, rev %s (commit %c), is older than the stored rev %s; keeping the stored repo', did, head.rev, head.cid, state.rev)
        const next: RepoState = { ...state, status: 'active', syncedAt: now, pds: identity.pds, handle: identity.handle ?? state.handle }
        delete next.error
        await this.#store.putState(next)
        if (pin && !await this.#store.pins.has(did)) await this.#store.pins.add(did)
        await this.#store.collectGarbage()
        const result = unchanged(next, state.records)
        if (older) result.rollback = { rev: head.rev, commit: head.cid }
        if (options.check === true) {
          const report = await verifyStoredRepo(this.#store, did, { signal, key: identity.signingKey })
          if (report.error !== undefined) throw report.error
          if (report.repaired.length > 0) log.error('%s: the stored repo at rev %s had %d damaged or missing blocks; refetched them', did, state.rev, report.repaired.length)
          result.repaired = report.repaired.length
          // blobs taken down at the PDS since they were mirrored go too
          await this.#blobs?.checkStored(did, { pds: identity.pds, signal })
          result.seconds = (performance.now() - started) / 1000
        }
        await this.#catchUpBlobs(did, next, signal)
        return await this.#withBlobs(result, identity.pds, progress, options)
      }
    }

    const full = !holdsBlocks(state)
    const release = await this.#store.beginWrite()
    const fetched: FetchedCounts = { local: 0, bitswap: 0, pds: 0 }
    let committed = false
    let done: SyncResult | undefined
    try {
      // a full sync finds nothing it did not bring: counting disk hits would only cost memory
      const view = new SyncView(this.#store, did, this.#cacheBytes, !full)
      // blob references of the blocks as they pass (a full sync remembers what it saw)
      const scan = new BlobScan({ remember: full })
      let bytesIn = 0

      // 1. download: the whole repo, or what changed since the stored rev
      progress.phase = 'download'
      options.onProgress?.({ ...progress })
      const download = this.#client.getRepo(identity.pds, did, { since: full ? undefined : state.rev, signal })
      const counted = (async function * () {
        for await (const chunk of download) {
          bytesIn += chunk.byteLength
          progress.bytes = bytesIn
          yield chunk
        }
      })()
      let root: CID | undefined
      let batch: Block[] = []
      // what the repo can need: blocks not reachable from the commit are bounded,
      // and so is the whole download
      const guard = new DownloadGuard({
        did,
        key: identity.signingKey,
        head: { cid: head.cid, data: head.data },
        url: identity.pds,
        limits: this.#limits,
        read: (cid) => view.cached(cid) ?? batch.find(b => b.cid.equals(cid))?.bytes ?? this.#store.blockstore.getBytesSync(cid)
      })
      /** The download stopped at the allowance of unreachable blocks; the walk fetches the rest. */
      let stopped: DownloadLimitError | undefined
      const flush = async (): Promise<void> => {
        if (batch.length === 0) return
        const blocks = batch
        batch = []
        await this.#store.putBlocks(did, blocks, { signal })
        progress.blocks += blocks.length
        options.onProgress?.({ ...progress })
      }
      try {
        const car = await readCar(counted, { signal })
        root = car.roots[0]
        for await (const block of car.blocks) {
          guard.admit(block, root)
          view.note(block, looksLikeMstNode(block.bytes) || (root !== undefined && block.cid.equals(root)))
          scan.see(block)
          batch.push(block)
          fetched.pds++
          if (batch.length >= this.#writeBatch) await flush()
        }
        await flush()
      } catch (caught) {
        // a CAR cut off mid-structure is a download that broke off (the connection
        // closed early), not a malformed repo
        const err = caught instanceof CarParseError && caught.truncated
          ? new PdsUnavailableError(`com.atproto.sync.getRepo: download interrupted after ${bytesIn} bytes (${caught.message})`, { did, url: identity.pds }, { cause: caught })
          : caught
        // a PDS without getRepo (or without `since`) can still serve getBlocks, and a
        // PDS that cannot be reached at all (the head came from peers) leaves the other
        // mirrors: the walk below fetches everything that is missing. Anything else (a
        // download that broke off midway included) is a failure.
        const unreachable = err instanceof PdsUnavailableError && bytesIn === 0
        // past the allowance of unreachable blocks: stop writing what may be junk; a
        // CAR in CID order (an imported repo) gets here too, and the walk fetches
        // exactly what the tree still lacks
        const overAllowance = err instanceof DownloadLimitError && err.limit.startsWith('unreachable')
        if (!(err instanceof MethodNotImplementedError || err instanceof PdsResponseError || unreachable || overAllowance)) throw err
        await flush()
        if (overAllowance) {
          stopped = err
          log.error('%s: getRepo%s stopped: %s; completing the tree through the block chain', did, full ? '' : '?since', err.message)
        } else {
          log('%s: getRepo%s refused (%s); fetching through the block chain instead', did, full ? '' : '?since', err.message)
        }
      }
      guard.settle()

      // 2. the target: the head, or the CAR's commit when the PDS has moved on since
      let target = { cid: head.cid, rev: head.rev, data: head.data }
      if (root !== undefined && !root.equals(head.cid)) {
        const rootBytes = view.cached(root)
        if (rootBytes !== undefined) {
          try {
            const commit = decodeCommit(rootBytes, root)
            if (commit.did === did && compareRevs(commit.rev, head.rev) > 0) target = { cid: root, rev: commit.rev, data: commit.data }
          } catch (err) {
            log('%s: CAR root %c is not a usable commit: %e', did, root, err)
          }
        }
      }
      if (target.cid.equals(head.cid) && !await view.has(head.cid)) {
        await this.#store.putBlocks(did, [{ cid: head.cid, bytes: head.bytes }], { signal })
        view.note({ cid: head.cid, bytes: head.bytes }, true)
      }

      // 3. whatever the download lacked, through the fetch chain; subtrees the stored
      //    repo holds are complete and not entered
      progress.phase = 'walk'
      options.onProgress?.({ ...progress })
      // a full sync holds every block of the new tree: count them as the walk visits
      // them, rather than walking the tree again afterwards
      const fullDelta = full ? new HoldDelta() : undefined
      const walking = completeMst(view, this.#fetcher, target.data, {
        did,
        pds: identity.pds,
        signal,
        onNode: fullDelta === undefined
          ? undefined
          : (cid, node) => {
              fullDelta.add(cid)
              for (const entry of node.entries) fullDelta.add(entry.value)
            },
        known: full ? undefined : async (cids) => await this.#store.holds.heldBy(did, cids),
        onBlock: (block) => {
          guard.count(block)
          scan.see(block)
          progress.blocks++
          progress.bytes += block.bytes.byteLength
          bytesIn += block.bytes.byteLength
          options.onProgress?.({ ...progress })
        }
      })
      const walk = stopped === undefined
        ? await walking
        : await walking.catch((err: unknown) => {
          if (signal?.aborted === true || stopped === undefined) throw err
          // the download was cut short for what it sent; that is the news
          throw new DownloadLimitError(`${stopped.what}, and the block chain could not complete the tree`, { did, url: stopped.url, limit: stopped.limit, max: stopped.max }, { cause: err })
        })
      for (const [source, n] of Object.entries(walk.fetched)) {
        if (source === 'local' || source === 'bitswap' || source === 'pds') fetched[source] += n
      }
      fetched.local += view.diskHits

      // 4. verify: a full sync the whole repo as stored (signature, DID, MST
      //    structure, every record); an incremental one only what changed
      //    (signature, created nodes, reused subtrees in their new places, new
      //    records: ../repo/verify-incremental.ts), the stored tree having been
      //    verified when it was stored
      progress.phase = 'verify'
      options.onProgress?.({ ...progress })
      const verifyOptions = {
        did,
        key: identity.signingKey,
        signal,
        records: this.#decodeRecords ? 'decode' as const : 'hash' as const,
        // every block was hash-checked before it was stored, a moment ago, and the
        // view hash-checks what it reads back from disk
        trusted: true,
        log: repoLog
      }
      const previous = holdsBlocks(state) && state.records !== undefined && !this.#verifyFull ? state : undefined
      const advance = previous === undefined
        ? undefined
        : await verifyIncremental({ ...verifyOptions, oldData: CID.parse(previous.data), commit: target.cid, blocks: view })
      const records = previous !== undefined && advance !== undefined
        ? (previous.records as number) + advance.recordDelta
        : (await verifyRepo(view, target.cid, verifyOptions)).records

      // 5. advance: holds from the MST diff, state, pin — one batch
      progress.phase = 'commit'
      options.onProgress?.({ ...progress })
      // a full sync holds the whole new repo (counted by the walk); an incremental one
      // changes by the diff of the old and new trees (found by its verification)
      fullDelta?.add(target.cid)
      const before = holdsBlocks(state) ? { commit: CID.parse(state.commit), data: CID.parse(state.data) } : null
      const after = { commit: target.cid, data: target.data }
      const delta = before === null && fullDelta !== undefined
        ? fullDelta
        : advance !== undefined
          ? holdDeltaOf(before, after, advance)
          : await repoHoldDelta(view, before, after, { signal })
      const next: RepoState = {
        did,
        commit: target.cid.toString(),
        rev: target.rev,
        data: target.data.toString(),
        pds: identity.pds,
        handle: identity.handle ?? state?.handle,
        status: 'active',
        syncedAt: new Date().toISOString(),
        records
      }
      // the blob references of the new commit: a change from the old commit's when
      // the index describes it, a recount otherwise (stored before blobs were)
      const described = holdsBlocks(state) ? await this.#store.blobs.describedCommit(did) : undefined
      const incrementalBlobs = holdsBlocks(state) && described === state.commit
      // an incremental verification (from the stored tree, `previous` is `state`) found the record changes already
      const recordOps = advance?.recordOps
      const blobs: BlobDelta = incrementalBlobs
        ? await blobDelta(view, scan, CID.parse(state.data), target.data, { signal, recordOps })
        : await withoutStoredRefs(this.#store, did, await blobDelta(view, scan, null, target.data, { signal }))
      signal?.throwIfAborted()
      const { candidates } = await this.#store.commitRepo(next, delta, {
        pin,
        fresh: full,
        blobs: async (batch) => await this.#store.blobs.planAdvance(did, blobs, target.cid.toString(), batch)
      })
      committed = true
      log('%s: %s sync to rev %s (%d records): %d blocks from pds, %d from bitswap, %d found locally; %d GC candidates',
        did, full ? 'full' : 'incremental', target.rev, records, fetched.pds, fetched.bitswap, fetched.local, candidates)
      done = {
        did,
        rev: target.rev,
        commit: target.cid,
        records,
        changed: true,
        full,
        fetched,
        bytes: bytesIn,
        seconds: (performance.now() - started) / 1000,
        source: head.source,
        identitySource: head.identity.source
      }
    } catch (err) {
      if (!committed) {
        // blocks this attempt stored but no repo holds are collected when writers leave
        await this.#store.discardStaged(did).catch(discardErr => { log.error('%s: discarding staged blocks failed: %e', did, discardErr) })
      }
      throw err
    } finally {
      await release()
    }
    // the blobs of the new commit, once the repo stands (and its GC has run)
    return await this.#withBlobs(done, identity.pds, progress, options)
  }

  /** Runs the blob fetch pass (when the syncer has one) and adds its result. */
  async #withBlobs (result: SyncResult, pds: string, progress: SyncProgress, options: SyncOptions): Promise<SyncResult> {
    if (this.#blobs === undefined) return result
    progress.phase = 'blobs'
    progress.blobs = 0
    progress.blobBytes = 0
    result.blobs = await this.#blobs.fetchWanted(result.did, {
      pds,
      signal: options.signal,
      onProgress: (blobs) => {
        progress.blobs = blobs.blobs
        progress.blobBytes = blobs.blobBytes
        options.onProgress?.({ ...progress })
      }
    })
    return result
  }

  /**
   * An unchanged repo whose blob references describe another commit (stored
   * before blobs were mirrored, or an index lost): recount them from its tree.
   */
  async #catchUpBlobs (did: string, state: RepoState, signal: AbortSignal | undefined): Promise<void> {
    if (await this.#store.blobs.describedCommit(did) === state.commit) return
    const delta = await blobRecount(this.#store, this.#store.blocks, did, CID.parse(state.data), { signal })
    const batch = this.#store.datastore.db.batch()
    try {
      const candidates = await this.#store.blobs.planAdvance(did, delta, state.commit, batch)
      await batch.write()
      log('%s: counted the blob references of rev %s (%d blobs)', did, state.rev, [...delta.values()].filter(e => e.change > 0).length)
      if (candidates > 0) await this.#store.collectGarbage({ force: true })
    } finally {
      await batch.close().catch(() => {})
    }
  }

  /**
   * Records what the host said about the repo, and releases its blocks where the
   * status policy says they go (takedown, deletion); the pin stays either way.
   */
  async #applyStatus (did: string, status: RepoStatus, identity: Identity | undefined, err: Error): Promise<void> {
    const state = await this.#store.getState(did)
    if (state === undefined) {
      log('%s: %s before its first sync (%s); nothing stored', did, status, err.message)
      return
    }
    const next: RepoState = {
      ...state,
      status,
      syncedAt: new Date().toISOString(),
      pds: identity?.pds ?? state.pds,
      error: `${err.name}: ${err.message}`
    }
    if (!statusRules(status).store) {
      const release = await this.#store.beginWrite()
      try {
        const { candidates } = await this.#store.releaseRepo(did, { state: next })
        log('%s: %s; dropped its blocks (%d to check)', did, status, candidates)
      } finally {
        await release()
      }
      return
    }
    await this.#store.putState(next)
    log('%s: %s; keeping the blocks of rev %s', did, status, state.rev)
  }
}

/**
 * Whether a status error came from where `identity` says the account lives: its PDS
 * (a status from any other host is one the account has left), or the DID directory
 * itself (a tombstone carries no PDS URL).
 */
function namesSourceOf (identity: Identity, err: unknown): boolean {
  const said = err instanceof HeadUnavailableError
    ? err.errors.map(({ error }) => error).filter(error => statusOf(error) !== undefined)
    : [err]
  return said.every(error => {
    const url = (error as { url?: unknown }).url
    if (error instanceof DidNotFoundError || typeof url !== 'string') return true
    try {
      return new URL(url).origin === new URL(identity.pds).origin
    } catch {
      return false
    }
  })
}

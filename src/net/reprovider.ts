/**
 * DHT announcements for pinned repos. For every pinned DID whose repo is served
 * here, the node provides
 *
 * - the DID's rendezvous key `rendezvousCid(did)`, so `findMirrors(did)` finds it;
 * - the current commit CID, so a node holding a commit CID (from a firehose, say)
 *   finds who serves that exact commit;
 * - with `provide: 'all'`, every block of the repo (commit, MST nodes, records), so
 *   plain IPFS nodes can route to any single block. Costly: see docs/PROTOCOL.md.
 *
 * When a repo advances the new commit is provided and the old one cancelled; on
 * unpin (or a takedown, suspension, deactivation) every key of the DID is cancelled.
 *
 * "Cancel" is `contentRouting.cancelReprovide(cid)`: kad-dht deletes our own provider
 * record from its datastore, so this node stops republishing the key and stops
 * listing itself when asked for providers. The DHT has no message to retract a
 * record other peers already store: those expire on their own (48 h in kad-dht 16,
 * 24 h to 48 h elsewhere), and a peer that follows one meets a node that answers
 * NotFound on the head exchange and DONT_HAVE on Bitswap.
 *
 * kad-dht republishes our records before they expire by itself; the periodic pass
 * here also re-announces everything (peers that restarted have lost our records)
 * and reconciles kad-dht's stored self-records with what is pinned, so keys of
 * repos unpinned while the node was down, or of old commits, are cancelled too.
 * All work goes through one bounded queue with bounded concurrency.
 */
import { logger } from '@libp2p/logger'
import { Queue } from '@libp2p/utils'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { base32 } from 'multiformats/bases/base32'
import { MissingBlockError, MstInvalidError } from '../errors.ts'
import { rendezvousCid } from '../identity/rendezvous.ts'
import type { ReadonlyBlockStore } from '../repo/block-store.ts'
import { RAW, cidKey, parseCid } from '../repo/cid.ts'
import { decodeCommit } from '../repo/commit.ts'
import { walkMstSteps } from '../repo/mst/walk.ts'
import { isServable } from '../mirror/status-policy.ts'
import { Alarm } from '../blocks/parallel.ts'
import { DidRunner } from '../mirror/runner.ts'
import type { ServableState } from './head-exchange.ts'
import type { PeerId } from '@libp2p/interface'

const log = logger('atmirror:net:reprovider')

/** What gets announced for a pinned repo. */
export type ProvideMode = 'heads' | 'all'

export interface ReproviderComponents {
  /** libp2p's content routing (the DHT). */
  routing: {
    provide: (cid: CID, options?: { signal?: AbortSignal }) => Promise<void>
    cancelReprovide: (cid: CID, options?: { signal?: AbortSignal }) => Promise<void>
  }
  store: {
    pins: { list: () => Promise<string[]>, has: (did: string) => Promise<boolean> }
    getState: (did: string) => Promise<(ServableState & { commit: string }) | undefined>
    /** Needed for `provide: 'all'`: the stored blocks, to list every block of a repo. */
    blocks?: ReadonlyBlockStore
  }
  /**
   * How many peers the DHT routing table holds. A provide made while it is empty
   * reaches nobody (the record stays local), so the reprovider runs another pass
   * soon, backing off, until it has peers.
   */
  routingTableSize?: () => number
  /**
   * kad-dht's datastore and our peer id: lets the periodic pass find self provider
   * records that nothing pinned wants any more (left from before a restart).
   */
  providerRecords?: {
    datastore: { queryKeys: (query: { prefix?: string }, options?: { signal?: AbortSignal }) => AsyncIterable<{ toString: () => string }> | Iterable<{ toString: () => string }> }
    peerId: PeerId
    /** kad-dht's `datastorePrefix`. @default '/dht' */
    prefix?: string
  }
}

export interface ReproviderInit {
  /** `heads`: rendezvous key + commit per DID; `all`: also every block. @default 'heads' */
  provide?: ProvideMode
  /** Time between full re-announcement passes, in ms; 0 turns the periodic pass off. @default 43_200_000 (12 h) */
  intervalMs?: number
  /** Run a pass as soon as the reprovider starts. @default true */
  passOnStart?: boolean
  /** DHT provide/cancel operations at once. @default 8 */
  concurrency?: number
  /** Operations queued before `announce`/`withdraw` wait for room. @default 4096 */
  maxQueue?: number
  /** Time limit of one provide, in ms. @default 60_000 */
  provideTimeoutMs?: number
  /** First delay before another pass when the DHT had no peers, in ms (doubles up to 10 min). @default 5000 */
  retryMs?: number
}

export interface ReproviderStats {
  provided: number
  cancelled: number
  failed: number
  queued: number
  running: number
  /** Keys this node announces now (rendezvous + commits, + blocks in `all` mode). */
  announced: number
  /** Full passes finished since start. */
  passes: number
  /** When the last full pass ended (ISO), if any. */
  lastPassAt?: string
  /** When the next pass is due (ISO): the periodic one, or a retry sooner while the DHT had no peers; none when nothing is scheduled. */
  nextPassAt?: string
}

interface Announced {
  rendezvous: CID
  commit: CID
  /** `all` mode: the repo's blocks (cidKey → CID). */
  blocks?: Map<string, CID>
}

type Op = { kind: 'provide' | 'cancel', cid: CID }

/** Keeps the DHT told about the pinned repos. Register it in the node as a `Startable`. */
export class Reprovider {
  readonly mode: ProvideMode
  readonly #routing: ReproviderComponents['routing']
  readonly #store: ReproviderComponents['store']
  readonly #records: ReproviderComponents['providerRecords']
  readonly #intervalMs: number
  readonly #passOnStart: boolean
  readonly #maxQueue: number
  readonly #provideTimeoutMs: number
  readonly #routingTableSize: (() => number) | undefined
  readonly #retryMs: number
  #retryDelay: number
  /** Something was announced while the DHT had no peers: another pass is due soon. */
  #unheard = false
  readonly #announced = new Map<string, Announced>()
  /** How many announced DIDs use each rendezvous / commit key now (cidKey → count). */
  readonly #keyRefs = new Map<string, number>()
  /** `all` mode: how many announced DIDs hold each block (blocks can be shared). */
  readonly #blockHolders = new Map<string, number>()
  /** DHT operations, `concurrency` at once. */
  readonly #ops: Queue<void>
  /** Operations waiting in `#ops`, by key: a later one on the same key only changes the kind. */
  readonly #pending = new Map<string, Op>()
  /** One announce/withdraw per DID at a time, in call order (no global limit: the DHT work is bounded by `#ops`). */
  readonly #perDid = new DidRunner()
  #stats = { provided: 0, cancelled: 0, failed: 0 }
  #lastPassAt: string | undefined
  #passes = 0
  /** The next pass: the periodic one, or a retry sooner while the DHT had no peers. */
  readonly #next = new Alarm(() => { this.#runPass() })
  #pass: Promise<void> | undefined
  #stopping = new AbortController()
  #started = false

  constructor (components: ReproviderComponents, init: ReproviderInit = {}) {
    this.#routing = components.routing
    this.#store = components.store
    this.#records = components.providerRecords
    this.mode = init.provide ?? 'heads'
    this.#intervalMs = init.intervalMs ?? 43_200_000
    this.#passOnStart = init.passOnStart ?? true
    this.#ops = new Queue({ concurrency: Math.max(1, init.concurrency ?? 8) })
    this.#maxQueue = Math.max(1, init.maxQueue ?? 4096)
    this.#provideTimeoutMs = init.provideTimeoutMs ?? 60_000
    this.#routingTableSize = components.routingTableSize
    this.#retryMs = init.retryMs ?? 5000
    this.#retryDelay = this.#retryMs
    if (this.mode === 'all' && this.#store.blocks === undefined) throw new TypeError("provide: 'all' needs store.blocks")
  }

  isStarted (): boolean {
    return this.#started
  }

  start (): void {
    if (this.#started) return
    this.#started = true
    this.#stopping = new AbortController()
    if (this.#passOnStart) this.#runPass()
    else this.#schedule()
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    this.#next.clear()
    this.#stopping.abort(new DOMException('the reprovider is stopping', 'AbortError'))
    // what is still queued finds the reprovider stopped and does nothing
    this.#pending.clear()
    await this.#pass?.catch(() => {})
    await this.onIdle()
  }

  stats (): ReproviderStats {
    const announced = this.#announced.size * 2 + this.#blockHolders.size
    const due = this.#next.due
    const nextPassAt = due === undefined ? undefined : new Date(due).toISOString()
    return { ...this.#stats, queued: this.#ops.queued, running: this.#ops.running, announced, passes: this.#passes, lastPassAt: this.#lastPassAt, nextPassAt }
  }

  /** The keys announced for `did` now, if any. */
  announcedFor (did: string): { rendezvous: CID, commit: CID, blocks: number } | undefined {
    const entry = this.#announced.get(did)
    return entry === undefined ? undefined : { rendezvous: entry.rendezvous, commit: entry.commit, blocks: entry.blocks?.size ?? 0 }
  }

  /** Resolves when nothing is queued or running. */
  async onIdle (): Promise<void> {
    await this.#ops.onIdle()
  }

  /**
   * Announces `did`'s current state: its rendezvous key and commit (and in `all`
   * mode its blocks), cancelling the previous commit (and blocks no longer in the
   * repo). A DID that is not pinned or not servable here is withdrawn instead.
   * Resolves once the operations are queued, not when the DHT has them.
   */
  async announce (did: string): Promise<void> {
    await this.#serial(did, async () => {
      const state = await this.#store.getState(did)
      const pinned = await this.#store.pins.has(did)
      if (!pinned || !isServable(state)) {
        await this.#withdraw(did)
        return
      }
      await this.#announce(did, parseCid(state.commit))
      if (this.#routingTableSize?.() === 0 && !this.#unheard) {
        this.#unheard = true
        if (this.#pass === undefined) this.#schedule(this.#retryDelay)
      }
    })
  }

  /** Stops announcing every key of `did` (unpin). */
  async withdraw (did: string): Promise<void> {
    await this.#serial(did, async () => { await this.#withdraw(did) })
  }

  /**
   * One full pass: announce every pinned, servable repo again and cancel self
   * provider records nothing pinned wants any more. The periodic timer runs this.
   */
  async reprovideAll (options: { signal?: AbortSignal } = {}): Promise<void> {
    const signal = options.signal === undefined ? this.#stopping.signal : AbortSignal.any([options.signal, this.#stopping.signal])
    const started = Date.now()
    this.#unheard = this.#routingTableSize?.() === 0
    const dids = await this.#store.pins.list()
    for (const did of dids) {
      signal.throwIfAborted()
      await this.#serial(did, async () => {
        const state = await this.#store.getState(did)
        if (!isServable(state)) {
          await this.#withdraw(did)
          return
        }
        await this.#announce(did, parseCid(state.commit), { again: true })
      })
    }
    const pinned = new Set(dids)
    for (const did of [...this.#announced.keys()]) {
      if (!pinned.has(did)) await this.withdraw(did)
    }
    await this.#cancelStale(signal)
    await this.onIdle()
    this.#passes++
    this.#lastPassAt = new Date().toISOString()
    log('reprovide pass: %d repos, %d keys, %d ms', dids.length, this.#keyRefs.size + this.#blockHolders.size, Date.now() - started)
  }

  #ref (cid: CID): void {
    const key = cidKey(cid)
    this.#keyRefs.set(key, (this.#keyRefs.get(key) ?? 0) + 1)
  }

  #unref (cid: CID): void {
    const key = cidKey(cid)
    const refs = (this.#keyRefs.get(key) ?? 1) - 1
    if (refs > 0) this.#keyRefs.set(key, refs)
    else this.#keyRefs.delete(key)
  }

  /** Whether something announced right now wants `key` (read at the moment of asking, not at the start of a pass). */
  #wanted (key: string): boolean {
    return this.#keyRefs.has(key) || this.#blockHolders.has(key)
  }

  async #announce (did: string, commit: CID, options: { again?: boolean } = {}): Promise<void> {
    const previous = this.#announced.get(did)
    const rendezvous = previous?.rendezvous ?? rendezvousCid(did)
    const entry: Announced = { rendezvous, commit, blocks: previous?.blocks }
    this.#announced.set(did, entry)
    if (previous === undefined) {
      this.#ref(rendezvous)
      this.#ref(commit)
    } else if (!previous.commit.equals(commit)) {
      this.#ref(commit)
      this.#unref(previous.commit)
    }
    if (previous === undefined || options.again === true) await this.#enqueue({ kind: 'provide', cid: rendezvous })
    if (previous === undefined || options.again === true || !previous.commit.equals(commit)) await this.#enqueue({ kind: 'provide', cid: commit })
    if (previous !== undefined && !previous.commit.equals(commit)) await this.#enqueue({ kind: 'cancel', cid: previous.commit })
    if (this.mode !== 'all') return

    const before = previous?.blocks ?? new Map<string, CID>()
    const after = new Map<string, CID>()
    for await (const cid of repoCids(this.#store.blocks as ReadonlyBlockStore, commit, this.#stopping.signal)) {
      const key = cidKey(cid)
      after.set(key, cid)
      if (!before.has(key)) {
        const holders = this.#blockHolders.get(key) ?? 0
        this.#blockHolders.set(key, holders + 1)
        if (holders === 0 || options.again === true) await this.#enqueue({ kind: 'provide', cid })
      } else if (options.again === true) {
        await this.#enqueue({ kind: 'provide', cid })
      }
    }
    for (const [key, cid] of before) {
      if (!after.has(key)) await this.#releaseBlock(key, cid)
    }
    entry.blocks = after
  }

  async #withdraw (did: string): Promise<void> {
    const entry = this.#announced.get(did)
    if (entry === undefined) return
    this.#announced.delete(did)
    this.#unref(entry.rendezvous)
    this.#unref(entry.commit)
    await this.#enqueue({ kind: 'cancel', cid: entry.rendezvous })
    await this.#enqueue({ kind: 'cancel', cid: entry.commit })
    for (const [key, cid] of entry.blocks ?? []) await this.#releaseBlock(key, cid)
    log('withdrew %s', did)
  }

  async #releaseBlock (key: string, cid: CID): Promise<void> {
    const holders = (this.#blockHolders.get(key) ?? 1) - 1
    if (holders > 0) {
      this.#blockHolders.set(key, holders)
      return
    }
    this.#blockHolders.delete(key)
    await this.#enqueue({ kind: 'cancel', cid })
  }

  /**
   * Cancels kad-dht self records (left from earlier runs) that nothing pinned wants.
   * What is wanted is asked per record as the scan reaches it: a DID pinned or
   * advanced while the pass runs, whose provide has already left the queue, has a
   * fresh record here that must not be taken for a stale one.
   */
  async #cancelStale (signal: AbortSignal): Promise<void> {
    if (this.#records === undefined) return
    const { datastore, peerId } = this.#records
    const self = peerId.toString()
    const prefix = `${this.#records.prefix ?? '/dht'}/provider/`
    let stale = 0
    for await (const key of datastore.queryKeys({ prefix }, { signal })) {
      const parts = key.toString().split('/')
      if (parts.at(-1) !== self) continue
      const encoded = parts.at(-2)
      if (encoded === undefined) continue
      let cid: CID
      try {
        // kad-dht keys records by the multihash in base32 without the multibase prefix
        cid = CID.createV1(RAW, Digest.decode(base32.baseDecode(encoded.toLowerCase())))
      } catch {
        continue
      }
      const k = cidKey(cid)
      if (this.#wanted(k)) continue
      if (this.#pendingOp(k)?.kind === 'provide') continue
      stale++
      await this.#enqueue({ kind: 'cancel', cid })
    }
    if (stale > 0) log('cancelling %d stale self provider records', stale)
  }

  #pendingOp (key: string): Op | undefined {
    return this.#pending.get(key)
  }

  /** Queues an operation, waiting for room when the queue is full; a later op on the same key replaces an earlier queued one. */
  async #enqueue (op: Op): Promise<void> {
    const stopping = this.#stopping.signal
    const key = cidKey(op.cid)
    while (this.#started && !stopping.aborted) {
      const queued = this.#pending.get(key)
      if (queued !== undefined) {
        queued.kind = op.kind
        return
      }
      if (this.#ops.queued < this.#maxQueue) break
      await this.#ops.onSizeLessThan(this.#ops.running + this.#maxQueue, { signal: stopping }).catch(() => {})
    }
    if (!this.#started || stopping.aborted) return
    this.#pending.set(key, op)
    this.#ops.add(async () => {
      if (this.#pending.get(key) === op) this.#pending.delete(key)
      if (!stopping.aborted) await this.#run(op)
    }).catch(err => { log.error('%s of %c failed - %e', op.kind, op.cid, err) })
  }

  async #run (op: Op): Promise<void> {
    const signal = AbortSignal.any([this.#stopping.signal, AbortSignal.timeout(this.#provideTimeoutMs)])
    try {
      if (op.kind === 'provide') {
        await this.#routing.provide(op.cid, { signal })
        this.#stats.provided++
        log.trace('provided %c', op.cid)
      } else {
        await this.#routing.cancelReprovide(op.cid, { signal })
        this.#stats.cancelled++
        log.trace('cancelled %c', op.cid)
      }
    } catch (err) {
      if (this.#stopping.signal.aborted) return
      this.#stats.failed++
      log.error('%s of %c failed - %e', op.kind, op.cid, err)
    }
  }

  async #serial (did: string, fn: () => Promise<void>): Promise<void> {
    await this.#perDid.run(did, fn, { slot: false })
  }

  #runPass (): void {
    if (!this.#started) return
    this.#next.clear()
    this.#pass = this.reprovideAll()
      .catch(err => {
        if (!this.#stopping.signal.aborted) log.error('reprovide pass failed - %e', err)
      })
      .finally(() => {
        this.#pass = undefined
        if (this.#unheard) {
          // never later than the periodic pass would have run anyway
          const delay = this.#intervalMs > 0 ? Math.min(this.#retryDelay, this.#intervalMs) : this.#retryDelay
          log('the DHT had no peers: another pass in %d ms', delay)
          this.#schedule(delay)
          this.#retryDelay = Math.min(this.#retryDelay * 2, 600_000)
        } else {
          this.#retryDelay = this.#retryMs
          this.#schedule()
        }
      })
  }

  #schedule (delay?: number): void {
    if (!this.#started) return
    const ms = delay ?? this.#intervalMs
    if (ms > 0) this.#next.set(ms)
  }
}

/**
 * Every block CID of the stored repo at `commit`: the commit, each MST node and each
 * record (once). Reads only the commit and the MST nodes (through the repo's one
 * MST traversal, unchecked: the tree was verified when stored); records are named,
 * not read. A block missing from the store, or a node linked twice, ends the
 * listing early (a repo being replaced).
 */
async function * repoCids (store: ReadonlyBlockStore, commit: CID, signal: AbortSignal): AsyncGenerator<CID> {
  const commitBytes = await store.get(commit, { signal })
  if (commitBytes === undefined) return
  yield commit
  const seen = new Set<string>()
  try {
    for await (const batch of walkMstSteps(store, decodeCommit(commitBytes, commit).data, { signal, check: false })) {
      for (const step of batch) {
        if ('node' in step) {
          yield step.cid
          continue
        }
        const key = cidKey(step.cid)
        if (step.cid.code === RAW || seen.has(key)) continue
        seen.add(key)
        yield step.cid
      }
    }
  } catch (err) {
    if (!(err instanceof MissingBlockError) && !(err instanceof MstInvalidError)) throw err
    log('listing the blocks of %c ended early - %e', commit, err)
  }
}

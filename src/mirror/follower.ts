/**
 * Live following: one `com.atproto.sync.subscribeRepos` stream per host that holds
 * a pinned repo (hosts come from the stored states and the DID documents), plus the
 * relays the operator names. Events for a pinned DID queue for a job of that DID
 * in the per-DID runner (runner.ts), so an event never races a re-check or another
 * event of its repo, and events of different repos are applied in parallel. A job
 * takes every event of its DID queued when it starts, and a run of `#commit`s among
 * them is applied as one write: a backlog (a replay from a cursor, a busy account)
 * costs one store round per run, not per event, while a lone live event is applied
 * at once. Events for DIDs that are not pinned are dropped once their frame is
 * parsed, before any block is read.
 *
 * - `#commit`: applied without getRepo when it verifies and follows on from the
 *   stored repo, otherwise the repo is synced from its PDS (commit-event.ts says
 *   which is which); an event that does not verify is refused and logged.
 * - `#sync`: checked (signature, not older than stored), then the repo is synced.
 * - `#identity`: the DID document is fetched again (the resolver's cache purged), a
 *   `repo:identity` hook fires, and the repo is synced when its PDS or handle
 *   changed; the hosts followed are recomputed (an account that moved is followed
 *   to its new host).
 * - `#account`: a status from the DID's own PDS goes through the status policy at
 *   once (a takedown or deletion releases the blocks in that job); from a relay,
 *   or `active`, the repo is synced and the PDS answers for itself.
 * - `#info OutdatedCursor`, and a first connection with no stored cursor: every
 *   repo of the host is synced (events may have been missed).
 *
 * Cursors: each host's is the highest seq with every event up to it handled, kept in
 * the datastore (`/atmirror/cursors/<host>`) after the event's advance. A crash
 * replays from there: the replayed commits are not newer than what is stored and
 * are ignored, so nothing is skipped and nothing applied twice.
 *
 * A stream that breaks off is reopened with exponential backoff and full jitter.
 * A host that keeps failing (or has no firehose) is left to the re-check scheduler,
 * which polls repos whose host is not followed at its usual interval and followed
 * repos only every `followedIntervalMs` (a slow safety net).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { logger } from '@libp2p/logger'
import { TypedEventEmitter } from '@libp2p/interface'
import { FirehoseConnectionError, FirehoseEventRefusedError, RepoDeactivatedError, RepoNotFoundError, RepoSuspendedError, RepoTakendownError } from '../errors.ts'
import type { Identity, IdentityResolver } from '../identity/resolver.ts'
import { parseFrame, type AccountEvent, type CommitEvent, type IdentityEvent, type SyncEvent } from '../repo/firehose.ts'
import { applyCommitEvents, checkSyncEvent, hostOrigin, type RunOutcome } from './commit-event.ts'
import type { DidRunner } from './runner.ts'
import { PRIORITY } from './scheduler.ts'
import type { MirrorStore, RepoState } from './store.ts'
import type { RepoStatus } from './status-policy.ts'
import type { RepoSyncer } from './sync.ts'

const log = logger('atmirror:mirror:follow')

const CURSOR_PREFIX = '/atmirror/cursors/'
/**
 * Most events one job takes: a run is reported once all of it is verified and
 * written, so this bounds how long its first event waits (about 2 ms per event).
 */
const MAX_RUN = 64
const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()

/** What the follower opens streams with (EventStreamClient, src/http/event-stream.ts). */
export interface EventStreams {
  subscribe: (url: string, options: { signal?: AbortSignal, onOpen?: () => void }) => AsyncIterable<Uint8Array>
}

export interface FollowerComponents {
  store: MirrorStore
  identity: IdentityResolver
  syncer: RepoSyncer
  runner: DidRunner
  streams: EventStreams
  /** Syncs the repo from its PDS; runs inside the DID's runner job (the node's sync, which reports it). */
  resync: (did: string, signal: AbortSignal) => Promise<unknown>
}

export interface FollowerInit {
  /** Relays to follow as well (http(s) or ws(s) URLs); their events are taken for any pinned DID. @default [] */
  relays?: readonly string[]
  /** Failed connections in a row after which a host is reported as `polling`. @default 5 */
  fallbackAfter?: number
  /** First reconnect delay; doubles per failure, with full jitter. @default 1000 */
  backoffMinMs?: number
  /** Longest reconnect delay. @default 300_000 */
  backoffMaxMs?: number
  /** Events of one host being handled at once (the stream waits beyond it). @default 256 */
  maxInFlight?: number
  /** How long a followed repo goes without a poll (the safety net). @default 3_600_000 */
  followedIntervalMs?: number
}

/** One followed host, as `status` shows it. */
export interface SubscriptionStatus {
  /** The host's origin (`https://pds.example.com`). */
  host: string
  relay: boolean
  /** `connecting`, `connected`, `backoff` (waiting to reconnect), `polling` (kept failing: the scheduler covers its repos). */
  state: 'connecting' | 'connected' | 'backoff' | 'polling'
  /** The persisted cursor: every event up to it is handled. */
  cursor?: number
  /** The last seq received. */
  seq?: number
  lastEventAt?: string
  /** Milliseconds from the last handled event's `time` to when it was handled. */
  lagMs?: number
  /** Connection failures in a row. */
  failures: number
  error?: string
}

/** What one handled event reports (for metrics: lag; for the node: events). */
export interface FollowedEvent {
  host: string
  seq: number
  did: string
  type: 'commit' | 'sync' | 'identity' | 'account'
  /** The event's rev (`#commit`, `#sync`). */
  rev?: string
  /** `applied`, `ignored`, `resync`, `refused`, `status`. */
  outcome: string
  /** From the event's `time` to now, in ms. */
  lagMs: number
  /** The new state when a commit was applied. */
  state?: RepoState
  /** The event itself when it was applied (the public server relays it as verified). */
  event?: CommitEvent | SyncEvent
  error?: Error
}

export interface FollowerEvents {
  'follow:event': CustomEvent<FollowedEvent>
  /** An `#identity` refreshed a DID document (a hook for whoever keeps identity data). */
  'follow:identity': CustomEvent<{ did: string, identity: Identity }>
  /** A host's stream failed or was refused (a malformed or oversized frame, an error frame, a lost connection). */
  'follow:error': CustomEvent<{ host: string, error: Error }>
}

interface Pending {
  seq: number
  done: boolean
}

type RepoEvent = CommitEvent | SyncEvent | IdentityEvent | AccountEvent

/** A DID's events, in stream order, for one job of its runner lane. */
interface Lane {
  events: Array<{ msg: RepoEvent, entry: Pending }>
  /** The job has taken them: later events go to a new lane. */
  started: boolean
}

class Subscription {
  readonly host: string
  readonly relay: boolean
  readonly controller = new AbortController()
  state: SubscriptionStatus['state'] = 'connecting'
  cursor: number | undefined
  seq: number | undefined
  lastEventAt: string | undefined
  lagMs: number | undefined
  failures = 0
  error: string | undefined
  readonly pending: Pending[] = []
  /** Each DID's events waiting for its next runner job (one job takes them all). */
  readonly lanes = new Map<string, Lane>()
  readonly inFlight = new Set<Promise<void>>()
  /** Events received and not yet handled. */
  queued = 0
  /** The cursor last written, and whether a write is under way. */
  written: number | undefined
  writing: Promise<void> | undefined
  loop: Promise<void> | undefined

  constructor (host: string, relay: boolean) {
    this.host = host
    this.relay = relay
  }
}

export class Follower extends TypedEventEmitter<FollowerEvents> {
  readonly #c: FollowerComponents
  readonly #relays: string[]
  readonly #fallbackAfter: number
  readonly #backoffMinMs: number
  readonly #backoffMaxMs: number
  readonly #maxInFlight: number
  readonly followedIntervalMs: number
  readonly #subs = new Map<string, Subscription>()
  /** Pinned DID → the origin of its host. */
  readonly #hostOf = new Map<string, string>()
  readonly #lastEventAt = new Map<string, string>()
  /** When each repo was last brought up to date by an event or a sync. */
  readonly #checkedAt = new Map<string, number>()
  #running = false
  #refreshing: Promise<void> | undefined
  #refreshAgain = false

  constructor (components: FollowerComponents, init: FollowerInit = {}) {
    super()
    this.#c = components
    this.#relays = (init.relays ?? []).map(hostOrigin)
    this.#fallbackAfter = init.fallbackAfter ?? 5
    this.#backoffMinMs = init.backoffMinMs ?? 1000
    this.#backoffMaxMs = init.backoffMaxMs ?? 300_000
    this.#maxInFlight = Math.max(1, init.maxInFlight ?? 256)
    this.followedIntervalMs = init.followedIntervalMs ?? 3_600_000
  }

  /** Opens a stream per host of the pinned repos and per relay. */
  async start (): Promise<void> {
    if (this.#running) return
    this.#running = true
    await this.refresh()
  }

  /** Closes every stream and waits for the events being handled. */
  async stop (): Promise<void> {
    this.#running = false
    await this.#refreshing?.catch(() => {})
    const subs = [...this.#subs.values()]
    this.#subs.clear()
    for (const sub of subs) sub.controller.abort(new DOMException('the follower is stopping', 'AbortError'))
    await Promise.allSettled(subs.map(async sub => { await sub.loop }))
  }

  /**
   * Recomputes the hosts to follow from the pins (after a pin, an unpin, a move):
   * opens streams to new hosts and closes those no pinned repo lives on any more.
   */
  async refresh (): Promise<void> {
    if (!this.#running) return
    if (this.#refreshing !== undefined) {
      this.#refreshAgain = true
      await this.#refreshing
      return
    }
    this.#refreshing = (async () => {
      do {
        this.#refreshAgain = false
        await this.#recompute()
      } while (this.#refreshAgain && this.#running)
    })()
    try {
      await this.#refreshing
    } finally {
      this.#refreshing = undefined
    }
  }

  /** Each followed host's stream. */
  status (): SubscriptionStatus[] {
    return [...this.#subs.values()].map(sub => ({
      host: sub.host,
      relay: sub.relay,
      state: sub.state,
      cursor: sub.written,
      seq: sub.seq,
      lastEventAt: sub.lastEventAt,
      lagMs: sub.lagMs,
      failures: sub.failures,
      error: sub.error
    }))
  }

  /** When the last event of `did` was handled. */
  lastEventAt (did: string): string | undefined {
    return this.#lastEventAt.get(did)
  }

  /** Notes that `did` was brought up to date (a sync finished): its poll can wait. */
  checked (did: string): void {
    this.#checkedAt.set(did, Date.now())
  }

  /**
   * Whether the scheduler may skip re-checking `did` now: its host's stream is
   * connected and the repo was brought up to date within `followedIntervalMs`.
   */
  followed (did: string): boolean {
    const host = this.#hostOf.get(did)
    const connected = (host !== undefined && this.#subs.get(host)?.state === 'connected') ||
      this.#relays.some(relay => this.#subs.get(relay)?.state === 'connected')
    if (!connected) return false
    const at = this.#checkedAt.get(did)
    return at !== undefined && Date.now() - at < this.followedIntervalMs
  }

  async #recompute (): Promise<void> {
    const { store, identity } = this.#c
    const dids = await store.pins.list()
    const wanted = new Map<string, boolean>(this.#relays.map(relay => [relay, true]))
    this.#hostOf.clear()
    for (const did of dids) {
      let pds: string | undefined
      try {
        pds = (await identity.resolve(did, { verifyHandle: false })).pds
      } catch (err) {
        pds = (await store.getState(did))?.pds
        log('%s: cannot resolve its PDS (%e); following %s', did, err, pds ?? 'nothing')
      }
      if (pds === undefined) continue
      const host = hostOrigin(pds)
      this.#hostOf.set(did, host)
      if (!wanted.has(host)) wanted.set(host, false)
    }
    if (!this.#running) return
    for (const [host, sub] of this.#subs) {
      if (wanted.has(host)) continue
      log('no pinned repo lives on %s any more; closing its stream', host)
      this.#subs.delete(host)
      sub.controller.abort(new DOMException('host no longer followed', 'AbortError'))
    }
    for (const [host, relay] of wanted) {
      if (this.#subs.has(host)) continue
      const sub = new Subscription(host, relay)
      this.#subs.set(host, sub)
      sub.loop = this.#run(sub)
    }
  }

  async #run (sub: Subscription): Promise<void> {
    const signal = sub.controller.signal
    while (!signal.aborted) {
      const cursor = await this.#loadCursor(sub.host).catch(() => undefined)
      sub.cursor = cursor
      sub.written = cursor
      const url = streamUrl(sub.host, cursor)
      if (sub.state !== 'polling') sub.state = 'connecting'
      let opened = false
      try {
        const stream = this.#c.streams.subscribe(url, {
          signal,
          onOpen: () => {
            opened = true
            sub.state = 'connected'
            sub.failures = 0
            sub.error = undefined
            log('following %s from %s', sub.host, cursor === undefined ? 'now' : `cursor ${cursor}`)
            // with no cursor, what happened before now is not replayed: check every repo once
            if (cursor === undefined) this.#resyncHost(sub, 'first connection, no cursor')
          }
        })
        for await (const frame of stream) await this.#frame(sub, frame, url)
        log('%s closed its stream', sub.host)
      } catch (err) {
        if (signal.aborted) break
        sub.error = `${(err as Error).name}: ${(err as Error).message}`
        log.error('stream of %s failed - %e', sub.host, err)
        this.safeDispatchEvent('follow:error', { detail: { host: sub.host, error: err as Error } })
      }
      // what was received is handled before the cursor is read again
      await Promise.allSettled([...sub.inFlight])
      await this.#persist(sub)
      if (signal.aborted) break
      sub.failures = opened ? 1 : sub.failures + 1
      if (sub.failures >= this.#fallbackAfter && sub.state !== 'polling') {
        log.error('%s failed %d times in a row; its repos are polled until it comes back', sub.host, sub.failures)
        sub.state = 'polling'
      } else if (sub.state !== 'polling') {
        sub.state = 'backoff'
      }
      const ceiling = Math.min(this.#backoffMaxMs, this.#backoffMinMs * 2 ** Math.min(sub.failures - 1, 20))
      await sleep(Math.random() * ceiling, undefined, { signal }).catch(() => {})
    }
    await Promise.allSettled([...sub.inFlight])
  }

  /** One frame: parsed (a malformed one ends the connection), then handed to its DID's runner lane. */
  async #frame (sub: Subscription, bytes: Uint8Array, url: string): Promise<void> {
    const msg = parseFrame(bytes, { url })
    switch (msg.type) {
      case 'error':
        if (msg.error === 'FutureCursor') await this.#deleteCursor(sub.host)
        throw new FirehoseConnectionError(`the host sent an error frame: ${msg.error}${msg.message === undefined ? '' : ` (${msg.message})`}`, { url })
      case 'info':
        log('%s: #info %s %s', sub.host, msg.name, msg.message ?? '')
        if (msg.name === 'OutdatedCursor') this.#resyncHost(sub, '#info OutdatedCursor')
        return
      case 'unknown':
        if (msg.seq !== undefined) this.#track(sub, msg.seq).done = true
        return
    }
    sub.seq = msg.seq
    sub.lastEventAt = new Date().toISOString()
    const did = msg.did
    const entry = this.#track(sub, msg.seq)
    if (!this.#hostOf.has(did)) {
      entry.done = true
      this.#advance(sub)
      return
    }
    while (sub.queued >= this.#maxInFlight) await Promise.race(sub.inFlight)
    sub.queued++
    const lane = sub.lanes.get(did)
    if (lane !== undefined && !lane.started && lane.events.length < MAX_RUN) {
      lane.events.push({ msg, entry })
      return
    }
    this.#schedule(sub, did, { events: [{ msg, entry }], started: false }, url)
  }

  /**
   * Queues a job in the DID's runner lane for `lane`'s events. When it starts it
   * takes every event queued by then, so a burst of one repo's commits (a replay,
   * a busy account) is applied as one run (commit-event.ts).
   */
  #schedule (sub: Subscription, did: string, lane: Lane, url: string): void {
    sub.lanes.set(did, lane)
    const job: Promise<void> = this.#c.runner.run(did, async (signal) => {
      lane.started = true
      if (sub.lanes.get(did) === lane) sub.lanes.delete(did)
      await this.#handleLane(sub, lane.events.map(({ msg }) => msg), url, signal)
    }, { signal: sub.controller.signal, priority: PRIORITY.request })
      .catch((err: unknown) => { if (!sub.controller.signal.aborted) log.error('%s: handling seq %d to %d failed - %e', did, lane.events[0].msg.seq, lane.events[lane.events.length - 1].msg.seq, err) })
      .finally(() => {
        sub.inFlight.delete(job)
        sub.queued -= lane.events.length
        // aborted (stopping, host dropped): not handled, so the cursor stays before them
        if (sub.controller.signal.aborted) return
        for (const { entry } of lane.events) entry.done = true
        this.#advance(sub)
      })
    sub.inFlight.add(job)
  }

  /** One DID's events in order: each run of `#commit`s together, the others one by one. */
  async #handleLane (sub: Subscription, events: RepoEvent[], url: string, signal: AbortSignal): Promise<void> {
    let i = 0
    while (i < events.length) {
      const msg = events[i]
      if (msg.type !== 'commit') {
        await this.#handle(sub, msg, url, signal)
        i++
        continue
      }
      let end = i + 1
      while (end < events.length && events[end].type === 'commit') end++
      i += await this.#commits(sub, events.slice(i, end) as CommitEvent[], url, signal)
    }
  }

  #report (sub: Subscription, msg: RepoEvent, outcome: string, extra: Partial<FollowedEvent> = {}): void {
    const lagMs = Math.max(0, Date.now() - Date.parse(msg.time))
    if (Number.isFinite(lagMs)) sub.lagMs = lagMs
    this.#lastEventAt.set(msg.did, new Date().toISOString())
    this.safeDispatchEvent('follow:event', { detail: { host: sub.host, seq: msg.seq, did: msg.did, type: msg.type, rev: 'rev' in msg ? msg.rev : undefined, outcome, lagMs: Number.isFinite(lagMs) ? lagMs : 0, ...extra } })
  }

  /**
   * A run of `#commit`s (applyCommitEvents), reported one by one; a resync or a
   * refusal ends the run. Returns how many events were handled (at least one).
   */
  async #commits (sub: Subscription, events: CommitEvent[], url: string, signal: AbortSignal): Promise<number> {
    const did = events[0].did
    let run: RunOutcome
    try {
      run = await this.#c.syncer.exclusive(did, async () => await applyCommitEvents(this.#c, events, { signal, url, relay: sub.relay }))
    } catch (err) {
      if (signal.aborted) throw err
      // the write failed: none of the run was applied, and the repo is synced instead
      log.error('%s: applying #commit seq %d to %d from %s failed - %e', did, events[0].seq, events[events.length - 1].seq, sub.host, err)
      for (const msg of events) this.#report(sub, msg, 'refused', { error: err as Error })
      await this.#resync(did, signal)
      return events.length
    }
    const { outcomes } = run
    let applied: RepoState | undefined
    for (let k = 0; k < outcomes.length; k++) {
      const msg = events[k]
      const outcome = outcomes[k]
      if (outcome.outcome === 'applied') {
        applied = outcome.state
        this.#report(sub, msg, 'applied', { state: outcome.state, event: msg })
      } else if (outcome.outcome === 'ignored') {
        log('%s: #commit seq=%d rev=%s ignored: %s', did, msg.seq, msg.rev, outcome.why)
        this.#report(sub, msg, 'ignored')
      }
    }
    if (applied !== undefined) {
      this.checked(did)
      // the blobs the new records reference, once the repo stands (as after a sync)
      if (run.blobsAdded) {
        await this.#c.syncer.fetchBlobs(did, { pds: applied.pds, signal }).catch((err: unknown) => {
          if (!signal.aborted) log.error('%s: fetching blobs after seq %d failed - %e', did, events[outcomes.length - 1].seq, err)
        })
      }
    }
    const last = outcomes[outcomes.length - 1]
    const msg = events[outcomes.length - 1]
    if (last.outcome === 'resync') {
      log('%s: #commit seq=%d rev=%s: %s; syncing the repo', did, msg.seq, msg.rev, last.why)
      await this.#resync(did, signal)
      this.#report(sub, msg, 'resync')
    } else if (last.outcome === 'refused') {
      log.error('%s: refused #commit seq=%d from %s - %e', did, msg.seq, sub.host, last.error)
      this.#report(sub, msg, 'refused', { error: last.error })
    }
    return outcomes.length
  }

  /** One `#sync`, `#identity` or `#account`. */
  async #handle (sub: Subscription, msg: SyncEvent | IdentityEvent | AccountEvent, url: string, signal: AbortSignal): Promise<void> {
    const did = msg.did
    const options = { signal, url, relay: sub.relay }
    try {
      if (msg.type === 'sync') {
        const outcome = await this.#c.syncer.exclusive(did, async () => await checkSyncEvent(this.#c, msg, options))
        if (outcome.outcome === 'ignored') {
          log('%s: #sync seq=%d rev=%s ignored: %s', did, msg.seq, msg.rev, outcome.why)
          this.#report(sub, msg, 'ignored')
        } else {
          log('%s: #sync seq=%d rev=%s: %s; syncing the repo', did, msg.seq, msg.rev, outcome.outcome === 'resync' ? outcome.why : 'applied')
          await this.#resync(did, signal)
          this.#report(sub, msg, 'resync')
        }
      } else if (msg.type === 'identity') {
        await this.#identityEvent(sub, msg, url, signal)
        this.#report(sub, msg, 'identity')
      } else {
        this.#report(sub, msg, await this.#accountEvent(sub, msg, url, signal))
      }
    } catch (err) {
      if (signal.aborted) throw err
      log.error('%s: refused #%s seq=%d from %s - %e', did, msg.type, msg.seq, sub.host, err)
      this.#report(sub, msg, 'refused', { error: err as Error })
    }
  }

  async #identityEvent (sub: Subscription, msg: IdentityEvent, url: string, signal: AbortSignal): Promise<void> {
    const did = msg.did
    const state = await this.#c.store.getState(did)
    const identity = await this.#c.identity.refresh(did, { signal, verifyHandle: false })
    if (!sub.relay && hostOrigin(identity.pds) !== sub.host && (state?.pds === undefined || hostOrigin(state.pds) !== sub.host)) {
      throw new FirehoseEventRefusedError('#identity for a DID the host does not serve', { did, url, reason: 'host' })
    }
    this.safeDispatchEvent('follow:identity', { detail: { did, identity } })
    if (this.#hostOf.get(did) !== hostOrigin(identity.pds)) {
      log('%s moved to %s; following it there', did, identity.pds)
      await this.refresh()
    }
    if (state === undefined || hostOrigin(state.pds ?? identity.pds) !== hostOrigin(identity.pds)) {
      log('%s: #identity: its PDS is %s (stored: %s); syncing', did, identity.pds, state?.pds ?? 'nothing')
      await this.#resync(did, signal)
    } else if (identity.handle !== undefined && state.handle !== identity.handle) {
      const handle = identity.handle
      await this.#c.syncer.exclusive(did, async () => {
        const current = await this.#c.store.getState(did)
        if (current !== undefined) await this.#c.store.putState({ ...current, handle })
      })
      log('%s: #identity: handle %s (was %s)', did, handle, state.handle ?? 'none')
    }
  }

  async #accountEvent (sub: Subscription, msg: AccountEvent, url: string, signal: AbortSignal): Promise<string> {
    const did = msg.did
    // a status counts only from the host the DID document names now
    const identity = await this.#c.identity.refresh(did, { signal, verifyHandle: false })
    const fromPds = hostOrigin(identity.pds) === sub.host
    if (!fromPds && this.#hostOf.get(did) !== hostOrigin(identity.pds)) {
      log('%s: #account from %s, but its PDS is now %s; following it there', did, sub.host, identity.pds)
      await this.refresh()
      await this.#resync(did, signal)
      return 'resync'
    }
    const status = msg.active ? undefined : accountStatus(msg.status)
    if (fromPds && !sub.relay && status !== undefined) {
      await this.#c.syncer.recordStatus(did, status, identity, statusError(status, did, url, msg.status))
      return 'status'
    }
    if (!msg.active && status === undefined) {
      log('%s: #account status %s; nothing to change', did, msg.status ?? '(none)')
      return 'ignored'
    }
    if (msg.active && (await this.#c.store.getState(did))?.status === 'active') return 'ignored'
    // active again, or a status a relay reports: the PDS answers for itself
    await this.#resync(did, signal)
    return 'resync'
  }

  async #resync (did: string, signal: AbortSignal): Promise<void> {
    try {
      await this.#c.resync(did, signal)
      this.checked(did)
    } catch (err) {
      if (signal.aborted) throw err
      // the node's sync logs and reports its own failures
    }
  }

  /** Syncs every pinned repo on the host (events may have been missed), each as its DID's job. */
  #resyncHost (sub: Subscription, why: string): void {
    const dids = [...this.#hostOf].filter(([, host]) => sub.relay || host === sub.host).map(([did]) => did)
    if (dids.length === 0) return
    log('%s: %s; checking its %d repos', sub.host, why, dids.length)
    for (const did of dids) {
      this.#c.runner.run(did, async (signal) => { await this.#resync(did, signal) }, { signal: sub.controller.signal, priority: PRIORITY.check })
        .catch(() => {})
    }
  }

  #track (sub: Subscription, seq: number): Pending {
    const entry = { seq, done: false }
    sub.pending.push(entry)
    return entry
  }

  /** Moves the cursor over every handled event at the front, and writes it. */
  #advance (sub: Subscription): void {
    let cursor: number | undefined
    let n = 0
    while (n < sub.pending.length && sub.pending[n].done) cursor = sub.pending[n++].seq
    if (n === 0) return
    sub.pending.splice(0, n)
    sub.cursor = cursor
    void this.#persist(sub)
  }

  /** Writes the cursor; writes asked for while one runs are folded into the next. */
  async #persist (sub: Subscription): Promise<void> {
    while (sub.writing !== undefined) await sub.writing
    if (sub.cursor === undefined || sub.cursor === sub.written) return
    const cursor = sub.cursor
    sub.writing = this.#c.store.datastore.db.put(CURSOR_PREFIX + encodeURIComponent(sub.host), utf8.encode(String(cursor)))
      .then(() => { sub.written = cursor }, (err: unknown) => { log.error('%s: writing cursor %d failed - %e', sub.host, cursor, err) })
      .finally(() => { sub.writing = undefined })
    await sub.writing
  }

  async #loadCursor (host: string): Promise<number | undefined> {
    const value = await this.#c.store.datastore.db.get(CURSOR_PREFIX + encodeURIComponent(host))
    if (value === undefined) return undefined
    const n = Number(fromUtf8.decode(value))
    return Number.isSafeInteger(n) && n >= 0 ? n : undefined
  }

  async #deleteCursor (host: string): Promise<void> {
    await this.#c.store.datastore.db.del(CURSOR_PREFIX + encodeURIComponent(host))
  }
}

/** The subscribeRepos URL of a host, from `cursor` when there is one. */
export function streamUrl (host: string, cursor?: number): string {
  const url = new URL('/xrpc/com.atproto.sync.subscribeRepos', host)
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
  if (cursor !== undefined) url.searchParams.set('cursor', String(cursor))
  return url.toString()
}

/** The stored status an `#account` status stands for; undefined for ones that change nothing here (`desynchronized`, `throttled`, unknown). */
function accountStatus (status: string | undefined): RepoStatus | undefined {
  switch (status) {
    case 'takendown': return 'takendown'
    case 'suspended': return 'suspended'
    case 'deactivated': return 'deactivated'
    case 'deleted': return 'deleted'
    default: return undefined
  }
}

function statusError (status: RepoStatus, did: string, url: string, said: string | undefined): Error {
  const message = `#account: ${said ?? status}`
  switch (status) {
    case 'takendown': return new RepoTakendownError(message, { did, url })
    case 'suspended': return new RepoSuspendedError(message, { did, url })
    case 'deactivated': return new RepoDeactivatedError(message, { did, url })
    default: return new RepoNotFoundError(message, { did, url })
  }
}

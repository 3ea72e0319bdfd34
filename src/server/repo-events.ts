/**
 * `com.atproto.sync.subscribeRepos` from the mirror: its own sequence of what it
 * verified and stored, so a relay can crawl a mirror as a host.
 *
 * | event       | when |
 * | ----------- | ---- |
 * | `#commit`   | a commit the node followed live and applied: the event it verified, as it came (same blocks, ops, `prevData`, rev, since), under the mirror's seq |
 * | `#sync`     | a repo brought to a new commit any other way (a `getRepo`-based sync): its blocks are the CAR of the commit block |
 * | `#identity` | the node refreshed a DID document from an `#identity` it followed |
 * | `#account`  | a repo's stored status changed: `active` and, when not, the status |
 *
 * Events are kept in memory: the last `windowSize` (default 10,000) are replayed to
 * a subscriber with a `cursor` inside that window. A cursor older than the window
 * gets `#info` `OutdatedCursor` and the window from its start; a cursor past the last
 * seq is refused (`FutureCursor`). Seqs start from the microsecond clock when the node
 * starts, so they keep growing across restarts (a cursor from before a restart is
 * then simply outdated). A subscriber that falls more than the window behind the
 * live sequence is closed (`ConsumerTooSlow`) rather than buffered without bound.
 */
import { logger } from '@libp2p/logger'
import { ErrorFrame, type Server as XrpcServer } from '@atproto/xrpc-server'
import type { TypedEventTarget } from '@libp2p/interface'
import type { Identity } from '../identity/resolver.ts'
import type { FollowedEvent } from '../mirror/follower.ts'
import type { SyncResult } from '../mirror/sync.ts'
import type { MirrorStore } from '../mirror/store.ts'
import { statusRules } from '../mirror/status-policy.ts'
import { writeCar } from '../repo/car.ts'

const log = logger('atmirror:http:events')

const NSID = 'com.atproto.sync.subscribeRepos'

/** One event as it goes out (`$type` names the message; the frame header carries it). */
export type RepoEvent = Record<string, unknown> & { $type: string, seq: number }

export interface RepoEventLogInit {
  /** Events kept for replay. @default 10000 */
  windowSize?: number
}

/** The mirror's own sequence of repo events, with a bounded replay window. */
export class RepoEventLog {
  readonly #window: number
  readonly #events: RepoEvent[] = []
  #seq: number
  #waiters: Array<() => void> = []

  constructor (init: RepoEventLogInit = {}) {
    this.#window = init.windowSize ?? 10_000
    this.#seq = Date.now() * 1000
  }

  /** The last seq handed out. */
  get seq (): number {
    return this.#seq
  }

  get windowSize (): number {
    return this.#window
  }

  /** Appends an event (its `seq` set here) and wakes the subscribers. */
  append (type: string, body: Record<string, unknown>): RepoEvent {
    const event: RepoEvent = { $type: `${NSID}#${type}`, seq: ++this.#seq, ...body }
    this.#events.push(event)
    if (this.#events.length > this.#window) this.#events.splice(0, this.#events.length - this.#window)
    const waiters = this.#waiters
    this.#waiters = []
    for (const wake of waiters) wake()
    return event
  }

  /** Events with a seq above `cursor`, oldest first; `outdated` when some were already dropped. */
  after (cursor: number): { events: RepoEvent[], outdated: boolean } {
    const first = this.#events[0]
    if (first === undefined) return { events: [], outdated: false }
    const outdated = cursor < first.seq - 1
    // seqs in the window go up by one: the first event past the cursor is found by subtraction
    const start = Math.max(0, Math.floor(cursor) + 1 - first.seq)
    return { events: this.#events.slice(start), outdated }
  }

  /** Resolves at the next append, or when `signal` aborts. */
  async next (signal: AbortSignal): Promise<void> {
    if (signal.aborted) return
    await new Promise<void>(resolve => {
      const done = (): void => {
        signal.removeEventListener('abort', done)
        resolve()
      }
      this.#waiters.push(done)
      signal.addEventListener('abort', done, { once: true })
    })
  }

  /** A subscriber's events: the replay from `cursor` (if given), then live ones. */
  async * subscribe (cursor: number | undefined, signal: AbortSignal): AsyncGenerator<RepoEvent | ErrorFrame | Record<string, unknown>> {
    let last = cursor ?? this.#seq
    if (cursor !== undefined && cursor > this.#seq) {
      yield new ErrorFrame({ error: 'FutureCursor', message: `cursor ${cursor} is past the last seq ${this.#seq}` })
      return
    }
    if (cursor !== undefined && this.after(cursor).outdated) {
      yield { $type: `${NSID}#info`, name: 'OutdatedCursor', message: `events before seq ${this.#events[0]?.seq ?? this.#seq} are no longer kept (window ${this.#window})` }
    }
    while (!signal.aborted) {
      const { events, outdated } = this.after(last)
      if (outdated && last !== cursor) {
        yield new ErrorFrame({ error: 'ConsumerTooSlow', message: `fell more than ${this.#window} events behind` })
        return
      }
      for (const event of events) {
        yield event
        last = event.seq
      }
      if (events.length === 0) await this.next(signal)
    }
  }
}

/** The node's events the log is fed from (MirrorNode fits). */
export interface RepoEventsComponents {
  store: Pick<MirrorStore, 'getState' | 'getVerified' | 'listStates'>
  events: TypedEventTarget<{
    'repo:synced': CustomEvent<SyncResult>
    'repo:error': CustomEvent<{ did: string, error: Error }>
    'repo:identity': CustomEvent<{ did: string, identity: Identity }>
    'firehose:event': CustomEvent<FollowedEvent>
  }>
}

/**
 * Feeds `log` from the node's events and registers `subscribeRepos` on the server.
 * Returns the registration for {@link PublicServer.mountXrpc}.
 */
export function subscribeReposApi (components: RepoEventsComponents, log_: RepoEventLog = new RepoEventLog()): (server: XrpcServer) => void {
  const { store, events } = components
  const statuses = new Map<string, string>()
  const time = (): string => new Date().toISOString()
  const known = store.listStates().then(states => { for (const state of states) if (!statuses.has(state.did)) statuses.set(state.did, state.status) })
    .catch((err: unknown) => { log.error('reading the stored statuses failed - %e', err) })

  /** An `#account` when the stored status of `did` is not the one last announced. */
  const account = async (did: string): Promise<void> => {
    await known
    const state = await store.getState(did)
    if (state === undefined) return
    const before = statuses.get(did)
    statuses.set(did, state.status)
    if (before === undefined ? state.status === 'active' : before === state.status) return
    const active = statusRules(state.status).serve
    log_.append('account', { did, time: time(), active, ...(active ? {} : { status: state.status }) })
  }

  // a commit followed live goes out as it was verified
  events.addEventListener('firehose:event', (evt) => {
    const detail = evt.detail
    const commit = detail.event
    if (detail.outcome !== 'applied' || commit?.type !== 'commit') return
    log_.append('commit', {
      repo: commit.did,
      rev: commit.rev,
      since: commit.since,
      commit: commit.commit,
      blocks: commit.blocks,
      ops: commit.ops.map(op => ({ action: op.action, path: op.path, cid: op.cid ?? null, ...(op.prev === undefined || op.prev === null ? {} : { prev: op.prev }) })),
      ...(commit.prevData === undefined ? {} : { prevData: commit.prevData }),
      rebase: false,
      tooBig: false,
      blobs: [],
      time: commit.time
    })
  })
  // any other advance (a getRepo-based sync, a #sync followed): the new commit as a #sync
  events.addEventListener('repo:synced', (evt) => {
    const result = evt.detail
    void (async () => {
      await account(result.did)
      if (!result.changed || result.source.startsWith('firehose:')) return
      const bytes = await store.getVerified(result.commit, { did: result.did })
      if (bytes === undefined) {
        log.error('no #sync for %s rev %s: its commit %c is not stored', result.did, result.rev, result.commit)
        return
      }
      const parts: Uint8Array[] = []
      for await (const part of writeCar([result.commit], [{ cid: result.commit, bytes }])) parts.push(part)
      log_.append('sync', { did: result.did, rev: result.rev, blocks: Buffer.concat(parts), time: time() })
    })().catch((err: unknown) => { log.error('announcing %s failed - %e', result.did, err) })
  })
  events.addEventListener('repo:error', (evt) => {
    account(evt.detail.did).catch((err: unknown) => { log.error('announcing the status of %s failed - %e', evt.detail.did, err) })
  })
  events.addEventListener('repo:identity', (evt) => {
    const { did, identity } = evt.detail
    log_.append('identity', { did, ...(identity.handle === undefined ? {} : { handle: identity.handle }), time: time() })
  })

  return (server) => {
    server.streamMethod(NSID, async function * ({ params, signal }) {
      const cursor = params.cursor === undefined ? undefined : Number(params.cursor)
      yield * log_.subscribe(cursor, signal)
    })
  }
}


/**
 * The mirror node: the one place that creates concrete classes and wires them.
 *
 * `createMirrorNode` takes the data-directory lock, opens the store, and builds the
 * identity resolver, head resolver and syncer, plus (unless turned off) libp2p with
 * Helia/Bitswap and the control API. `start()` brings up the network and the API and
 * starts the re-check scheduler (mirror/scheduler.ts). Every job on one repo (a
 * re-check, `sync`, `pin`, `unpin`) goes through the per-DID runner
 * (mirror/runner.ts): one at a time per DID, `concurrency` syncs at once overall.
 * `stop()` undoes it all in order and releases the lock.
 *
 * Background work logs and goes on; the request paths (`pin`, `sync`, …: the
 * {@link MirrorApi} the control API serves) throw. Domain events (`repo:synced`, `repo:error`, `repo:pinned`, `repo:unpinned`)
 * are typed events on `node.events`.
 */
import { logger } from '@libp2p/logger'
import { TypedEventEmitter } from '@libp2p/interface'
import { AtmirrorError, BlockNotFoundError, ConfigError, NotPinnedError, RepoNotMirroredError } from './errors.ts'
import { AtprotoIdentityResolver, type IdentityResolver } from './identity/resolver.ts'
import type { BlockBroker } from './blocks/broker.ts'
import { BlockFetcher } from './blocks/fetcher.ts'
import { LocalBroker } from './blocks/local.ts'
import { PdsBroker, PdsClient, type PdsClientInit } from './blocks/pds.ts'
import type { HeadResolver } from './head/head-resolver.ts'
import { PdsHeadResolver } from './head/pds-head-resolver.ts'
import { CompositeHeadResolver } from './head/composite-head-resolver.ts'
import { datastoreHolderIndex } from './mirror/gc.ts'
import { acquireDataDirLock, type DataDirLock } from './mirror/lock.ts'
import { MirrorStore, type RepoState } from './mirror/store.ts'
import { MirrorIdentityStore } from './mirror/identity-store.ts'
import type { PlcLogKeeper } from './identity/plc-logs.ts'
import type { BlockstoreKind } from './mirror/blockstore.ts'
import { RepoSyncer, type SyncResult } from './mirror/sync.ts'
import type { DownloadLimits } from './mirror/download-guard.ts'
import { DidRunner } from './mirror/runner.ts'
import { PRIORITY, RepoScheduler } from './mirror/scheduler.ts'
import { BlockRepairer, type StoredRepoReport } from './mirror/repair.ts'
import { BlobMirror, type BlobMirrorInit } from './mirror/blobs.ts'
import { BlobFetcher, BrokerBlobSource, LocalBlobSource, PdsBlobSource } from './blocks/blob-fetch.ts'
import { isServable } from './mirror/status-policy.ts'
import { BlobNotMirroredError } from './errors.ts'
import { Follower, type EventStreams, type FollowedEvent, type FollowerInit } from './mirror/follower.ts'
import { EventStreamClient } from './http/event-stream.ts'
import type { Identity } from './identity/resolver.ts'
import type { BitswapBrokerInit } from './blocks/bitswap-broker.ts'
import type { MirrorFinderInit } from './net/mirrors.ts'
import type { MirrorNetwork, NetworkInit } from './net/network.ts'
import type { PeerServices, PeerServicesInit } from './net/peer-services.ts'
import type { GetBlockOptions, MirrorApi, MirrorApiOptions, MirrorSyncOptions, MirrorsResult, NodeStatus, PeersResult, PinResult, PinnedRepo, UnpinResult } from './mirror/api.ts'
import { exportStoredRepo } from './mirror/export.ts'
import { CID } from './repo/cid.ts'
import { ControlApi } from './server/control-api.ts'
import type { NodeMetrics, NodeMetricsInit } from './server/metrics.ts'
import type { PublicServer, PublicServerInit } from './server/public-server.ts'
import type { CrawlRequester } from './server/request-crawl.ts'
import { removeDaemonInfo, writeDaemonInfo } from './server/daemon-info.ts'
import pkg from '../package.json' with { type: 'json' }

const log = logger('atmirror:node')

/** The atmirror version (from package.json). */
export const VERSION: string = pkg.version

export interface MirrorNodeInit {
  /** The data directory (created if missing). */
  dataDir: string
  /**
   * The blockstore kind of a new data directory; an existing one keeps its own
   * (BlockstoreKindError when this names another). @default the recorded kind, else 'level'
   */
  blockstore?: BlockstoreKind
  /**
   * The PLC directory.
   *
   * @default 'https://plc.directory'
   */
  plcUrl?: string
  /**
   * An XRPC service that answers `com.atproto.identity.resolveHandle`, tried when
   * DNS and HTTPS handle resolution find nothing (a PDS, say).
   *
   * @default undefined (DNS and HTTPS only)
   */
  handleResolverUrl?: string
  /**
   * Accept `http://localhost` PDS and did:web endpoints (test networks).
   *
   * @default false
   */
  allowHttpLocalhost?: boolean
  /**
   * Allow outbound HTTP to private, loopback and link-local addresses (a PDS or
   * PLC on a private network; see src/http/policy.ts).
   *
   * @default false
   */
  allowPrivateNetwork?: boolean
  /**
   * The peer-to-peer network (libp2p + Helia + Bitswap), or `false` for none
   * (one-shot CLI commands, `--offline`).
   *
   * @default {} (public mode)
   */
  network?: (NetworkInit & { bitswap?: BitswapBrokerInit, mirrors?: MirrorFinderInit, services?: PeerServicesInit }) | false
  /**
   * The control API, or `false` for none.
   *
   * @default { port: 5176, host: '127.0.0.1' }
   */
  api?: { port?: number, host?: string } | false
  /**
   * Prometheus metrics in a registry of the node's own (`node.metrics`; the table of
   * names is in src/server/metrics.ts), served as `/metrics` by the public HTTP
   * server; an object turns them on with its settings. Off, prom-client is not even
   * loaded.
   *
   * @default true when `http` is on, else false
   */
  metrics?: boolean | Pick<NodeMetricsInit, 'usageMaxAgeMs'>
  /**
   * The public read-only HTTP server (src/server/public-server.ts: XRPC sync and
   * repo reads, the trustless gateway), or `false` for none.
   *
   * @default false
   */
  http?: PublicServerInit | false
  /**
   * Announce the public HTTP server to these relays (`requestCrawl`, at start and
   * every 20 minutes; src/server/request-crawl.ts) under `hostname`, the name they
   * reach it by. Needs `http`.
   */
  requestCrawl?: { relays: string[], hostname: string, intervalMs?: number }
  /**
   * Milliseconds between re-checks of every pinned repo; 0 checks only at start.
   *
   * @default 60000
   */
  intervalMs?: number
  /**
   * Re-check every pinned repo when the node starts.
   *
   * @default true
   */
  checkOnStart?: boolean
  /**
   * Repos synced at once by the scheduler.
   *
   * @default 4
   */
  concurrency?: number
  /**
   * Bounds of PDS downloads: timeouts, the idle timeout and the throughput floor
   * of `getRepo` (see {@link PdsClientInit} for each default).
   *
   * @default {}
   */
  pds?: Omit<PdsClientInit, 'fetch'>
  /**
   * What one sync may download: size limits and the allowance of blocks not
   * reachable from the commit (src/mirror/download-guard.ts).
   *
   * @default 20 million blocks, 8 GiB, 10,000 unreachable blocks or 16 MiB
   */
  downloadLimits?: DownloadLimits
  /**
   * How old a pinned did:plc's stored operation log may get before a sync fetches it
   * again from the directory (an `#identity` event always does).
   *
   * @default 600000
   */
  identityRefreshMs?: number
  /**
   * The fetch used for PLC, handles and PDS calls (it then decides which addresses
   * may be reached). @default the address policy's (src/http/policy.ts)
   */
  fetch?: typeof globalThis.fetch
  /**
   * Blob mirroring (src/mirror/blobs.ts): the cap on one blob and downloads at
   * once, or `false` to fetch no blobs (a pin can turn them off too).
   *
   * @default { maxBlobSize: 100 MiB, concurrency: 4 }
   */
  blobs?: false | Omit<BlobMirrorInit, 'enabled'>
  /**
   * Live following (mirror/follower.ts): `subscribeRepos` on the host of every
   * pinned repo and on `relays`, while the node runs; `false` for polling only.
   * `maxFrameBytes` bounds one event frame; `streams` replaces the WebSocket client.
   *
   * @default false (the daemon turns it on)
   */
  follow?: (FollowerInit & { maxFrameBytes?: number, streams?: EventStreams }) | false
}

/** The events a node emits. */
export interface MirrorNodeEvents {
  /** A sync finished (changed or not). */
  'repo:synced': CustomEvent<SyncResult>
  /** A sync failed; the stored state is unchanged. */
  'repo:error': CustomEvent<{ did: string, error: Error }>
  'repo:pinned': CustomEvent<{ did: string }>
  'repo:unpinned': CustomEvent<{ did: string }>
  /** A firehose event was handled (its outcome and lag: the hook for metrics). */
  'firehose:event': CustomEvent<FollowedEvent>
  /** A followed host's stream failed (malformed or oversized frame, error frame, lost connection). */
  'firehose:error': CustomEvent<{ host: string, error: Error }>
  /** An `#identity` event refreshed a DID document. */
  'repo:identity': CustomEvent<{ did: string, identity: Identity }>
}

interface RepoRuntime {
  lastCheckAt?: string
  error?: string
}

/** A running (or runnable) mirror node. Create it with {@link createMirrorNode}. */
export class MirrorNode implements MirrorApi {
  readonly dataDir: string
  readonly store: MirrorStore
  readonly identity: IdentityResolver
  readonly heads: HeadResolver
  readonly syncer: RepoSyncer
  /** Undefined when created with `network: false`. */
  readonly network: MirrorNetwork | undefined
  /** Undefined when created with `api: false`. */
  readonly api: ControlApi | undefined
  /** The public HTTP server; undefined unless created with `http`. */
  readonly http: PublicServer | undefined
  /** Head exchange, peer heads, DHT announcements; undefined without a network. */
  readonly p2p: PeerServices | undefined
  /** The node's Prometheus metrics; undefined unless created with `metrics: true`. */
  readonly metrics: NodeMetrics | undefined
  /** The verified did:plc logs of pinned DIDs, and the other identity records kept with them. */
  readonly plcLogs: PlcLogKeeper | undefined
  readonly identityStore: MirrorIdentityStore | undefined
  readonly #identityRefreshMs: number
  readonly events = new TypedEventEmitter<MirrorNodeEvents>()
  readonly #lock: DataDirLock
  readonly #runner: DidRunner
  readonly #scheduler: RepoScheduler
  readonly #follower: Follower | undefined
  readonly #streams: (EventStreams & { close?: () => Promise<void> }) | undefined
  readonly #repos = new Map<string, RepoRuntime>()
  #stopping = new AbortController()
  readonly #crawl: CrawlRequester | undefined
  #state: 'stopped' | 'starting' | 'running' | 'stopping' = 'stopped'
  #startedAt: string | undefined
  #closed = false

  constructor (init: {
    dataDir: string, lock: DataDirLock, store: MirrorStore, identity: IdentityResolver, heads: HeadResolver, syncer: RepoSyncer,
    network?: MirrorNetwork, api?: { port?: number, host?: string }, http?: PublicServer, intervalMs: number, checkOnStart: boolean, concurrency: number,
    p2p?: PeerServices, metrics?: NodeMetrics, plcLogs?: PlcLogKeeper, identityStore?: MirrorIdentityStore, identityRefreshMs?: number, follow?: FollowerInit, streams?: EventStreams & { close?: () => Promise<void> }, crawl?: CrawlRequester
  }) {
    this.dataDir = init.dataDir
    this.#lock = init.lock
    this.store = init.store
    this.identity = init.identity
    this.heads = init.heads
    this.syncer = init.syncer
    this.network = init.network
    this.p2p = init.p2p
    this.metrics = init.metrics
    this.metrics?.observe(this.events)
    this.plcLogs = init.plcLogs
    this.identityStore = init.identityStore
    this.#identityRefreshMs = init.identityRefreshMs ?? 600_000
    if (this.p2p !== undefined) {
      const p2p = this.p2p
      // what the DHT is told follows the stored state: new commit, unpin, takedown
      for (const name of ['repo:synced', 'repo:error', 'repo:unpinned'] as const) {
        this.events.addEventListener(name, (evt) => { p2p.repoChanged(evt.detail.did) })
      }
    }
    this.api = init.api === undefined ? undefined : new ControlApi({ target: this }, { dataDir: init.dataDir, ...init.api })
    this.http = init.http
    this.#crawl = init.crawl
    this.#runner = new DidRunner({ concurrency: init.concurrency })
    this.#streams = init.streams
    if (init.streams !== undefined) {
      const follower = this.#follower = new Follower({
        store: this.store,
        identity: this.identity,
        syncer: this.syncer,
        runner: this.#runner,
        streams: init.streams,
        resync: async (did, signal) => await this.#sync(did, signal, { request: false, pin: false })
      }, init.follow)
      follower.addEventListener('follow:event', (evt) => {
        const { detail } = evt
        if (detail.state !== undefined) {
          const state = detail.state
          this.#runtime(detail.did).lastCheckAt = new Date().toISOString()
          this.events.safeDispatchEvent('repo:synced', {
            detail: { did: state.did, rev: state.rev, commit: CID.parse(state.commit), records: state.records ?? 0, changed: true, full: false, fetched: { local: 0, bitswap: 0, pds: 0 }, bytes: 0, seconds: 0, source: `firehose:${detail.host}` }
          })
        }
        this.events.safeDispatchEvent('firehose:event', { detail })
      })
      follower.addEventListener('follow:identity', (evt) => {
        this.events.safeDispatchEvent('repo:identity', { detail: evt.detail })
        // the DID's operation log changed too (a did:plc): fetch, verify and keep it now
        void this.#keepPlcLog(evt.detail.did, this.#stopping.signal, true)
      })
      follower.addEventListener('follow:error', (evt) => { this.events.safeDispatchEvent('firehose:error', { detail: evt.detail }) })
      for (const name of ['repo:pinned', 'repo:unpinned'] as const) {
        this.events.addEventListener(name, () => { follower.refresh().catch(err => { log.error('following the hosts of the pinned repos failed - %e', err) }) })
      }
      this.events.addEventListener('repo:synced', (evt) => { follower.checked(evt.detail.did) })
      this.metrics?.watchFirehose(() => follower.status())
    }
    this.#scheduler = new RepoScheduler({
      pins: this.store.pins,
      runner: this.#runner,
      check: async (did, { signal }) => {
        try {
          await this.#sync(did, signal, { request: false, pin: false })
        } catch (err) {
          // unpinned while its re-check was queued: nothing to report, nothing failed
          if ((err as Error).name !== 'NotPinnedError') throw err
          return
        }
        // blobs taken down at the PDS since they were stored (a bounded round, paced by the blob mirror)
        await this.syncer.recheckBlobs(did, { signal })
      },
      skip: (did) => this.#follower?.followed(did) ?? false,
      light: async (did, { signal }) => await this.syncer.recheckBlobs(did, { signal })
    }, { intervalMs: init.intervalMs, checkOnStart: init.checkOnStart })
  }

  /** `stopped`, `starting`, `running` or `stopping`. */
  get state (): string {
    return this.#state
  }

  /** Starts the network, the control API and the scheduler. */
  async start (): Promise<void> {
    if (this.#closed) throw new AtmirrorError('node was stopped; create a new one')
    if (this.#state !== 'stopped') return
    this.#state = 'starting'
    this.#stopping = new AbortController()
    try {
      await this.network?.start()
      await this.p2p?.start()
      await this.api?.start()
      await this.http?.start()
      this.#startedAt = new Date().toISOString()
      if (this.api !== undefined) await writeDaemonInfo(this.dataDir, this.#daemonInfo())
    } catch (err) {
      this.#state = 'running' // let stop() unwind whatever did start
      await this.stop().catch(stopErr => { log.error('cleanup after failed start failed - %e', stopErr) })
      throw err
    }
    this.#state = 'running'
    log('node running: data=%s network=%s api=%s http=%s', this.dataDir, this.network?.mode ?? 'off', this.api?.url ?? 'off', this.http?.url ?? 'off')
    this.#scheduler.start()
    this.#follower?.start().catch(err => { log.error('starting to follow the hosts failed - %e', err) })
    this.#crawl?.start()
  }

  /**
   * Stops everything, in order: scheduler, in-flight syncs (aborted, then awaited),
   * control API, Helia/libp2p, store, lock. Safe to call more than once and on a node
   * that was never started (one-shot use).
   */
  async stop (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#state = 'stopping'
    const errors: unknown[] = []
    const step = async (what: string, fn: () => Promise<unknown> | undefined): Promise<void> => {
      try {
        await fn()
      } catch (err) {
        log.error('stopping %s failed - %e', what, err)
        errors.push(err)
      }
    }
    this.#stopping.abort(new DOMException('the node is stopping', 'AbortError'))
    this.#crawl?.stop()
    await step('syncs', async () => {
      await this.#scheduler.stop()
      await this.#follower?.stop()
      await this.#runner.stop()
      await this.#streams?.close?.()
    })
    await step('public HTTP server', async () => await this.http?.stop())
    await step('control API', async () => await this.api?.stop())
    await step('daemon.json', async () => { if (this.api !== undefined) await removeDaemonInfo(this.dataDir) })
    await step('peer services', async () => await this.p2p?.stop())
    await step('network', async () => await this.network?.stop())
    await step('metrics', async () => await this.metrics?.stop())
    await step('store', async () => { await this.store.close() })
    await step('lock', async () => { await this.#lock.release() })
    this.#state = 'stopped'
    log('node stopped')
    if (errors.length === 1) throw errors[0]
    if (errors.length > 1) throw new AggregateError(errors, 'node did not stop cleanly')
  }

  async [Symbol.asyncDispose] (): Promise<void> {
    await this.stop()
  }

  /**
   * Pins a repo (DID or handle) and mirrors it once. The identity is resolved first,
   * so a wrong handle pins nothing; if the first mirror fails the pin stays (the
   * scheduler retries it) and the error is thrown.
   */
  async pin (didOrHandle: string, options: MirrorSyncOptions = {}): Promise<PinResult> {
    const signal = this.#signal(options.signal)
    const identity = await this.identity.resolve(didOrHandle, { signal })
    await this.#blobSetting(identity.did, options.blobs)
    await this.store.pins.add(identity.did)
    this.events.safeDispatchEvent('repo:pinned', { detail: { did: identity.did } })
    const sync = await this.#request(identity.did, signal, { pin: true, onProgress: options.onProgress, check: options.check })
    return { did: identity.did, handle: identity.handle, pinned: true, sync }
  }

  /**
   * Stores a pin's blob setting: as asked, or, for a repo not pinned yet, on (a
   * setting left by a failed `mirror --no-blobs` does not outlive it).
   */
  async #blobSetting (did: string, blobs: boolean | undefined): Promise<void> {
    if (blobs !== undefined) await this.store.blobs.setOff(did, !blobs)
    else if (!await this.store.pins.has(did)) await this.store.blobs.setOff(did, false)
  }

  /**
   * Mirrors a repo once and pins it as part of storing it: a failure leaves nothing
   * pinned and nothing stored (what `atmirror mirror` does; {@link pin} pins first).
   */
  async mirror (didOrHandle: string, options: MirrorSyncOptions = {}): Promise<SyncResult> {
    const signal = this.#signal(options.signal)
    const identity = await this.identity.resolve(didOrHandle, { signal })
    await this.#blobSetting(identity.did, options.blobs)
    return await this.#request(identity.did, signal, { pin: true, onProgress: options.onProgress, check: options.check })
  }

  /** Pins a repo without mirroring it (the scheduler or `sync` will); returns its DID. */
  async addPin (didOrHandle: string, options: MirrorApiOptions = {}): Promise<string> {
    const identity = await this.identity.resolve(didOrHandle, { signal: this.#signal(options.signal) })
    await this.store.pins.add(identity.did)
    this.events.safeDispatchEvent('repo:pinned', { detail: { did: identity.did } })
    return identity.did
  }

  /**
   * Unpins a repo (DID, or the handle it was stored under) and drops its blocks. A
   * sync of the repo that is running or waiting is aborted first, so a slow host
   * does not hold the unpin.
   */
  async unpin (didOrHandle: string, options: MirrorApiOptions = {}): Promise<UnpinResult> {
    const signal = this.#signal(options.signal)
    const did = await this.#pinnedDid(didOrHandle, signal)
    this.#runner.abort(did, new DOMException(`unpinned; did=${did}`, 'AbortError'))
    await this.#runner.run(did, async () => {
      await this.store.unpinRepo(did)
      await this.identityStore?.forget(did)
    }, { signal, slot: false })
    this.#repos.delete(did)
    this.#scheduler.forget(did)
    this.events.safeDispatchEvent('repo:unpinned', { detail: { did } })
    return { did, pinned: false }
  }

  /** Syncs one pinned repo (DID, or the handle it was stored under) now. */
  async sync (didOrHandle: string, options: MirrorSyncOptions = {}): Promise<SyncResult> {
    const signal = this.#signal(options.signal)
    const pinned = await this.#pinnedDid(didOrHandle, signal)
    return await this.#request(pinned, signal, { pin: false, onProgress: options.onProgress, check: options.check })
  }

  /**
   * Checks stored repos end to end, like fsck (every block hash-checked, the commit
   * signature against the DID's current key, the MST structure, every record), and
   * refetches damaged or missing blocks through the fetch chain: `did`'s repo (DID
   * or a stored handle), or every stored one. A repo whose key cannot be resolved is
   * checked without its signature (`signature: 'unchecked'`).
   */
  async verify (didOrHandle?: string, options: { signal?: AbortSignal, repair?: boolean } = {}): Promise<StoredRepoReport[]> {
    const signal = this.#signal(options.signal)
    const states = await this.store.listStates()
    let dids = states.map(state => state.did)
    if (didOrHandle !== undefined) {
      const handle = didOrHandle.replace(/^@/, '').toLowerCase()
      const did = didOrHandle.startsWith('did:') ? didOrHandle : states.find(state => state.handle?.toLowerCase() === handle)?.did
      if (did === undefined || !dids.includes(did)) throw new RepoNotMirroredError(did ?? didOrHandle)
      dids = [did]
    }
    const reports: StoredRepoReport[] = []
    for (const did of dids) {
      signal.throwIfAborted()
      let key
      try {
        key = (await this.identity.resolve(did, { signal, verifyHandle: false })).signingKey
      } catch (err) {
        if (signal.aborted) throw err
        log('verify %s: cannot resolve its signing key (%e); checking without the signature', did, err)
      }
      reports.push(await this.syncer.verifyStored(did, { signal, key, repair: options.repair }))
    }
    return reports
  }

  /** The peers this node is connected to (none without a network). */
  async peers (_options: MirrorApiOptions = {}): Promise<PeersResult> {
    return { peerId: this.network?.peerId.toString() ?? null, peers: this.p2p?.connectedPeers() ?? [] }
  }

  /** Who announces `did` on the DHT, plus the configured peers (none without a network). */
  async mirrors (didOrHandle: string, options: MirrorApiOptions = {}): Promise<MirrorsResult> {
    const signal = this.#signal(options.signal)
    const did = didOrHandle.startsWith('did:') ? didOrHandle : (await this.identity.resolve(didOrHandle, { signal })).did
    const found = await this.p2p?.findMirrors(did, { signal }) ?? []
    return { did, mirrors: found.map(peer => ({ peerId: peer.id.toString(), addresses: peer.multiaddrs.map(ma => ma.toString()), source: peer.source })) }
  }

  /**
   * A block through the fetch chain: the store, Bitswap (with a network), and the
   * PDS of `options.did`; with `options.local`, the store alone. Fetched blocks are
   * not stored: the mirror only keeps blocks some pinned repo holds.
   */
  async getBlock (cid: CID, options: GetBlockOptions = {}): Promise<Uint8Array> {
    const signal = this.#signal(options.signal)
    if (options.local === true) {
      const bytes = await this.store.getVerified(cid, { did: options.did, signal })
      if (bytes === undefined) throw new BlockNotFoundError(cid, { source: 'local' })
      return bytes
    }
    const [block] = await this.syncer.fetcher.fetchAll([cid], { did: options.did, store: false, signal })
    return block.bytes
  }

  /**
   * A blob of `did`'s stored repo, as a stream hash-checked while it is read (its end
   * throws BlobMismatchError if the disk spoiled it), for `com.atproto.sync.getBlob`
   * and the gateway. Only while the repo is served (status-policy.ts), its current
   * commit references the blob and the blob is not gone for it (taken down at its PDS).
   *
   * @throws RepoNotMirroredError (nothing stored, or a repo not served now),
   * BlobNotMirroredError (not referenced by the repo, or not stored here)
   */
  async getBlob (did: string, cid: CID, options: MirrorApiOptions = {}): Promise<{ size: number, chunks: AsyncIterable<Uint8Array> }> {
    const state = await this.store.getState(did)
    if (!isServable(state)) throw new RepoNotMirroredError(did)
    // gone: taken down at the DID's PDS; the bytes may be stored again for another repo that references them
    if (!await this.store.blobs.isReferencedBy(did, cid) || await this.store.blobs.isGone(did, cid)) throw new BlobNotMirroredError(did, cid)
    const stream = await this.store.blobs.read(cid, { signal: this.#signal(options.signal) })
    if (stream === undefined) throw new BlobNotMirroredError(did, cid)
    return { size: stream.size ?? 0, chunks: stream.chunks }
  }

  /**
   * The blobs of `did`'s stored repo that are stored here, in CID order, a page at a
   * time (`com.atproto.sync.listBlobs`): `cursor` is the last CID of the page before.
   *
   * @throws RepoNotMirroredError (nothing stored, or a repo not served now)
   */
  async listBlobs (did: string, options: { cursor?: string, limit?: number } = {}): Promise<{ cids: string[], cursor?: string }> {
    const state = await this.store.getState(did)
    if (!isServable(state)) throw new RepoNotMirroredError(did)
    const limit = Math.min(Math.max(1, options.limit ?? 500), 1000)
    const cids: string[] = []
    let cursor = options.cursor
    while (cids.length < limit) {
      const page = await this.store.blobs.list(did, { cursor, limit })
      if (page.length === 0) break
      for (const cid of page) {
        cursor = cid
        if (cids.length < limit && await this.store.blobs.has(CID.parse(cid)) && !await this.store.blobs.isGone(did, CID.parse(cid))) cids.push(cid)
      }
      if (page.length < limit) break
    }
    return cids.length === limit ? { cids, cursor: cids[cids.length - 1] } : { cids }
  }

  /** The stored repo as a CAR (commit first); RepoNotMirroredError when nothing is stored. */
  exportCar (did: string, options: MirrorApiOptions = {}): AsyncGenerator<Uint8Array> {
    return exportStoredRepo(this.store, did, { signal: options.signal })
  }

  async listPins (_options: MirrorApiOptions = {}): Promise<PinnedRepo[]> {
    const dids = await this.store.pins.list()
    return await Promise.all(dids.map(async did => await this.#report(did, await this.store.getState(did))))
  }

  async repo (didOrHandle: string, options: MirrorApiOptions = {}): Promise<PinnedRepo> {
    const did = await this.#pinnedDid(didOrHandle, this.#signal(options.signal))
    return await this.#report(did, await this.store.getState(did))
  }

  /** The stored state of a pinned repo; RepoNotMirroredError before its first sync. */
  async getState (did: string): Promise<RepoState> {
    const state = await this.store.getState(did)
    if (state === undefined) throw new RepoNotMirroredError(did)
    return state
  }

  async status (_options: MirrorApiOptions = {}): Promise<NodeStatus> {
    return {
      state: this.#state,
      pid: process.pid,
      version: VERSION,
      dataDir: this.dataDir,
      startedAt: this.#startedAt ?? '',
      intervalSeconds: this.#scheduler.intervalMs / 1000,
      peerId: this.network?.peerId.toString() ?? null,
      network: this.network?.mode ?? null,
      addresses: this.network?.getMultiaddrs().map(ma => ma.toString()) ?? [],
      peers: this.network?.getPeers().length ?? 0,
      http: this.http !== undefined && this.#state === 'running' ? this.http.url : null,
      metrics: this.metrics !== undefined && this.http !== undefined && this.#state === 'running' ? `${this.http.url}/metrics` : null,
      repos: await this.listPins(),
      subscriptions: this.#follower?.status() ?? [],
      crawlRequests: this.#crawl?.status() ?? []
    }
  }

  /** Re-checks every pinned repo now (what the scheduler does on each tick), and waits for it. */
  async checkAll (): Promise<void> {
    await this.#scheduler.checkAll()
  }

  /** A sync someone waits for: ahead of background re-checks in the runner. */
  async #request (did: string, signal: AbortSignal, options: { pin: boolean, onProgress?: MirrorSyncOptions['onProgress'], check?: boolean }): Promise<SyncResult> {
    return await this.#runner.run(did, async (jobSignal) => await this.#sync(did, jobSignal, { ...options, request: true }), { signal, priority: PRIORITY.request })
  }

  /**
   * One sync, inside the runner's job for the DID; reports it (events, runtime
   * state). `pin: false` for re-checks: a repo unpinned meanwhile must not come back.
   */
  async #sync (did: string, signal: AbortSignal, options: { request: boolean, pin: boolean, onProgress?: MirrorSyncOptions['onProgress'], check?: boolean }): Promise<SyncResult> {
    const { request, pin, onProgress } = options
    const runtime = this.#runtime(did)
    const started = new Date().toISOString()
    try {
      const result = await this.syncer.sync(did, { signal, pin, onProgress, check: options.check })
      await this.#keepPlcLog(did, signal, false)
      runtime.lastCheckAt = started
      runtime.error = undefined
      this.events.safeDispatchEvent('repo:synced', { detail: result })
      log('synced %s rev=%s changed=%s', did, result.rev, result.changed)
      return result
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err))
      // stopping, or unpinned: not a failure of the repo
      if (error.name === 'AbortError' && signal.aborted) throw error
      if (!request && error.name === 'NotPinnedError') {
        this.#repos.delete(did) // unpinned while its re-check was queued: nothing to report
        throw error
      }
      runtime.lastCheckAt = started
      runtime.error = `${error.name}: ${error.message}`
      this.events.safeDispatchEvent('repo:error', { detail: { did, error } })
      if (request) log('sync of %s failed - %e', did, error)
      else log.error('re-check of %s failed - %e', did, error)
      throw error
    }
  }

  /**
   * What an `#identity` event calls: the DID document is resolved again (the cached
   * one dropped) and, for a pinned did:plc, the operation log fetched, verified and
   * stored. Throws what resolution throws; a log that cannot be refreshed is logged.
   */
  async refreshIdentity (did: string, options: MirrorApiOptions = {}): Promise<void> {
    const signal = this.#signal(options.signal)
    await this.identity.refresh(did, { signal })
    if (await this.store.pins.has(did)) await this.#keepPlcLog(did, signal, true)
  }

  /**
   * Keeps a pinned did:plc's verified log current: after a sync, when the stored one
   * is older than `identityRefreshMs` (or absent); always when `force`. Never throws
   * (the repo is fine; its log will be tried again).
   */
  async #keepPlcLog (did: string, signal: AbortSignal, force: boolean): Promise<void> {
    if (this.plcLogs === undefined || !did.startsWith('did:plc:')) return
    try {
      if (!force) {
        const stored = await this.plcLogs.store?.getPlcLog(did)
        if (stored !== undefined && Date.now() - Date.parse(stored.fetchedAt) < this.#identityRefreshMs) return
      }
      await this.plcLogs.refresh(did, { signal })
    } catch (err) {
      if (signal.aborted) return
      log.error('could not refresh the PLC log of %s - %e', did, err)
    }
  }

  #runtime (did: string): RepoRuntime {
    let runtime = this.#repos.get(did)
    if (runtime === undefined) {
      runtime = {}
      this.#repos.set(did, runtime)
    }
    return runtime
  }

  /** The DID of a pinned repo named by DID or handle; NotPinnedError otherwise. */
  async #pinnedDid (didOrHandle: string, signal: AbortSignal): Promise<string> {
    if (didOrHandle.startsWith('did:')) {
      if (!await this.store.pins.has(didOrHandle)) throw new NotPinnedError(didOrHandle)
      return didOrHandle
    }
    const handle = didOrHandle.toLowerCase()
    for (const did of await this.store.pins.list()) {
      if ((await this.store.getState(did))?.handle?.toLowerCase() === handle) return did
    }
    const { did } = await this.identity.resolve(didOrHandle, { signal })
    if (!await this.store.pins.has(did)) throw new NotPinnedError(did)
    return did
  }

  async #report (did: string, state: RepoState | undefined): Promise<PinnedRepo> {
    const runtime = this.#repos.get(did)
    const blobs = state === undefined ? undefined : await this.store.blobs.usage(did)
    return {
      ...(blobs === undefined ? {} : { blobs }),
      did,
      handle: state?.handle,
      rev: state?.rev,
      commit: state?.commit,
      data: state?.data,
      pds: state?.pds,
      status: state?.status ?? 'pending',
      syncedAt: state?.syncedAt,
      lastCheckAt: runtime?.lastCheckAt,
      error: runtime?.error ?? state?.error,
      lastEventAt: this.#follower?.lastEventAt(did),
      syncing: this.#runner.busy(did)
    }
  }

  #signal (signal: AbortSignal | undefined): AbortSignal {
    return signal === undefined ? this.#stopping.signal : AbortSignal.any([signal, this.#stopping.signal])
  }

  #daemonInfo (): Parameters<typeof writeDaemonInfo>[1] {
    return {
      pid: process.pid,
      api: this.api?.url ?? '',
      peerId: this.network?.peerId.toString() ?? null,
      addresses: this.network?.getMultiaddrs().map(ma => ma.toString()) ?? [],
      network: this.network?.mode ?? null,
      dataDir: this.dataDir,
      startedAt: this.#startedAt ?? new Date().toISOString(),
      version: VERSION
    }
  }
}

/**
 * Creates a mirror node on a data directory: takes the lock (DataDirLockedError when
 * another process holds it), opens the store and builds every part. Nothing runs
 * until `start()`; one-shot users can call `pin`, `unpin`, `listPins` without
 * starting, then `stop()` to close the store and release the lock.
 *
 * @example
 * ```ts
 * const node = await createMirrorNode({ dataDir: '/var/lib/atmirror', network: { mode: 'private' } })
 * await node.start()
 * node.events.addEventListener('repo:synced', (evt) => { console.info(evt.detail.did, evt.detail.rev) })
 * await node.pin('alice.example.com')
 * await node.stop()
 * ```
 */
export async function createMirrorNode (init: MirrorNodeInit): Promise<MirrorNode> {
  const lock = await acquireDataDirLock(init.dataDir)
  let store: MirrorStore | undefined
  try {
    store = await MirrorStore.open(init.dataDir, { blockstore: init.blockstore })
    const identityStore = new MirrorIdentityStore({ db: store.datastore.db, pins: store.pins })
    const identity = new AtprotoIdentityResolver({
      store: identityStore,
      plcUrl: init.plcUrl,
      handleResolverUrl: init.handleResolverUrl,
      allowHttpLocalhost: init.allowHttpLocalhost,
      allowPrivateNetwork: init.allowPrivateNetwork,
      fetch: init.fetch
    })
    const pdsHeads = new PdsHeadResolver({ identity })
    let heads: HeadResolver = pdsHeads
    let p2p: PeerServices | undefined
    let network: MirrorNetwork | undefined
    let bitswap: BlockBroker | undefined
    let metrics: NodeMetrics | undefined
    const metricsInit = init.metrics ?? (init.http !== undefined && init.http !== false)
    if (metricsInit !== false) {
      const { NodeMetrics } = await import('./server/metrics.ts')
      // read when scraped: the network is built below
      metrics = new NodeMetrics({ store, blockstore: store.blockstore, blobs: store.blobs, served: () => network?.serving.stats() }, { ...(metricsInit === true ? {} : metricsInit), version: VERSION, dataDir: init.dataDir })
    }
    if (init.network !== false) {
      // loaded only when needed: libp2p and Helia are most of a one-shot command's start-up time
      const [{ createNetwork }, { loadOrCreatePeerKey }, { BitswapBroker }, { MirrorFinder }, { PeerServices }] = await Promise.all([
        import('./net/network.ts'), import('./net/peer-key.ts'), import('./blocks/bitswap-broker.ts'), import('./net/mirrors.ts'), import('./net/peer-services.ts')
      ])
      network = await createNetwork({
        blockstore: store.blockstore,
        datastore: store.datastore,
        holders: servedHolders(datastoreHolderIndex(store.datastore), store),
        verified: store,
        blobs: store.blobs,
        privateKey: await loadOrCreatePeerKey(init.dataDir),
        metrics: metrics?.libp2p()
      }, { version: VERSION, ...init.network, peers: [...(init.network?.peers ?? []), ...(init.network?.mirrors?.peers ?? [])] })
      const { helia, libp2p } = network
      const net = network
      const mirrors = new MirrorFinder({ libp2p, routingTableSize: () => net.dhtPeerCount() }, init.network?.mirrors)
      p2p = new PeerServices({ libp2p, store, identity, mirrors, plcLogs: identityStore, datastore: store.datastore, routingTableSize: () => net.dhtPeerCount(), serving: net.serving }, init.network?.services)
      // the directory down: the DID's log from its mirrors
      identity.plcLogs.setPeers(p2p.plcLogs)
      // the PDS and the other mirrors at once: the PDS's verified answer is taken, peers decide when it fails
      heads = new CompositeHeadResolver({ pds: pdsHeads, peers: [p2p.heads], identity })
      bitswap = new BitswapBroker({
        // Helia's session blockstore, seen as the broker's small session interface
        blocks: {
          createSession: (root, options) => {
            const session = helia.blockstore.createSession(root, options)
            return {
              get: async function * (cid, getOptions) { yield * session.get(cid, getOptions) },
              close: () => { session.close() }
            }
          }
        },
        libp2p,
        mirrors
      }, init.network?.bitswap)
    }
    const pdsClient = new PdsClient({ ...init.pds, fetch: identity.fetch })
    // local → bitswap (when there is a network) → the DID's PDS
    const fetcher = new BlockFetcher({
      store,
      brokers: [
        new LocalBroker({ store }),
        ...(bitswap === undefined ? [] : [bitswap]),
        new PdsBroker({ identity }, { client: pdsClient })
      ]
    })
    // damaged blocks found by checked reads (export, Bitswap, verify) are refetched through the same chain
    store.setRepairer(new BlockRepairer({ store, fetcher }))
    // blobs through the same chain: stored, then peers (small ones), then the PDS's getBlob
    const blobStore = store.blobs
    const blobs = new BlobMirror({
      store,
      fetcher: new BlobFetcher({
        sources: [
          new LocalBlobSource({ open: async (cid) => await blobStore.read(cid) }),
          ...(bitswap === undefined ? [] : [new BrokerBlobSource({ broker: bitswap })]),
          new PdsBlobSource({ identity })
        ]
      })
    }, init.blobs === false ? { enabled: false } : init.blobs)
    const syncer = new RepoSyncer({ store, identity, heads, fetcher, blobs }, { pds: init.pds, limits: init.downloadLimits })
    let http: PublicServer | undefined
    let crawl: CrawlRequester | undefined
    if (init.requestCrawl !== undefined && init.requestCrawl.relays.length > 0 && (init.http === undefined || init.http === false)) {
      throw new ConfigError('requestCrawl needs the public HTTP server (http): relays crawl it')
    }
    if (init.http !== undefined && init.http !== false) {
      // loaded only when serving: express and the lexicons are a one-shot command's dead weight
      const [{ PublicServer }, { plcReadRoute }, { syncApi }, { repoApi }, { gatewayRoute }] = await Promise.all([
        import('./server/public-server.ts'), import('./server/plc-read-api.ts'), import('./server/sync-api.ts'), import('./server/repo-api.ts'), import('./server/gateway.ts')
      ])
      http = new PublicServer({ version: VERSION, ...init.http })
      metrics?.serveOn(http)
      // a PLC read replica for the pinned DIDs
      http.mount(plcReadRoute({ logs: identityStore }))
      http.mountXrpc(syncApi({ store }))
      http.mountXrpc(repoApi({ store, identity }))
      // blobs too: the repos that reference them decide, as holders do for blocks
      http.mount(gatewayRoute({ store, holders: servedHolders(datastoreHolderIndex(store.datastore), store), blobs: store.blobs }))
      if (init.requestCrawl !== undefined && init.requestCrawl.relays.length > 0) {
        const { CrawlRequester } = await import('./server/request-crawl.ts')
        crawl = new CrawlRequester({ ...init.requestCrawl, allowLoopback: init.allowHttpLocalhost, allowPrivateNetwork: init.allowPrivateNetwork, fetch: init.fetch })
      }
    }
    const node = new MirrorNode({
      dataDir: init.dataDir,
      lock,
      store,
      identity,
      heads,
      syncer,
      network,
      api: init.api === false ? undefined : (init.api ?? {}),
      http,
      crawl,
      intervalMs: init.intervalMs ?? 60_000,
      checkOnStart: init.checkOnStart ?? true,
      concurrency: init.concurrency ?? 4,
      p2p,
      metrics,
      plcLogs: identity.plcLogs,
      identityStore,
      identityRefreshMs: init.identityRefreshMs,
      follow: init.follow === false ? undefined : init.follow,
      streams: init.follow === undefined || init.follow === false
        ? undefined
        : init.follow.streams ?? new EventStreamClient({
          allowLoopback: init.allowHttpLocalhost,
          allowPrivateNetwork: init.allowPrivateNetwork,
          maxFrameBytes: init.follow.maxFrameBytes
        })
    })
    // getBlob and listBlobs from what is mirrored (loaded only when serving)
    if (http !== undefined) http.mountXrpc((await import('./server/blob-xrpc.ts')).blobXrpc(node))
    // subscribeRepos: the mirror's own sequence of what it verified (loaded only when serving)
    if (http !== undefined) http.mountXrpc((await import('./server/repo-events.ts')).subscribeReposApi(node))
    return node
  } catch (err) {
    await store?.close().catch(() => {})
    await lock.release().catch(() => {})
    throw err
  }
}

/** Who holds a block or a blob, for the serving blockstore's withheld check: the block index, then the blob index. */
function servedHolders (blocks: ReturnType<typeof datastoreHolderIndex>, store: MirrorStore): ReturnType<typeof datastoreHolderIndex> {
  return {
    async * holders (cid, options) {
      yield * blocks.holders(cid, options)
      yield * store.blobs.holders(cid)
    }
  }
}

/**
 * The node's Prometheus metrics, served as `/metrics` by the public HTTP server
 * (public-server.ts; {@link NodeMetrics.serveOn}).
 *
 * Each node has its own prom-client `Registry` (never the global default one, so two
 * nodes in one process do not mix their figures). libp2p, the DHT and Helia's
 * Bitswap report into the same registry through `@libp2p/prometheus-metrics`
 * ({@link NodeMetrics.libp2p}, given to libp2p by src/net/network.ts), and so do
 * prom-client's default process and Node.js metrics. This module is loaded only when
 * metrics are on: a node without them never loads prom-client.
 *
 * Most figures are read when scraped (prom-client `collect()`), from counters the
 * store, the network and the follower keep anyway; the only bookkeeping done as
 * things happen is per finished sync (the node's `repo:synced` and `repo:error`
 * events), per handled firehose event and per HTTP request, never per block (the
 * serving blockstore's own counters aside: two additions per served block).
 *
 * | metric | type | labels | what |
 * |---|---|---|---|
 * | `atmirror_info` | gauge | `version` | always 1 |
 * | `atmirror_repos` | gauge | `status` | pinned repos by status: `active`, `deactivated`, `suspended`, `takendown`, `deleted`, `pending` (pinned, nothing stored yet) |
 * | `atmirror_blocks_stored` | gauge | | blocks in the blockstore, as of the last scan |
 * | `atmirror_block_bytes_stored` | gauge | | their bytes (contents, not disk allocation) |
 * | `atmirror_blob_files_stored` | gauge | | large blobs, stored as files of their own (small ones are blocks), as of the last scan |
 * | `atmirror_blob_file_bytes_stored` | gauge | | their bytes |
 * | `atmirror_store_scanned_timestamp_seconds` | gauge | | when that scan finished (Unix time) |
 * | `atmirror_syncs_total` | counter | `result` | finished syncs: `full`, `incremental`, `unchanged` (commits applied from a firehose are firehose events, not syncs) |
 * | `atmirror_sync_errors_total` | counter | `error` | failed syncs by error name (`HeadUnavailableError` when neither the PDS nor a peer gave a head, with the PDS's status in its reasons; `RepoTakendownError` without a network; `AllSourcesFailedError`, …) |
 * | `atmirror_sync_duration_seconds` | histogram | | how long finished syncs took |
 * | `atmirror_blocks_fetched_total` | counter | `source` | blocks syncs obtained, by source: `local`, `bitswap`, `pds` |
 * | `atmirror_fetched_bytes_total` | counter | | bytes syncs downloaded |
 * | `atmirror_blobs_fetched_total` | counter | `source` | blobs the blob pass after a sync stored, by source: `local`, `bitswap`, `pds` |
 * | `atmirror_blob_fetched_bytes_total` | counter | | their bytes |
 * | `atmirror_blob_fetch_failures_total` | counter | `result` | blobs not stored: `failed` (asked for again next time), `refused` (over the cap, taken down) |
 * | `atmirror_bitswap_blocks_served_total` | counter | | blocks handed to peers over Bitswap (hash-checked) |
 * | `atmirror_bitswap_bytes_served_total` | counter | | their bytes |
 * | `atmirror_bitswap_blocks_refused_total` | counter | | requests refused because every repo holding the block is withheld |
 * | `atmirror_firehose_lag_seconds` | gauge | `host` | how far behind each followed firehose is: from the last handled event's `time` to when it was handled |
 * | `atmirror_firehose_subscriptions` | gauge | `state` | followed hosts by the state of their stream: `connecting`, `connected`, `backoff`, `polling` (kept failing; re-checks cover them) |
 * | `atmirror_firehose_events_total` | counter | `type`, `outcome` | handled firehose events: `commit`, `sync`, `identity`, `account` by outcome (`applied`, `ignored`, `resync`, `refused`, `status`) |
 * | `atmirror_firehose_errors_total` | counter | `error` | failed streams (a malformed or oversized frame, an error frame, a lost connection) by error name |
 * | `atmirror_http_requests_total` | counter | `endpoint`, `status` | public HTTP requests by endpoint (an XRPC method's NSID, `/ipfs`, `/metrics`, … or `other`) and status code |
 * | `atmirror_http_request_duration_seconds` | histogram | `endpoint` | how long they took |
 * | `libp2p_*`, `helia_bitswap_*` | | | libp2p's, the DHT's and Bitswap's own (with a network) |
 * | `process_*`, `nodejs_*` | | | prom-client's default metrics |
 *
 * Blocks, blob files and their bytes come from a scan of the blockstore and the blob
 * directory (`shardedFilesUsage` in src/mirror/fs-blockstore.ts; the packed store scans its
 * LevelDB range): the first scrape waits
 * for the first scan, and a scrape finding the last one older than `usageMaxAgeMs`
 * starts the next in the background and answers with the last figures. A scan is
 * never closer to the previous one than ten times its own length, so a huge store is
 * not scanned back to back.
 *
 * @NOTE @libp2p/prometheus-metrics keeps one module-wide map of metric names: a
 * libp2p metric first registered after a second node was created in the same
 * process is found in that map and reported in the other node's registry. The
 * atmirror_* metrics are unaffected.
 */
import { logger } from '@libp2p/logger'
import { prometheusMetrics } from '@libp2p/prometheus-metrics'
import type { Metrics, TypedEventTarget } from '@libp2p/interface'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { BlockstoreUsage } from '../mirror/blockstore.ts'
import { REPO_STATUSES } from '../mirror/status-policy.ts'
import type { RepoState } from '../mirror/store.ts'
import type { SyncResult } from '../mirror/sync.ts'
import type { PublicServer } from './public-server.ts'

const log = logger('atmirror:metrics')

/** The events metrics count (the node's). */
export interface SyncEvents {
  'repo:synced': CustomEvent<SyncResult>
  'repo:error': CustomEvent<{ did: string, error: Error }>
  'firehose:event': CustomEvent<{ type: string, outcome: string }>
  'firehose:error': CustomEvent<{ error: Error }>
}

/** What Bitswap has served, kept by the serving blockstore (src/net/serving-blockstore.ts). */
export interface ServedCounts {
  served: number
  servedBytes: number
  refused: number
}

/** The followed firehoses, read when scraped (the follower's `status()`): each host's stream state and lag. */
export type FirehoseSource = () => Iterable<{ host: string, state: string, lagMs?: number }>

export interface NodeMetricsComponents {
  /** Pinned repos and their stored states. */
  store: {
    pins: { list: () => Promise<string[]> }
    listStates: () => Promise<RepoState[]>
  }
  /** Counts what the blockstore holds (a full scan). */
  blockstore: { usage: (options?: { signal?: AbortSignal }) => Promise<BlockstoreUsage> }
  /** Counts the blob files (a full scan); without it none are reported. */
  blobs?: { fileUsage: (options?: { signal?: AbortSignal }) => Promise<{ files: number, bytes: number }> }
  /** Bitswap's serving counts; undefined without a network. */
  served?: () => ServedCounts | undefined
}

export interface NodeMetricsInit {
  /** Reported as `atmirror_info{version}`. @default '0.0.0' */
  version?: string
  /**
   * Where libp2p's `nodejs_fs_usage_bytes` looks (statfs): the data directory.
   *
   * @default process.cwd()
   */
  dataDir?: string
  /**
   * How old the blockstore scan behind `atmirror_blocks_stored` may get before a
   * scrape starts the next one, in ms.
   *
   * @default 60000
   */
  usageMaxAgeMs?: number
}

/** What a scan of the stores found. */
interface StoredUsage {
  blocks: BlockstoreUsage
  blobFiles: { files: number, bytes: number } | undefined
}

/** The HTTP status label of a request the client gave up on before its answer ended. */
const ABORTED = 'aborted'

export class NodeMetrics {
  /** This node's registry: everything `/metrics` shows. */
  readonly registry = new Registry()
  readonly #components: NodeMetricsComponents
  readonly #dataDir: string | undefined
  readonly #usageMaxAgeMs: number
  readonly #syncs: Counter<'result'>
  readonly #syncErrors: Counter<'error'>
  readonly #syncSeconds: Histogram
  readonly #fetched: Counter<'source'>
  readonly #fetchedBytes: Counter
  readonly #blobsFetched: Counter<'source'>
  readonly #blobBytes: Counter
  readonly #blobFailures: Counter<'result'>
  readonly #firehoseEvents: Counter<'type' | 'outcome'>
  readonly #firehoseErrors: Counter<'error'>
  readonly #httpRequests: Counter<'endpoint' | 'status'>
  readonly #httpSeconds: Histogram<'endpoint'>
  #firehose: FirehoseSource | undefined
  #usage: { value: StoredUsage, at: number, tookMs: number } | undefined
  #scan: Promise<void> | undefined
  readonly #stopping = new AbortController()

  constructor (components: NodeMetricsComponents, init: NodeMetricsInit = {}) {
    this.#components = components
    this.#dataDir = init.dataDir
    this.#usageMaxAgeMs = init.usageMaxAgeMs ?? 60_000
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry })

    new Gauge({ name: 'atmirror_info', help: 'atmirror version (always 1)', labelNames: ['version'], registers }).set({ version: init.version ?? '0.0.0' }, 1)

    const store = components.store
    new Gauge({
      name: 'atmirror_repos',
      help: 'Pinned repos by status (pending: nothing stored yet)',
      labelNames: ['status'],
      registers,
      async collect () {
        const [pins, states] = await Promise.all([store.pins.list(), store.listStates()])
        const statusOf = new Map(states.map(state => [state.did, state.status as string]))
        const counts = new Map<string, number>([...REPO_STATUSES, 'pending'].map(status => [status, 0]))
        for (const did of pins) {
          const status = statusOf.get(did) ?? 'pending'
          counts.set(status, (counts.get(status) ?? 0) + 1)
        }
        this.reset()
        for (const [status, count] of counts) this.set({ status }, count)
      }
    })

    const usage = async (): Promise<StoredUsage | undefined> => await this.#storedUsage()
    const usageGauge = (name: string, help: string, read: (value: StoredUsage) => number | undefined): void => {
      new Gauge({
        name,
        help,
        registers,
        async collect () {
          const value = await usage()
          const figure = value === undefined ? undefined : read(value)
          if (figure !== undefined) this.set(figure)
        }
      })
    }
    usageGauge('atmirror_blocks_stored', 'Blocks in the blockstore, as of the last scan', value => value.blocks.blocks)
    usageGauge('atmirror_block_bytes_stored', 'Bytes of the blocks in the blockstore, as of the last scan', value => value.blocks.bytes)
    if (components.blobs !== undefined) {
      usageGauge('atmirror_blob_files_stored', 'Large blobs stored as files of their own, as of the last scan', value => value.blobFiles?.files)
      usageGauge('atmirror_blob_file_bytes_stored', 'Bytes of the blob files, as of the last scan', value => value.blobFiles?.bytes)
    }
    const scannedAt = (): number | undefined => this.#usage?.at
    new Gauge({
      name: 'atmirror_store_scanned_timestamp_seconds',
      help: 'When the blockstore scan behind atmirror_blocks_stored finished (Unix time)',
      registers,
      collect () {
        const at = scannedAt()
        if (at !== undefined) this.set(at / 1000)
      }
    })

    this.#syncs = new Counter({ name: 'atmirror_syncs_total', help: 'Finished syncs: full, incremental or unchanged', labelNames: ['result'], registers })
    for (const result of ['full', 'incremental', 'unchanged']) this.#syncs.inc({ result }, 0)
    this.#syncErrors = new Counter({ name: 'atmirror_sync_errors_total', help: 'Failed syncs by error name', labelNames: ['error'], registers })
    this.#syncSeconds = new Histogram({ name: 'atmirror_sync_duration_seconds', help: 'How long finished syncs took', buckets: [0.05, 0.25, 1, 5, 15, 60, 300, 1800], registers })
    this.#fetched = new Counter({ name: 'atmirror_blocks_fetched_total', help: 'Blocks syncs obtained, by source', labelNames: ['source'], registers })
    for (const source of ['local', 'bitswap', 'pds']) this.#fetched.inc({ source }, 0)
    this.#fetchedBytes = new Counter({ name: 'atmirror_fetched_bytes_total', help: 'Bytes syncs downloaded', registers })
    this.#blobsFetched = new Counter({ name: 'atmirror_blobs_fetched_total', help: 'Blobs stored by the blob pass after a sync, by source', labelNames: ['source'], registers })
    for (const source of ['local', 'bitswap', 'pds']) this.#blobsFetched.inc({ source }, 0)
    this.#blobBytes = new Counter({ name: 'atmirror_blob_fetched_bytes_total', help: 'Bytes of the blobs stored by the blob pass', registers })
    this.#blobFailures = new Counter({ name: 'atmirror_blob_fetch_failures_total', help: 'Blobs not stored: failed (asked for again next time) or refused (over the cap, taken down)', labelNames: ['result'], registers })
    for (const result of ['failed', 'refused']) this.#blobFailures.inc({ result }, 0)

    const served = components.served
    const servedCounter = (name: string, help: string, read: (counts: ServedCounts) => number): void => {
      new Counter({
        name,
        help,
        registers,
        collect () {
          const counts = served?.()
          // the serving blockstore's own running total, copied in as it is
          this.reset()
          this.inc(counts === undefined ? 0 : read(counts))
        }
      })
    }
    servedCounter('atmirror_bitswap_blocks_served_total', 'Blocks handed to peers over Bitswap', counts => counts.served)
    servedCounter('atmirror_bitswap_bytes_served_total', 'Bytes of the blocks handed to peers over Bitswap', counts => counts.servedBytes)
    servedCounter('atmirror_bitswap_blocks_refused_total', 'Bitswap requests refused because every repo holding the block is withheld', counts => counts.refused)

    const firehose = (): FirehoseSource | undefined => this.#firehose
    new Gauge({
      name: 'atmirror_firehose_lag_seconds',
      help: 'How far behind each followed firehose is (the last handled event)',
      labelNames: ['host'],
      registers,
      collect () {
        this.reset()
        for (const { host, lagMs } of firehose()?.() ?? []) if (lagMs !== undefined) this.set({ host }, lagMs / 1000)
      }
    })
    new Gauge({
      name: 'atmirror_firehose_subscriptions',
      help: 'Followed hosts by the state of their stream',
      labelNames: ['state'],
      registers,
      collect () {
        const counts = new Map(['connecting', 'connected', 'backoff', 'polling'].map(state => [state, 0]))
        for (const { state } of firehose()?.() ?? []) counts.set(state, (counts.get(state) ?? 0) + 1)
        this.reset()
        for (const [state, count] of counts) this.set({ state }, count)
      }
    })
    this.#firehoseEvents = new Counter({ name: 'atmirror_firehose_events_total', help: 'Handled firehose events by type and outcome', labelNames: ['type', 'outcome'], registers })
    this.#firehoseErrors = new Counter({ name: 'atmirror_firehose_errors_total', help: 'Failed firehose streams by error name', labelNames: ['error'], registers })

    this.#httpRequests = new Counter({ name: 'atmirror_http_requests_total', help: 'Public HTTP requests by endpoint and status', labelNames: ['endpoint', 'status'], registers })
    this.#httpSeconds = new Histogram({ name: 'atmirror_http_request_duration_seconds', help: 'How long public HTTP requests took', labelNames: ['endpoint'], buckets: [0.005, 0.025, 0.1, 0.5, 2.5, 10, 60], registers })
  }

  /**
   * libp2p's `metrics` option: libp2p, the DHT and (handed on to Helia) Bitswap
   * report into this node's registry. Default process metrics are this module's.
   */
  libp2p (): (components: Parameters<ReturnType<typeof prometheusMetrics>>[0]) => Metrics {
    return prometheusMetrics({ registry: this.registry, collectDefaultMetrics: false, statfsLocation: this.#dataDir })
  }

  /** Counts the syncs `events` reports (the node's events). */
  observe (events: TypedEventTarget<SyncEvents>): void {
    events.addEventListener('repo:synced', (evt) => { this.#synced(evt.detail) })
    events.addEventListener('repo:error', (evt) => { this.#syncErrors.inc({ error: evt.detail.error.name }) })
    events.addEventListener('firehose:event', (evt) => { this.#firehoseEvents.inc({ type: evt.detail.type, outcome: evt.detail.outcome }) })
    events.addEventListener('firehose:error', (evt) => { this.#firehoseErrors.inc({ error: evt.detail.error.name }) })
  }

  /** Where the firehose lag and stream states are read from, when the node follows firehoses. */
  watchFirehose (source: FirehoseSource): void {
    this.#firehose = source
  }

  /** Counts one public HTTP request ({@link serveOn} does it for the public server). */
  httpRequest (endpoint: string, status: number | string, seconds: number): void {
    this.#httpRequests.inc({ endpoint, status: String(status) })
    this.#httpSeconds.observe({ endpoint }, seconds)
  }

  /**
   * Serves `/metrics` on the public server, and counts every request it answers
   * once its answer has ended, or the client has gone (`status="aborted"`), by the
   * server's own bounded endpoint names. WebSocket subscriptions are not counted.
   */
  serveOn (server: Pick<PublicServer, 'mount' | 'observe' | 'endpointOf'>): void {
    server.mount({
      path: '/metrics',
      handler: async (_req, res) => {
        const { contentType, body } = await this.scrape()
        res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) })
        res.end(body)
      }
    })
    server.observe((req, res) => {
      const started = performance.now()
      res.once('close', () => {
        this.httpRequest(server.endpointOf(req), res.writableFinished ? res.statusCode : ABORTED, (performance.now() - started) / 1000)
      })
    })
  }

  /** The registry in Prometheus text format, with its content type. */
  async scrape (): Promise<{ contentType: string, body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }

  /** Stops a blockstore scan under way (before the store closes). */
  async stop (): Promise<void> {
    this.#stopping.abort()
    await this.#scan
  }

  #synced (result: SyncResult): void {
    // a commit applied from a firehose: counted as a firehose event
    if (result.source.startsWith('firehose:')) return
    this.#syncs.inc({ result: !result.changed ? 'unchanged' : result.full ? 'full' : 'incremental' })
    this.#syncSeconds.observe(result.seconds)
    for (const [source, count] of Object.entries(result.fetched)) {
      if (typeof count === 'number' && count > 0) this.#fetched.inc({ source }, count)
    }
    this.#fetchedBytes.inc(result.bytes)
    const blobs = result.blobs
    if (blobs !== undefined) {
      for (const [source, count] of Object.entries(blobs.fetched)) {
        if (count > 0) this.#blobsFetched.inc({ source }, count)
      }
      this.#blobBytes.inc(blobs.bytes)
      if (blobs.failed > 0) this.#blobFailures.inc({ result: 'failed' }, blobs.failed)
      if (blobs.refused > 0) this.#blobFailures.inc({ result: 'refused' }, blobs.refused)
    }
  }

  /** The last scan's figures; waits only for the first scan. */
  async #storedUsage (): Promise<StoredUsage | undefined> {
    const last = this.#usage
    if (last === undefined) {
      await this.#startScan()
      return this.#usage?.value
    }
    const age = Date.now() - last.at
    if (age > Math.max(this.#usageMaxAgeMs, last.tookMs * 10)) void this.#startScan()
    return last.value
  }

  async #startScan (): Promise<void> {
    if (this.#stopping.signal.aborted) return
    this.#scan ??= (async () => {
      const started = Date.now()
      try {
        const signal = this.#stopping.signal
        const [blocks, blobFiles] = await Promise.all([this.#components.blockstore.usage({ signal }), this.#components.blobs?.fileUsage({ signal })])
        this.#usage = { value: { blocks, blobFiles }, at: Date.now(), tookMs: Date.now() - started }
      } catch (err) {
        if (!this.#stopping.signal.aborted) log.error('counting the blockstore failed - %e', err)
      } finally {
        this.#scan = undefined
      }
    })()
    await this.#scan
  }
}

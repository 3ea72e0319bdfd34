/**
 * The operations a mirror offers, whoever runs it: a {@link MirrorNode} in this
 * process, or a running daemon reached through its control API (`ControlClient`).
 * Both implement {@link MirrorApi} with the same names and the same domain types, so
 * a caller (the CLI) picks a backend once and then does not care which it has.
 *
 * Values are domain types (a sync's commit is a CID); the control API turns them
 * into JSON and back (src/server).
 */
import type { CID } from '../repo/cid.ts'
import type { SyncProgress, SyncResult } from './sync.ts'
import type { SubscriptionStatus } from './follower.ts'

/** One pinned repo as a node reports it. */
export interface PinnedRepo {
  did: string
  handle?: string
  /** Rev of the stored commit; absent until the first sync completes. */
  rev?: string
  /** CID of the stored commit. */
  commit?: string
  /** MST root of the stored commit. */
  data?: string
  pds?: string
  /** The stored state's status, or `pending` before the first successful sync. */
  status: string
  /** ISO time the stored state last advanced or was confirmed current. */
  syncedAt?: string
  /** ISO time of the last sync attempt by this node, successful or not. */
  lastCheckAt?: string
  /** The last attempt's error, when it failed. */
  error?: string
  /** A sync of this repo is running now. */
  syncing: boolean
  /** Blobs its current commit references, those stored here, and their bytes on disk (absent before the first sync). */
  blobs?: { referenced: number, stored: number, bytes: number }
  /** When the last firehose event of the repo was handled (a following daemon). */
  lastEventAt?: string
}

/** A node's state. */
export interface NodeStatus {
  /** `running`, `stopping` (or `stopped` for a node opened without starting). */
  state: string
  pid: number
  version: string
  dataDir: string
  startedAt: string
  /** Seconds between re-checks of every pinned repo; 0 when only checked at start. */
  intervalSeconds: number
  /** Null when the node runs without the peer-to-peer network. */
  peerId: string | null
  /** `public`, `private`, or null without network. */
  network: string | null
  addresses: string[]
  /** Peers connected now. */
  peers: number
  /** The public read-only HTTP server (`--http`); null when off. Absent from daemons before it existed. */
  http?: string | null
  /** The URL Prometheus scrapes (`…/metrics` on the public HTTP server); null when that server or metrics are off. */
  metrics: string | null
  repos: PinnedRepo[]
  /** Each followed host's event stream (none when not following). */
  subscriptions?: SubscriptionStatus[]
  /** The last `requestCrawl` to each relay the mirror announces itself to (`--request-crawl`). */
  crawlRequests?: CrawlRequestStatus[]
}

/** The last announcement of the mirror to one relay (src/server/request-crawl.ts). */
export interface CrawlRequestStatus {
  relay: string
  /** ISO time of the last attempt. */
  at: string
  ok: boolean
  /** What failed, when `ok` is false. */
  error?: string
}

export interface PinResult {
  did: string
  handle?: string
  pinned: true
  /** The first mirror of the repo. */
  sync: SyncResult
}

export interface UnpinResult {
  did: string
  pinned: false
}

/** The peers a node holds connections to. */
export interface PeersResult {
  /** Null without the peer-to-peer network. */
  peerId: string | null
  peers: Array<{ peerId: string, addresses: string[], directions: string[] }>
}

/** The peers that announce a DID (DHT rendezvous key) or are configured as mirrors. */
export interface MirrorsResult {
  did: string
  mirrors: Array<{ peerId: string, addresses: string[], source: string }>
}

export interface MirrorApiOptions {
  signal?: AbortSignal
}

export interface MirrorSyncOptions extends MirrorApiOptions {
  /** Progress of the sync (phase, blocks, bytes), as often as the syncer reports it. */
  onProgress?: (progress: SyncProgress) => void
  /**
   * An unchanged repo's stored copy is checked end to end and what is damaged is
   * refetched, rather than trusting the disk (SyncOptions.check). @default false
   */
  check?: boolean
  /**
   * Mirror the repo's blobs (pin, mirror): stored with the pin, so its later syncs
   * follow it too. @default unchanged (on for a new pin)
   */
  blobs?: boolean
}

export interface GetBlockOptions extends MirrorApiOptions {
  /** The repo the block belongs to: lets the fetch chain ask that DID's PDS. */
  did?: string
  /**
   * Only what the store holds: nothing is fetched, a block not stored is
   * BlockNotFoundError (a damaged one is still refetched, as every checked read does).
   *
   * @default false
   */
  local?: boolean
}

/** What a mirror node does on request. */
export interface MirrorApi {
  status: (options?: MirrorApiOptions) => Promise<NodeStatus>
  listPins: (options?: MirrorApiOptions) => Promise<PinnedRepo[]>
  /**
   * Pins a repo (DID or handle) and mirrors it once. A wrong handle pins nothing; if
   * the first mirror fails the pin stays (the node retries it) and the error is thrown.
   */
  pin: (didOrHandle: string, options?: MirrorSyncOptions) => Promise<PinResult>
  /**
   * Mirrors a repo (DID or handle) once and pins it as part of storing it: unlike
   * {@link pin}, a failure leaves nothing pinned and nothing stored.
   */
  mirror: (didOrHandle: string, options?: MirrorSyncOptions) => Promise<SyncResult>
  /** Unpins a repo and collects the blocks no other pinned repo holds. */
  unpin: (didOrHandle: string, options?: MirrorApiOptions) => Promise<UnpinResult>
  /** One pinned repo; NotPinnedError otherwise. */
  repo: (didOrHandle: string, options?: MirrorApiOptions) => Promise<PinnedRepo>
  /** Syncs one pinned repo now. */
  sync: (didOrHandle: string, options?: MirrorSyncOptions) => Promise<SyncResult>
  peers: (options?: MirrorApiOptions) => Promise<PeersResult>
  /** Who announces the repo on the DHT, plus the configured peers. */
  mirrors: (didOrHandle: string, options?: MirrorApiOptions) => Promise<MirrorsResult>
  /** A block's bytes (hash-checked) through the node's fetch chain; fetched blocks are not stored. */
  getBlock: (cid: CID, options?: GetBlockOptions) => Promise<Uint8Array>
}

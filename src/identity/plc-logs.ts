/**
 * Identity that outlives its services: the verified did:plc operation log of each
 * pinned DID, the last did:web document fetched over HTTPS and the last handle
 * verified both ways, kept in the node's store so that a DID still resolves when
 * the PLC directory (or the web host) is down.
 *
 * {@link PlcLogKeeper} fetches a DID's audit log from the directory
 * (`/{did}/log/audit`), verifies it op by op (plc-log.ts), holds it to the stored
 * log (it must be the same or extend it: {@link comparePlcLogs}) and stores it. When
 * the directory cannot be reached, {@link PlcLogKeeper.resolveOffline} answers from
 * the stored log and the logs peers hand over (`PlcLogSource`, the
 * `/atmirror/plc/1.0.0` exchange), each verified and held to the stored one: the
 * longest that extends it wins, and one that extends it is stored.
 *
 * The store is an interface: src/mirror/identity-store.ts keeps the records in the
 * node's datastore, for pinned DIDs only.
 */
import { logger } from '@libp2p/logger'
import { DidNotFoundError, DidResolutionError, IdentityError, PlcLogConflictError, PlcLogInvalidError } from '../errors.ts'
import { boundedFetch, describeFetchError, readTextLimited, type FetchLike } from '../http/fetch.ts'
import { PLC_NOT_REGISTERED } from './did-resolvers.ts'
import { comparePlcLogs, plcDocument, verifyPlcLog, type PlcLogEntry, type VerifiedPlcLog } from './plc-log.ts'
import type { DidDocument } from './did-document.ts'

const log = logger('atmirror:identity:plc')

/** An audit log is a few KB; anything past this is refused. */
export const PLC_LOG_MAX_BYTES = 1024 * 1024

/** A verified log as stored, with when and where it was fetched. */
export interface StoredPlcLog {
  did: string
  entries: PlcLogEntry[]
  /** ISO time it was fetched (or taken from a peer). */
  fetchedAt: string
  /** `plc:<directory url>` or `peer:<peer id>`. */
  source: string
}

/** The last did:web document fetched over HTTPS. */
export interface StoredWebDocument {
  did: string
  document: DidDocument
  fetchedAt: string
  url?: string
}

/** The last handle that resolved to the DID while the DID document claimed it. */
export interface StoredHandle {
  did: string
  handle: string
  verifiedAt: string
}

/** Where identities are kept between runs (src/mirror/identity-store.ts). Writes may be ignored for DIDs the node does not pin. */
export interface IdentityStore {
  getPlcLog: (did: string) => Promise<StoredPlcLog | undefined>
  putPlcLog: (record: StoredPlcLog) => Promise<void>
  getWebDocument: (did: string) => Promise<StoredWebDocument | undefined>
  putWebDocument: (record: StoredWebDocument) => Promise<void>
  getHandle: (did: string) => Promise<StoredHandle | undefined>
  putHandle: (record: StoredHandle) => Promise<void>
}

/** A log another node handed over (not verified yet). */
export interface OfferedPlcLog {
  /** `peer:<peer id>`. */
  source: string
  entries: unknown
}

/** Who else may hold a DID's log (the peers, over `/atmirror/plc/1.0.0`). */
export interface PlcLogSource {
  /** Logs as they arrive, and a reason for each source that failed. */
  findLogs: (did: string, options?: { signal?: AbortSignal }) => AsyncIterable<OfferedPlcLog | { source: string, error: Error }>
}

/** A DID document resolved without the directory, and where it came from. */
export interface OfflineResolution {
  document: DidDocument
  /** `stored-log` or `peer:<peer id>`. */
  source: string
  log: VerifiedPlcLog
  /** The logs that were refused, each with why. */
  refused: Array<{ source: string, error: Error }>
}

export interface PlcLogKeeperComponents {
  store?: IdentityStore
  /** Peers' logs; can be set later (the network is built after the resolver). */
  peers?: PlcLogSource
  fetch?: FetchLike
}

export interface PlcLogKeeperInit {
  /** @default 'https://plc.directory' */
  plcUrl: string
  /** Per-request time budget. @default 10_000 */
  timeoutMs?: number
  /** The clock `fetchedAt` is written with. @default Date.now */
  now?: () => number
}

/** Keeps verified did:plc logs and resolves from them (see the file header). */
export class PlcLogKeeper {
  readonly plcUrl: string
  readonly store: IdentityStore | undefined
  #peers: PlcLogSource | undefined
  readonly #fetch: FetchLike | undefined
  readonly #timeoutMs: number | undefined
  readonly #now: () => number
  /** The last verified log of each DID seen in this process, for DIDs pinned after it was verified (a first mirror). */
  readonly #recent = new Map<string, { log: VerifiedPlcLog, source: string }>()

  constructor (components: PlcLogKeeperComponents, init: PlcLogKeeperInit) {
    this.store = components.store
    this.#peers = components.peers
    this.#fetch = components.fetch
    this.plcUrl = init.plcUrl.replace(/\/+$/, '')
    this.#timeoutMs = init.timeoutMs
    this.#now = init.now ?? Date.now
  }

  /** Sets where peers' logs come from. */
  setPeers (peers: PlcLogSource | undefined): void {
    this.#peers = peers
  }

  /**
   * The directory's audit log of `did`, verified. Throws DidNotFoundError,
   * DidResolutionError (unreachable, bad answer) or PlcLogInvalidError.
   */
  async fetchLog (did: string, options: { signal?: AbortSignal } = {}): Promise<VerifiedPlcLog> {
    const url = `${this.plcUrl}/${did}/log/audit`
    let res: Response
    try {
      res = await boundedFetch(url, { signal: options.signal, timeoutMs: this.#timeoutMs, fetch: this.#fetch, headers: { accept: 'application/json' } })
    } catch (err) {
      options.signal?.throwIfAborted()
      throw new DidResolutionError(did, describeFetchError(err), { url }, { cause: err })
    }
    if (res.status === 404) {
      const body = await readTextLimited(res, 4096).catch(() => '')
      if (PLC_NOT_REGISTERED.test(body)) throw new DidNotFoundError(did, { url })
      throw new DidResolutionError(did, 'not a PLC directory: it answered 404 without "DID not registered"', { url })
    }
    if (!res.ok) {
      await res.body?.cancel().catch(() => {})
      throw new DidResolutionError(did, `HTTP ${res.status}`, { url })
    }
    let entries: unknown
    try {
      entries = JSON.parse(await readTextLimited(res, PLC_LOG_MAX_BYTES))
    } catch (err) {
      options.signal?.throwIfAborted()
      throw new DidResolutionError(did, `bad audit log body: ${describeFetchError(err)}`, { url }, { cause: err })
    }
    try {
      return verifyPlcLog(did, entries)
    } catch (err) {
      if (err instanceof PlcLogInvalidError) throw new PlcLogInvalidError(did, err.reason, { index: err.index, cid: err.cid, source: url })
      throw err
    }
  }

  /**
   * Fetches, verifies and stores the directory's log of `did` (what a sync and an
   * `#identity` event do for a pinned did:plc). A log that does not extend the
   * stored one is refused (PlcLogConflictError) and the stored one stays.
   */
  async refresh (did: string, options: { signal?: AbortSignal } = {}): Promise<VerifiedPlcLog> {
    let fetched: VerifiedPlcLog
    let source = `plc:${this.plcUrl}`
    try {
      fetched = await this.fetchLog(did, options)
    } catch (err) {
      // the directory is down: a log verified earlier in this process (from peers) is kept instead
      const recent = this.#recent.get(did)
      if (!(err instanceof DidResolutionError) || recent === undefined) throw err
      fetched = recent.log
      source = recent.source
    }
    const stored = await this.storedLog(did)
    if (stored !== undefined) {
      try {
        comparePlcLogs(stored.log, fetched)
      } catch (err) {
        if (err instanceof PlcLogConflictError) throw new PlcLogConflictError(did, err.reason, { index: err.index, cid: err.cid, source })
        throw err
      }
    }
    await this.#keep(fetched, source)
    return fetched
  }

  async #keep (log: VerifiedPlcLog, source: string): Promise<void> {
    this.#recent.delete(log.did)
    this.#recent.set(log.did, { log, source })
    if (this.#recent.size > 1000) this.#recent.delete(this.#recent.keys().next().value as string)
    await this.store?.putPlcLog({ did: log.did, entries: log.entries, fetchedAt: new Date(this.#now()).toISOString(), source })
  }

  /** The stored log of `did`, verified again (the disk is not trusted more than a peer). */
  async storedLog (did: string): Promise<{ log: VerifiedPlcLog, record: StoredPlcLog } | undefined> {
    const record = await this.store?.getPlcLog(did)
    if (record === undefined) return undefined
    try {
      return { log: verifyPlcLog(did, record.entries), record }
    } catch (err) {
      log.error('stored PLC log of %s does not verify, ignoring it - %e', did, err)
      return undefined
    }
  }

  /**
   * A DID document without the directory: from the stored log, then the peers'
   * logs, each verified; a log that extends the stored one wins over it (and is
   * stored), a log that conflicts with it is refused. Throws DidResolutionError
   * listing every source's reason when nothing usable is found, and
   * DidNotFoundError (tombstoned) when the best log ends in a tombstone.
   */
  async resolveOffline (did: string, options: { signal?: AbortSignal, directoryError?: Error } = {}): Promise<OfflineResolution> {
    // nothing to fall back on: the directory's own error says it best
    if (this.store === undefined && this.#peers === undefined && options.directoryError !== undefined) throw options.directoryError
    const reasons: string[] = []
    const refused: OfflineResolution['refused'] = []
    if (options.directoryError !== undefined) reasons.push(`directory: ${options.directoryError.message}`)
    const stored = await this.storedLog(did)
    let best: { log: VerifiedPlcLog, source: string } | undefined = stored === undefined ? undefined : { log: stored.log, source: 'stored-log' }
    if (stored === undefined) reasons.push('stored-log: none')
    if (this.#peers !== undefined) {
      for await (const offered of this.#peers.findLogs(did, { signal: options.signal })) {
        if ('error' in offered) {
          reasons.push(`${offered.source}: ${offered.error.message}`)
          continue
        }
        try {
          const verified = verifyPlcLog(did, offered.entries)
          if (best !== undefined) {
            const relation = comparePlcLogs(best.log, verified)
            if (relation === 'same') continue
          }
          best = { log: verified, source: offered.source }
        } catch (err) {
          if (!(err instanceof IdentityError)) throw err
          log('log of %s from %s refused - %e', did, offered.source, err)
          reasons.push(`${offered.source}: ${err.message}`)
          refused.push({ source: offered.source, error: err })
        }
      }
    } else {
      reasons.push('peers: no network')
    }
    options.signal?.throwIfAborted()
    if (best === undefined) {
      const url = options.directoryError instanceof DidResolutionError ? options.directoryError.url : undefined
      throw new DidResolutionError(did, `no source could resolve it (${reasons.join('; ')})`, { url }, { cause: options.directoryError })
    }
    if (best.source !== 'stored-log') {
      await this.#keep(best.log, best.source)
    }
    if (best.log.data === null) throw new DidNotFoundError(did, { tombstoned: true })
    log('resolved %s without the directory, from %s (%d ops)', did, best.source, best.log.entries.length)
    return { document: plcDocument(best.log.data), source: best.source, log: best.log, refused }
  }
}

/**
 * The last link of the fetch chain, and the source of full and incremental repo
 * downloads: a DID's PDS over HTTP.
 *
 * - `com.atproto.sync.getRepo` (optionally `since` a rev) is streamed: the caller
 *   reads the CAR as it arrives. The download is bounded three ways: an idle
 *   timeout that fires when the body stops moving; a throughput floor, so a host
 *   that drips a byte now and then (never idle, never done) fails once a grace
 *   period is over and a whole window brought less than the floor; and an overall
 *   deadline as the last backstop. The floor is what keeps a slow host from holding
 *   one of the node's few sync slots for the 30 minutes of the deadline: a repo of
 *   a few MB at a normal rate is done within the grace period, and a large one at
 *   the floor's 4 KiB/s would take days, far past any useful download. (Bytes are
 *   counted as the sync reads them, so the floor is far below what a local disk
 *   can take.)
 * - `com.atproto.sync.getBlocks` takes many CIDs per request (batched by count and
 *   URL length), a few requests in flight. The reference PDS fails the whole request
 *   when any CID is missing and names the missing ones in its message; the broker
 *   then asks again for the rest, so one absent block does not hide its batch.
 *   Without a list of names it bisects. An answer that brings more than 64 blocks
 *   beyond those asked for is cut off (DownloadLimitError): a few duplicates are
 *   harmless, a stream of junk is not.
 */
import { logger } from '@libp2p/logger'
import { DownloadLimitError, PdsBlockNotFoundError, PdsResponseError, PdsUnavailableError } from '../errors.ts'
import { describeFetchError } from '../http/fetch.ts'
import { mapFetchError, xrpcGet, xrpcUrl, type FetchLike } from '../http/xrpc.ts'
import type { Block } from '../repo/block-store.ts'
import { readCar } from '../repo/car.ts'
import type { CID } from '../repo/cid.ts'
import { Alarm, parallel } from './parallel.ts'
import type { BlockBroker, BrokerOptions } from './broker.ts'

const log = logger('atmirror:blocks:pds')

/** Blocks a getBlocks answer may bring on top of one per CID asked for (duplicates). */
const UNWANTED_SLACK = 64

/** Finds a DID's PDS (an IdentityResolver fits). */
export interface PdsLocator {
  resolve: (did: string, options?: { signal?: AbortSignal }) => Promise<{ did: string, pds: string }>
  /** The fetch (with its address policy) the PDS it names is reached through. */
  readonly fetch?: FetchLike
}

export interface PdsClientInit {
  /** Overall deadline of one getBlocks request. @default 30_000 */
  timeoutMs?: number
  /** Overall deadline of one getRepo download. @default 1_800_000 (30 min) */
  repoTimeoutMs?: number
  /** A download fails when no byte arrives for this long. @default 30_000 */
  idleTimeoutMs?: number
  /**
   * The throughput floor of a getRepo download, in bytes per second: once
   * `rateGraceMs` is over, a download fails when a whole `rateWindowMs` brought
   * less than this. 0 turns the floor off.
   *
   * @default 4096
   */
  minBytesPerSecond?: number
  /**
   * How long a getRepo download may run before the floor applies (the host may
   * take a moment to start streaming a large repo).
   *
   * @default 30_000
   */
  rateGraceMs?: number
  /**
   * The window the floor is measured over.
   *
   * @default 30_000
   */
  rateWindowMs?: number
  /** @default the address policy's fetch with nothing relaxed (src/http/policy.ts) */
  fetch?: FetchLike
}

/** The throughput floor of one stream: `bytesPerSecond` over each `windowMs`, from `graceMs` on. */
interface RateFloor {
  bytesPerSecond: number
  graceMs: number
  windowMs: number
}

/** Bounded XRPC calls to a PDS, with atproto's error names mapped to atmirror errors. */
export class PdsClient {
  readonly #timeoutMs: number
  readonly #repoTimeoutMs: number
  readonly #idleTimeoutMs: number
  readonly #repoFloor: RateFloor | undefined
  readonly #fetch: FetchLike | undefined

  constructor (init: PdsClientInit = {}) {
    this.#timeoutMs = init.timeoutMs ?? 30_000
    this.#repoTimeoutMs = init.repoTimeoutMs ?? 1_800_000
    this.#idleTimeoutMs = init.idleTimeoutMs ?? 30_000
    const bytesPerSecond = init.minBytesPerSecond ?? 4096
    this.#repoFloor = bytesPerSecond > 0
      ? { bytesPerSecond, graceMs: Math.max(0, init.rateGraceMs ?? 30_000), windowMs: Math.max(1, init.rateWindowMs ?? 30_000) }
      : undefined
    this.#fetch = init.fetch
  }

  /**
   * Streams `com.atproto.sync.getRepo` (the whole repo, or the blocks newer than
   * `since`) as CAR bytes.
   *
   * @throws RepoNotFoundError, RepoTakendownError, RepoSuspendedError,
   * RepoDeactivatedError, PdsUnavailableError (unreachable, 5xx, deadline, stalled,
   * below the throughput floor), PdsResponseError
   */
  async * getRepo (pds: string, did: string, options: { since?: string, signal?: AbortSignal } = {}): AsyncGenerator<Uint8Array> {
    yield * this.#stream('com.atproto.sync.getRepo', pds, { did, since: options.since }, did, this.#repoTimeoutMs, options.signal, this.#repoFloor)
  }

  /**
   * `com.atproto.sync.getBlocks` for one batch: yields the blocks of the response
   * CAR (hash-checked by the CAR reader) that were asked for.
   *
   * @throws PdsBlockNotFoundError, or PdsResponseError naming the missing CIDs (the
   * reference PDS; see {@link blocksNotFound}), and the errors of {@link getRepo}
   */
  async * getBlocks (pds: string, did: string, cids: CID[], options: { signal?: AbortSignal } = {}): AsyncGenerator<Block> {
    const strings = cids.map(cid => cid.toString())
    const wanted = new Set(strings)
    const car = await readCar(this.#stream('com.atproto.sync.getBlocks', pds, { did, cids: strings }, did, this.#timeoutMs, options.signal), { signal: options.signal, allowNoRoots: true })
    // blocks nobody asked for are dropped, and a response made of them is cut off:
    // a few (duplicates) are tolerated, a stream of junk is not
    const maxUnwanted = UNWANTED_SLACK + strings.length
    let unwanted = 0
    for await (const block of car.blocks) {
      if (wanted.delete(block.cid.toString())) {
        yield block
      } else if (++unwanted > maxUnwanted) {
        throw new DownloadLimitError(`getBlocks answered more than ${maxUnwanted} blocks that were not asked for`, { did, url: xrpcUrl(pds, 'com.atproto.sync.getBlocks', { did }).href, limit: 'unwantedBlocks', max: maxUnwanted })
      }
    }
  }

  async * #stream (nsid: string, pds: string, params: Record<string, string | string[] | undefined>, did: string, timeoutMs: number, signal: AbortSignal | undefined, floor?: RateFloor): AsyncGenerator<Uint8Array> {
    const idle = new IdleWatch(this.#idleTimeoutMs, signal)
    let slow: string | undefined
    const url = xrpcUrl(pds, nsid, params).href
    let received = 0
    const fail = (err: unknown): unknown => {
      if (signal?.aborted === true) return signal.reason ?? err
      if (slow !== undefined) return new PdsUnavailableError(`${nsid}: PDS too slow, ${slow}`, { did, url }, { cause: err })
      if (idle.fired) return new PdsUnavailableError(`${nsid}: PDS stalled, no data for ${this.#idleTimeoutMs} ms after ${received} bytes`, { did, url }, { cause: err })
      const mapped = mapFetchError(err, nsid, url, { did })
      // the body broke off: say so, with how far it got
      if (received > 0 && mapped instanceof PdsUnavailableError) return new PdsUnavailableError(`${nsid}: download interrupted after ${received} bytes (${describeFetchError(err)})`, { did, url }, { cause: err })
      return mapped
    }
    const watch = floor === undefined
      ? undefined
      : watchRate(floor, () => received, (reason) => {
        slow = reason
        idle.abort(reason)
      })
    idle.arm()
    try {
      let res: Response
      try {
        res = await xrpcGet(pds, nsid, params, { signal: idle.signal, timeoutMs, fetch: this.#fetch, did, accept: 'application/vnd.ipld.car' })
      } catch (err) {
        throw fail(err)
      }
      if (res.body === null) return
      idle.arm()
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          idle.arm()
          received += chunk.byteLength
          yield chunk
        }
      } catch (err) {
        throw fail(err)
      }
    } finally {
      watch?.stop()
      idle.end()
    }
  }
}

/**
 * The idle timeout of one streamed download: `signal` (the caller's, joined) aborts
 * when no `arm()` came for `ms`, or at `abort(reason)`; `end()` disarms it and aborts
 * the request, so a consumer that stops early does not leave the response streaming.
 */
export class IdleWatch {
  readonly signal: AbortSignal
  readonly #idle = new AbortController()
  readonly #ms: number
  readonly #alarm: Alarm

  constructor (ms: number, signal?: AbortSignal) {
    this.#ms = ms
    this.signal = signal === undefined ? this.#idle.signal : AbortSignal.any([signal, this.#idle.signal])
    this.#alarm = new Alarm(() => { this.#idle.abort(new DOMException('no data', 'TimeoutError')) })
  }

  /** Whether it fired (no data for `ms`) or was aborted with a reason of its own. */
  get fired (): boolean {
    return this.#idle.signal.aborted
  }

  /** Data came: the next `ms` start now. */
  arm (): void {
    this.#alarm.set(this.#ms)
  }

  /** Cuts the download off as timed out (a throughput floor not met). */
  abort (reason: string): void {
    this.#idle.abort(new DOMException(reason, 'TimeoutError'))
  }

  end (): void {
    this.#alarm.clear()
    if (!this.signal.aborted) this.#idle.abort(new DOMException('done', 'AbortError'))
  }
}

/**
 * Calls `tooSlow` when a whole window after the grace period brought fewer bytes
 * than the floor asks for. One timer: the grace period, then a tick per window.
 */
function watchRate (floor: RateFloor, received: () => number, tooSlow: (reason: string) => void): { stop: () => void } {
  const needed = floor.bytesPerSecond * floor.windowMs / 1000
  let mark = 0
  let timer: NodeJS.Timeout | undefined
  const tick = (): void => {
    const got = received() - mark
    if (got < needed) {
      tooSlow(`${got} bytes in the last ${floor.windowMs} ms, below the floor of ${floor.bytesPerSecond} bytes/s`)
      return
    }
    mark = received()
    timer = setTimeout(tick, floor.windowMs)
  }
  const start = (): void => {
    mark = received()
    timer = setTimeout(tick, floor.windowMs)
  }
  timer = setTimeout(start, floor.graceMs)
  return { stop: () => { clearTimeout(timer) } }
}

/** A getBlocks failure that means "some of these CIDs are not there", with the CIDs when the PDS names them. */
export function blocksNotFound (err: unknown): { missing?: string[] } | undefined {
  const notFound = err instanceof PdsBlockNotFoundError ||
    (err instanceof PdsResponseError && err.status === 400 && /could not find cids?/i.test(err.message))
  if (!notFound) return undefined
  const list = /could not find cids?:\s*([^)]*)/i.exec((err as Error).message)?.[1]
  const missing = list?.split(/[\s,]+/).filter(s => /^b[a-z2-7]+$/.test(s))
  return missing !== undefined && missing.length > 0 ? { missing } : {}
}

export interface PdsBrokerInit extends PdsClientInit {
  /** CIDs per getBlocks request (further bounded by `maxUrlLength`). @default 200 */
  batchSize?: number
  /**
   * Longest request URL. Node's HTTP server refuses request heads over 16 KiB, so
   * batches stay well under. @default 8000
   */
  maxUrlLength?: number
  /** getBlocks requests in flight. @default 4 */
  concurrency?: number
  /** A client to share (otherwise one is made from this init). */
  client?: PdsClient
}

/** Fetches blocks from the DID's PDS with batched `getBlocks`. */
export class PdsBroker implements BlockBroker {
  readonly name = 'pds'
  readonly #identity: PdsLocator
  readonly #client: PdsClient
  readonly #batchSize: number
  readonly #maxUrlLength: number
  readonly #concurrency: number

  constructor (components: { identity: PdsLocator }, init: PdsBrokerInit = {}) {
    this.#identity = components.identity
    this.#client = init.client ?? new PdsClient({ fetch: components.identity.fetch, ...init })
    this.#batchSize = init.batchSize ?? 200
    this.#maxUrlLength = init.maxUrlLength ?? 8000
    this.#concurrency = init.concurrency ?? 4
  }

  async * getMany (cids: CID[], options: BrokerOptions): AsyncGenerator<Block> {
    if (cids.length === 0) return
    if (options.did === undefined) throw new PdsBlockNotFoundError('the PDS broker needs the DID whose repo the blocks belong to')
    const did = options.did
    const pds = options.pds ?? (await this.#identity.resolve(did, { signal: options.signal })).pds
    const batches = this.#batches(pds, did, cids)
    let firstError: Error | undefined
    const results = parallel(batches, async (batch) => {
      try {
        return await this.#fetchBatch(pds, did, batch, options.signal)
      } catch (err) {
        if (options.signal?.aborted === true) throw err
        firstError ??= err as Error
        log('getBlocks failed for %d CIDs of %s: %e', batch.length, did, err)
        return []
      }
    }, this.#concurrency)
    for await (const blocks of results) yield * blocks
    if (firstError !== undefined) throw firstError
  }

  /** One batch; a "not found" narrows the batch and asks again, so only absent CIDs stay missing. */
  async #fetchBatch (pds: string, did: string, batch: CID[], signal: AbortSignal | undefined): Promise<Block[]> {
    const blocks: Block[] = []
    try {
      for await (const block of this.#client.getBlocks(pds, did, batch, { signal })) blocks.push(block)
      return blocks
    } catch (err) {
      const notFound = blocksNotFound(err)
      if (notFound === undefined) throw err
      const missing = notFound.missing
      if (missing !== undefined) {
        const absent = new Set(missing)
        const rest = batch.filter(cid => !absent.has(cid.toString()))
        if (rest.length === batch.length) return [] // names nothing we asked for: give up on the batch
        if (rest.length === 0) return []
        return await this.#fetchBatch(pds, did, rest, signal)
      }
      if (batch.length === 1) return []
      const half = Math.ceil(batch.length / 2)
      return [
        ...await this.#fetchBatch(pds, did, batch.slice(0, half), signal),
        ...await this.#fetchBatch(pds, did, batch.slice(half), signal)
      ]
    }
  }

  * #batches (pds: string, did: string, cids: CID[]): Generator<CID[]> {
    const baseLength = xrpcUrl(pds, 'com.atproto.sync.getBlocks', { did }).href.length
    let batch: CID[] = []
    let length = baseLength
    for (const cid of cids) {
      const add = 6 + cid.toString().length // '&cids=' + CID
      if (batch.length > 0 && (batch.length >= this.#batchSize || length + add > this.#maxUrlLength)) {
        yield batch
        batch = []
        length = baseLength
      }
      batch.push(cid)
      length += add
    }
    if (batch.length > 0) yield batch
  }
}

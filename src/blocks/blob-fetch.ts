/**
 * The fetch chain for blobs: the same order as for blocks (local, then Bitswap,
 * then the DID's PDS), but blobs are streamed, never held whole.
 *
 * A {@link BlobSource} opens a blob as a stream of chunks, or says it does not have
 * it. The fetcher hands the first stream it gets to the caller's sink (the mirror's
 * blob store writes it to a temp file) through {@link hashChecked}, which hashes
 * the bytes as they pass, counts them against the size cap and, only once the last
 * chunk has passed and the digest matches the CID, ends; on a mismatch it throws
 * instead, so the sink never reaches the point where it would keep the bytes. A
 * source whose stream fails (a tampered blob, a broken connection) is recorded and
 * the next source is asked; a blob over the cap is refused at once (every source
 * holds the same bytes).
 *
 * `com.atproto.sync.getBlob` is bounded like `getRepo`: an idle timeout while the
 * body moves and an overall deadline. Bitswap only carries blobs up to its block
 * size (a larger blob is not a block any peer can send).
 */
import { createHash } from 'node:crypto'
import { logger } from '@libp2p/logger'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import {
  AllSourcesFailedError,
  BlobMismatchError,
  BlobTooLargeError,
  BlockNotFoundError,
  PdsBlobNotFoundError,
  PdsError,
  PdsResponseError,
  PdsUnavailableError,
  UnsupportedCidError
} from '../errors.ts'
import { describeFetchError } from '../http/fetch.ts'
import { mapFetchError, xrpcGet, xrpcUrl, type FetchLike } from '../http/xrpc.ts'
import { RAW, SHA2_256 } from '../repo/cid.ts'
import type { BlockBroker } from './broker.ts'
import { IdleWatch, type PdsLocator } from './pds.ts'

const log = logger('atmirror:blocks:blobs')

/** The largest blob asked for, and served, over Bitswap (a block larger than this is not sent by peers). @default 1 MiB */
export const BITSWAP_MAX_BLOB = 1024 * 1024

export interface BlobFetchOptions {
  /** The repo that references the blob: names it in errors and picks its PDS. */
  did: string
  /** The DID's PDS (otherwise resolved from `did`). */
  pds?: string
  /** The size the record declares (untrusted: the stream is counted anyway). */
  size?: number
  /** The cap: a larger blob is refused (BlobTooLargeError). */
  maxBytes: number
  signal?: AbortSignal
}

/** A blob being read from a source. */
export interface BlobStream {
  /** The size the source announces (content-length), if any. */
  size?: number
  /** Named in errors. */
  url?: string
  chunks: AsyncIterable<Uint8Array>
}

export interface BlobSource {
  /** `local`, `bitswap`, `pds`. */
  readonly name: string
  /** The blob as a stream, or `undefined` when this source does not have it; throws when it fails. */
  open: (cid: CID, options: BlobFetchOptions) => Promise<BlobStream | undefined>
  /** Whether the source still has the blob, without downloading it (false: it says it does not); throws when it cannot tell. */
  has?: (cid: CID, options: BlobFetchOptions) => Promise<boolean>
}

/** Where a fetched blob came from, and what the sink made of it. */
export interface FetchedBlob<T> {
  source: string
  /** Bytes that passed the hash check. */
  bytes: number
  result: T
}

/**
 * `chunks` as they come, hashed and counted on the way: throws BlobTooLargeError
 * past `maxBytes` and BlobMismatchError after the last chunk when the bytes do not
 * hash to `cid` (a raw sha2-256 CIDv1; anything else is UnsupportedCidError before a
 * byte is read). `onBytes` sees the running count.
 */
export async function * hashChecked (cid: CID, chunks: AsyncIterable<Uint8Array>, options: { maxBytes: number, did?: string, url?: string, source?: string, onBytes?: (n: number) => void }): AsyncGenerator<Uint8Array> {
  assertBlobCid(cid)
  const hash = createHash('sha256')
  let total = 0
  for await (const chunk of chunks) {
    total += chunk.byteLength
    if (total > options.maxBytes) throw new BlobTooLargeError(cid, { size: total, max: options.maxBytes, did: options.did, url: options.url })
    hash.update(chunk)
    options.onBytes?.(total)
    yield chunk
  }
  const digest = hash.digest()
  if (!digest.equals(cid.multihash.digest)) {
    const actual = CID.createV1(RAW, Digest.create(SHA2_256, digest))
    throw new BlobMismatchError(cid, { actual, did: options.did, url: options.url, source: options.source })
  }
}

/** Throws UnsupportedCidError unless `cid` is what a blob is: CIDv1, raw (0x55), sha2-256. */
function assertBlobCid (cid: CID): void {
  if (cid.version !== 1 || cid.code !== RAW) throw new UnsupportedCidError(cid, `a blob is a CIDv1 raw (0x55) link, got version ${cid.version} codec 0x${cid.code.toString(16)}`)
  if (cid.multihash.code !== SHA2_256 || cid.multihash.size !== 32) throw new UnsupportedCidError(cid, 'a blob is hashed with sha2-256')
}

export interface BlobFetcherComponents {
  /** Asked in order. */
  sources: BlobSource[]
}

/** Asks each source in turn and streams the first answer into a sink, hash-checked. */
export class BlobFetcher {
  readonly #sources: BlobSource[]

  constructor (components: BlobFetcherComponents) {
    this.#sources = components.sources
  }

  /** The source named `name`, if the chain has one. */
  source (name: string): BlobSource | undefined {
    return this.#sources.find(source => source.name === name)
  }

  /**
   * Streams the blob into `sink` from the first source that has it. The sink must
   * keep the bytes only once its iteration ends without an error (that is when the
   * hash has matched).
   *
   * @throws BlobTooLargeError (declared or counted past the cap, whatever the
   * source), AllSourcesFailedError listing each source's reason (BlockNotFoundError
   * for "not here", BlobMismatchError for tampered bytes, PdsBlobNotFoundError, …)
   */
  async fetch<T> (cid: CID, sink: (chunks: AsyncIterable<Uint8Array>) => Promise<T>, options: BlobFetchOptions & { onBytes?: (n: number) => void }): Promise<FetchedBlob<T>> {
    assertBlobCid(cid)
    if (options.size !== undefined && options.size > options.maxBytes) {
      throw new BlobTooLargeError(cid, { size: options.size, max: options.maxBytes, did: options.did })
    }
    const errors: Array<{ source: string, error: Error }> = []
    for (const source of this.#sources) {
      options.signal?.throwIfAborted()
      let stream: BlobStream | undefined
      try {
        stream = await source.open(cid, options)
      } catch (err) {
        if (options.signal?.aborted === true || err instanceof BlobTooLargeError) throw err
        errors.push({ source: source.name, error: err as Error })
        continue
      }
      if (stream === undefined) {
        errors.push({ source: source.name, error: new BlockNotFoundError(cid, { source: source.name }) })
        continue
      }
      if (stream.size !== undefined && stream.size > options.maxBytes) {
        await cancel(stream.chunks)
        throw new BlobTooLargeError(cid, { size: stream.size, max: options.maxBytes, did: options.did, url: stream.url })
      }
      let bytes = 0
      try {
        const result = await sink(hashChecked(cid, stream.chunks, {
          maxBytes: options.maxBytes,
          did: options.did,
          url: stream.url,
          source: source.name,
          onBytes: (n) => { bytes = n; options.onBytes?.(n) }
        }))
        return { source: source.name, bytes, result }
      } catch (err) {
        if (options.signal?.aborted === true || err instanceof BlobTooLargeError) throw err
        log.error('blob %c from %s refused: %e', cid, source.name, err)
        errors.push({ source: source.name, error: err as Error })
      }
    }
    throw new AllSourcesFailedError(cid, errors)
  }
}

async function cancel (chunks: AsyncIterable<Uint8Array>): Promise<void> {
  const iterator = chunks[Symbol.asyncIterator]()
  await iterator.return?.()
}

/** Blobs the mirror already has (its blob store). */
export class LocalBlobSource implements BlobSource {
  readonly name = 'local'
  readonly #open: (cid: CID) => Promise<BlobStream | undefined>

  constructor (components: { open: (cid: CID) => Promise<BlobStream | undefined> }) {
    this.#open = components.open
  }

  async open (cid: CID): Promise<BlobStream | undefined> {
    return await this.#open(cid)
  }
}

/**
 * Blobs from peers, through a block broker (the Bitswap one): only blobs the record
 * declares small enough for a block. The broker hash-checks what it yields.
 */
export class BrokerBlobSource implements BlobSource {
  readonly name: string
  readonly #broker: BlockBroker
  readonly #maxBytes: number

  constructor (components: { broker: BlockBroker }, init: { maxBytes?: number } = {}) {
    this.#broker = components.broker
    this.name = components.broker.name
    this.#maxBytes = init.maxBytes ?? BITSWAP_MAX_BLOB
  }

  async open (cid: CID, options: BlobFetchOptions): Promise<BlobStream | undefined> {
    // unknown or large: peers cannot send it as one block
    if (options.size === undefined || options.size > this.#maxBytes) return undefined
    for await (const block of this.#broker.getMany([cid], { did: options.did, pds: options.pds, signal: options.signal })) {
      if (block.cid.equals(cid)) return { size: block.bytes.byteLength, chunks: (async function * () { yield block.bytes })() }
    }
    return undefined
  }
}

export interface PdsBlobSourceInit {
  /** Overall deadline of one getBlob download. @default 1_800_000 (30 min) */
  timeoutMs?: number
  /** A download fails when no byte arrives for this long. @default 30_000 */
  idleTimeoutMs?: number
  /** @default the address policy's fetch with nothing relaxed (src/http/policy.ts) */
  fetch?: FetchLike
}

/** `com.atproto.sync.getBlob` on the DID's PDS, streamed. */
export class PdsBlobSource implements BlobSource {
  readonly name = 'pds'
  readonly #identity: PdsLocator
  readonly #timeoutMs: number
  readonly #idleTimeoutMs: number
  readonly #fetch: FetchLike | undefined

  constructor (components: { identity: PdsLocator }, init: PdsBlobSourceInit = {}) {
    this.#identity = components.identity
    this.#timeoutMs = init.timeoutMs ?? 1_800_000
    this.#idleTimeoutMs = init.idleTimeoutMs ?? 30_000
    this.#fetch = init.fetch ?? components.identity.fetch
  }

  /** Asks for the blob and stops at the answer's headers: false when the PDS says it has no such blob (taken down or deleted). */
  async has (cid: CID, options: BlobFetchOptions): Promise<boolean> {
    try {
      const stream = await this.open(cid, { ...options, maxBytes: Number.MAX_SAFE_INTEGER })
      await stream.chunks[Symbol.asyncIterator]().return?.()
      return true
    } catch (err) {
      if (err instanceof PdsBlobNotFoundError) return false
      throw err
    }
  }

  /**
   * @throws PdsBlobNotFoundError when the PDS says it has no such blob (a blob taken
   * down answers so too), the PdsError family otherwise
   */
  async open (cid: CID, options: BlobFetchOptions): Promise<BlobStream> {
    const { did, signal } = options
    const pds = options.pds ?? (await this.#identity.resolve(did, { signal })).pds
    const nsid = 'com.atproto.sync.getBlob'
    const params = { did, cid: cid.toString() }
    const url = xrpcUrl(pds, nsid, params).href
    const idleTimeoutMs = this.#idleTimeoutMs
    const idle = new IdleWatch(idleTimeoutMs, signal)
    let received = 0
    const fail = (err: unknown): unknown => {
      if (signal?.aborted === true) return signal.reason ?? err
      if (idle.fired) return new PdsUnavailableError(`${nsid}: PDS stalled, no data for ${idleTimeoutMs} ms after ${received} bytes`, { did, url, cid }, { cause: err })
      if (err instanceof PdsResponseError && /BlobNotFound|blob not found/i.test(err.message)) return new PdsBlobNotFoundError(`${nsid}: the PDS has no such blob (${err.message})`, { did, url, cid, status: err.status })
      const mapped = err instanceof PdsError ? err : mapFetchError(err, nsid, url, { did })
      if (received > 0 && mapped instanceof PdsUnavailableError) return new PdsUnavailableError(`${nsid}: download interrupted after ${received} bytes (${describeFetchError(err)})`, { did, url, cid }, { cause: err })
      return mapped
    }
    idle.arm()
    let res: Response
    try {
      res = await xrpcGet(pds, nsid, params, { signal: idle.signal, timeoutMs: this.#timeoutMs, fetch: this.#fetch, did, accept: '*/*' })
    } catch (err) {
      const failure = fail(err)
      idle.end()
      throw failure
    }
    const length = Number(res.headers.get('content-length') ?? NaN)
    const body = res.body
    if (Number.isSafeInteger(length) && length > options.maxBytes) {
      await body?.cancel().catch(() => {})
      idle.end()
      throw new BlobTooLargeError(cid, { size: length, max: options.maxBytes, did, url })
    }
    const chunks = (async function * () {
      try {
        if (body === null) return
        idle.arm()
        for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
          idle.arm()
          received += chunk.byteLength
          yield chunk
        }
      } catch (err) {
        throw fail(err)
      } finally {
        idle.end()
      }
    })()
    return {
      size: Number.isSafeInteger(length) ? length : undefined,
      url,
      chunks: {
        // a consumer that stops early (or never starts) must not leave the response streaming
        [Symbol.asyncIterator]: () => ({
          next: async () => await chunks.next(),
          return: async () => {
            idle.end()
            return await chunks.return(undefined)
          }
        })
      }
    }
  }
}

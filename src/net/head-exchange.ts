/**
 * Head exchange (`/atmirror/head/1.0.0`): one peer asks another for the latest
 * signed commit it holds for a DID. One request and one answer per stream, each a
 * single length-prefixed DRISL map:
 *
 * ```
 * asker → responder   varint(len) DRISL { did: string }
 * responder → asker   varint(len) DRISL { cid: CID-link, block: bytes }
 *                  or varint(len) DRISL { error: 'NotFound' | 'InvalidRequest' | 'InternalError' }
 * ```
 *
 * Both sides cut off what they did not ask for: frames above a cap (a commit block
 * is well under 1 KB), a stream that stays open past the time limit, and inbound
 * streams beyond a concurrency limit. The asker also checks that the block hashes
 * to the CID and decodes as a commit for the DID it asked about; the signature is
 * checked by the caller, which knows the DID's key (see src/net/peer-head-resolver.ts).
 * docs/PROTOCOL.md ("Head exchange") describes the bytes.
 */
import { logger } from '@libp2p/logger'
import { varint } from 'multiformats'
import { CommitDidMismatchError, PeerError, PeerHeadNotFoundError, PeerProtocolError, PeerTimeoutError, RepoVerificationError } from '../errors.ts'
import { isServable } from '../mirror/status-policy.ts'
import { decodeCbor, encodeCbor } from '../repo/cbor.ts'
import { DAG_CBOR, asCid, parseCid, verifyBlock, type CID } from '../repo/cid.ts'
import { decodeCommit, type Commit } from '../repo/commit.ts'
import { isValidDid } from '../repo/syntax.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

const log = logger('atmirror:net:head')

/** The protocol id; the version changes when the wire format does. */
export const HEAD_PROTOCOL = '/atmirror/head/1.0.0'

/** Error codes a responder may send. */
export type HeadExchangeErrorCode = 'NotFound' | 'InvalidRequest' | 'InternalError'

/** A signed commit block as this node serves it. */
export interface LocalHead {
  cid: CID
  bytes: Uint8Array
}

/** Where the responder gets what it serves. */
export interface LocalHeadSource {
  /** The signed commit block of the repo's current state, or `undefined` when not served here. */
  getLocalHead: (did: string, options?: { signal?: AbortSignal }) => Promise<LocalHead | undefined>
}

/** The part of a stored repo state that decides whether it is served (see mirror/status-policy.ts). */
export interface ServableState {
  status: string
}

/** What {@link storeHeadSource} reads (MirrorStore fits). */
export interface HeadStore {
  pins: { has: (did: string) => Promise<boolean> }
  getState: (did: string) => Promise<(ServableState & { commit: string }) | undefined>
  getBlock: (cid: CID, options?: { signal?: AbortSignal }) => Promise<Uint8Array | undefined>
}

/** Serves the commit of each pinned, servable repo's stored state. */
export function storeHeadSource (store: HeadStore): LocalHeadSource {
  return {
    async getLocalHead (did, options = {}) {
      if (!await store.pins.has(did)) return undefined
      const state = await store.getState(did)
      if (!isServable(state)) return undefined
      const cid = parseCid(state.commit)
      const bytes = await store.getBlock(cid, options)
      if (bytes === undefined) {
        log.error('stored commit %c of %s is missing from the blockstore', cid, did)
        return undefined
      }
      return { cid, bytes }
    }
  }
}

/** A commit a peer answered with: the block hashes to `cid` and decodes as a commit for the DID asked about. The signature is NOT checked yet. */
export interface PeerHeadAnswer {
  peer: PeerId
  cid: CID
  bytes: Uint8Array
  commit: Commit
}

export interface HeadExchangeComponents {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle' | 'dialProtocol'>
  /** Omit to run as an asker only (answers every request with NotFound). */
  heads?: LocalHeadSource
}

export interface HeadExchangeInit {
  /** @default '/atmirror/head/1.0.0' */
  protocol?: string
  /** Largest request frame accepted (payload bytes). @default 4096 */
  maxRequestBytes?: number
  /** Largest answer frame accepted (payload bytes); a commit block is < 1 KB. @default 16384 */
  maxResponseBytes?: number
  /** Time limit for a whole exchange, on either side. @default 5000 */
  timeoutMs?: number
  /** Inbound streams served at once over all connections; more are reset. @default 64 */
  maxConcurrentInbound?: number
  /** Inbound streams per connection (libp2p's limit). @default 8 */
  maxInboundStreamsPerConnection?: number
  /** Outbound streams per connection (libp2p's limit). @default 16 */
  maxOutboundStreamsPerConnection?: number
}

/**
 * Both ends of the head exchange. `start()` registers the responder; `requestHead()`
 * asks a peer. Register it in the node as a `Startable`.
 */
export class HeadExchange {
  readonly protocol: string
  readonly #libp2p: HeadExchangeComponents['libp2p']
  readonly #heads: LocalHeadSource | undefined
  readonly #maxRequestBytes: number
  readonly #maxResponseBytes: number
  readonly #timeoutMs: number
  readonly #maxConcurrentInbound: number
  readonly #maxInboundStreams: number
  readonly #maxOutboundStreams: number
  #inbound = 0
  #stats = { requests: 0, served: 0 }
  #started = false

  constructor (components: HeadExchangeComponents, init: HeadExchangeInit = {}) {
    this.#libp2p = components.libp2p
    this.#heads = components.heads
    this.protocol = init.protocol ?? HEAD_PROTOCOL
    this.#maxRequestBytes = init.maxRequestBytes ?? 4096
    this.#maxResponseBytes = init.maxResponseBytes ?? 16384
    this.#timeoutMs = init.timeoutMs ?? 5000
    this.#maxConcurrentInbound = init.maxConcurrentInbound ?? 64
    this.#maxInboundStreams = init.maxInboundStreamsPerConnection ?? 8
    this.#maxOutboundStreams = init.maxOutboundStreamsPerConnection ?? 16
  }

  /** Streams being served right now. */
  get inbound (): number {
    return this.#inbound
  }

  /** Responder side: well-formed requests read, and how many were answered with a head. */
  stats (): { requests: number, served: number } {
    return { ...this.#stats }
  }

  isStarted (): boolean {
    return this.#started
  }

  async start (): Promise<void> {
    if (this.#started) return
    await this.#libp2p.handle(this.protocol, (stream, connection) => { void this.#serve(stream, connection) }, {
      maxInboundStreams: this.#maxInboundStreams,
      maxOutboundStreams: this.#maxOutboundStreams
    })
    this.#started = true
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    await this.#libp2p.unhandle(this.protocol)
  }

  /**
   * Asks `peer` for its head of `did`. Throws {@link PeerHeadNotFoundError} when the
   * peer holds none, {@link PeerTimeoutError} / {@link PeerProtocolError} when it
   * misbehaves, CidMismatchError / CommitInvalidError / CommitDidMismatchError when
   * its block is not a commit for `did`. The caller must still check the signature.
   */
  async requestHead (peer: PeerId, did: string, options: { signal?: AbortSignal } = {}): Promise<PeerHeadAnswer> {
    const timeout = AbortSignal.timeout(this.#timeoutMs)
    const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout])
    const peerName = peer.toString()
    let stream: Stream | undefined
    try {
      stream = await this.#libp2p.dialProtocol(peer, this.protocol, { signal })
      const onAbort = (): void => { stream?.abort(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason))) }
      signal.addEventListener('abort', onAbort, { once: true })
      try {
        await send(stream, encodeFrame(encodeCbor({ did })), signal)
        await stream.close({ signal })
        const frame = await readFrame(stream, this.#maxResponseBytes, { peer: peerName, did })
        return { peer, ...parseAnswer(frame, did, peerName) }
      } finally {
        signal.removeEventListener('abort', onAbort)
      }
    } catch (err) {
      stream?.abort(err instanceof Error ? err : new Error(String(err)))
      options.signal?.throwIfAborted()
      if (timeout.aborted) throw new PeerTimeoutError({ peer: peerName, did, ms: this.#timeoutMs })
      if (err instanceof PeerError || err instanceof RepoVerificationError) throw err
      throw new PeerError(`head exchange failed: ${(err as Error).message}`, { peer: peerName, did }, { cause: err })
    }
  }

  async #serve (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer
    if (this.#inbound >= this.#maxConcurrentInbound) {
      log('busy (%d streams): resetting head request from %p', this.#inbound, peer)
      stream.abort(new PeerError('too many concurrent head requests'))
      return
    }
    this.#inbound++
    const signal = AbortSignal.timeout(this.#timeoutMs)
    const onAbort = (): void => { stream.abort(new PeerTimeoutError({ peer: peer.toString(), ms: this.#timeoutMs })) }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      const frame = await readFrame(stream, this.#maxRequestBytes, { peer: peer.toString() })
      const did = parseRequest(frame)
      let answer: Record<string, unknown>
      if (did === undefined) {
        log('malformed head request from %p', peer)
        answer = { error: 'InvalidRequest' }
      } else {
        this.#stats.requests++
        answer = await this.#answer(did, signal)
        if (answer.error === undefined) this.#stats.served++
        log.trace('head request from %p for %s: %s', peer, did, answer.error ?? 'found')
      }
      let bytes = encodeCbor(answer)
      if (bytes.byteLength > this.#maxResponseBytes) {
        log.error('head block for %s too large to serve (%d bytes)', did, bytes.byteLength)
        bytes = encodeCbor({ error: 'InternalError' })
      }
      await send(stream, encodeFrame(bytes), signal)
      await stream.close({ signal })
    } catch (err) {
      log('head request from %p cut off: %e', peer, err)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      signal.removeEventListener('abort', onAbort)
      this.#inbound--
    }
  }

  async #answer (did: string, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (this.#heads === undefined) return { error: 'NotFound' }
    try {
      const head = await this.#heads.getLocalHead(did, { signal })
      return head === undefined ? { error: 'NotFound' } : { cid: head.cid, block: head.bytes }
    } catch (err) {
      if (signal.aborted) throw err
      log.error('could not read local head of %s: %e', did, err)
      return { error: 'InternalError' }
    }
  }
}

/** A frame: unsigned LEB128 varint of the payload length, then the payload. */
export function encodeFrame (payload: Uint8Array): Uint8Array {
  const headerLength = varint.encodingLength(payload.byteLength)
  const out = new Uint8Array(headerLength + payload.byteLength)
  varint.encodeTo(payload.byteLength, out)
  out.set(payload, headerLength)
  return out
}

/** A varint of more than 4 bytes cannot encode a length we accept (4 bytes = 2^28). */
const MAX_FRAME_VARINT_BYTES = 4

/**
 * Reads exactly one frame of at most `maxBytes` payload bytes. Throws
 * {@link PeerProtocolError} on an oversized, non-minimal or truncated frame; the
 * caller bounds it in time by aborting the stream.
 */
export async function readFrame (stream: AsyncIterable<Uint8Array | { subarray: () => Uint8Array }>, maxBytes: number, context: { peer?: string, did?: string } = {}): Promise<Uint8Array> {
  const header = new Uint8Array(MAX_FRAME_VARINT_BYTES)
  let headerLength = 0
  let length = -1
  let payload: Uint8Array | undefined
  let filled = 0
  for await (const chunk of stream) {
    const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
    let offset = 0
    while (length < 0 && offset < bytes.byteLength) {
      // one byte at a time until multiformats can decode the header: the rest of the chunk is payload
      header[headerLength++] = bytes[offset++] as number
      try {
        length = varint.decode(header.subarray(0, headerLength))[0]
      } catch (err) {
        if ((err as Error).message.includes('minimal')) throw new PeerProtocolError('frame length varint not minimal', context)
        if (headerLength >= MAX_FRAME_VARINT_BYTES) throw new PeerProtocolError('frame length varint too long', context)
        continue
      }
      if (length === 0) throw new PeerProtocolError('empty frame', context)
      if (length > maxBytes) throw new PeerProtocolError(`frame of ${length} bytes exceeds the ${maxBytes}-byte cap`, context)
      payload = new Uint8Array(length)
    }
    if (payload === undefined) continue
    const take = Math.min(bytes.byteLength - offset, length - filled)
    payload.set(bytes.subarray(offset, offset + take), filled)
    filled += take
    if (filled === length) return payload
  }
  throw new PeerProtocolError(length < 0 ? 'stream ended before a frame' : `stream ended after ${filled} of ${length} frame bytes`, context)
}

function parseRequest (frame: Uint8Array): string | undefined {
  let value: unknown
  try {
    value = decodeCbor(frame)
  } catch {
    return undefined
  }
  if (!isPlainMap(value)) return undefined
  const did = value.did
  return isValidDid(did) ? did : undefined
}

function parseAnswer (frame: Uint8Array, did: string, peer: string): Omit<PeerHeadAnswer, 'peer'> {
  const context = { peer, did }
  let value: unknown
  try {
    value = decodeCbor(frame)
  } catch (err) {
    throw new PeerProtocolError('answer is not DRISL', context, { cause: err })
  }
  if (!isPlainMap(value)) throw new PeerProtocolError('answer is not a map', context)
  if (value.error !== undefined) {
    if (typeof value.error !== 'string') throw new PeerProtocolError('error is not a string', context)
    if (value.error === 'NotFound') throw new PeerHeadNotFoundError('peer holds no head', context)
    throw new PeerError(`peer answered ${JSON.stringify(value.error.slice(0, 64))}`, context)
  }
  const cid = asCid(value.cid)
  if (cid === null) throw new PeerProtocolError('cid is not a CID link', context)
  const bytes = value.block
  if (!(bytes instanceof Uint8Array)) throw new PeerProtocolError('block is not bytes', context)
  if (cid.code !== DAG_CBOR) throw new PeerProtocolError('commit CID is not DAG-CBOR', context)
  verifyBlock(cid, bytes)
  const commit = decodeCommit(bytes, cid)
  if (commit.did !== did) throw new CommitDidMismatchError(did, commit.did, { cid })
  return { cid, bytes, commit }
}

function isPlainMap (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Uint8Array) && asCid(value) === null
}

async function send (stream: Stream, bytes: Uint8Array, signal: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain({ signal })
}


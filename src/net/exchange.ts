/**
 * One request, one answer per libp2p stream, each a single length-prefixed DRISL
 * map: the mechanism shared by head exchange (head-exchange.ts) and PLC log
 * exchange (plc-exchange.ts). A request asks about one DID (`{ did }`); each
 * protocol keeps its own checks of it and of the answer, and says what it holds for
 * a DID. This module counts the requests, and bounds both sides the same way:
 * frames above a cap, a stream open past the time limit, inbound streams beyond a
 * concurrency limit.
 */
import { varint } from 'multiformats'
import { PeerError, PeerHeadNotFoundError, PeerProtocolError, PeerTimeoutError, RepoVerificationError } from '../errors.ts'
import { decodeCbor, encodeCbor } from '../repo/cbor.ts'
import type { Connection, Libp2p, Logger, PeerId, Stream } from '@libp2p/interface'

/** The bounds of one protocol (its class documents its defaults). */
export interface ExchangeLimits {
  protocol: string
  /** Largest request frame accepted (payload bytes). */
  maxRequestBytes: number
  /** Largest answer frame accepted or sent (payload bytes). */
  maxResponseBytes: number
  /** Time limit for a whole exchange, on either side. */
  timeoutMs: number
  /** Inbound streams served at once over all connections; more are reset. */
  maxConcurrentInbound: number
  /** Inbound streams per connection (libp2p's limit). */
  maxInboundStreamsPerConnection: number
  /** Outbound streams per connection (libp2p's limit). */
  maxOutboundStreamsPerConnection: number
}

/**
 * Both ends of one request/response protocol: `start()` registers the responder,
 * `ask()` asks a peer. A protocol extends it with its own requests and its
 * `answer()`; register it in the node as a `Startable`.
 */
export abstract class FrameExchange {
  readonly protocol: string
  readonly #libp2p: Pick<Libp2p, 'handle' | 'unhandle' | 'dialProtocol'>
  readonly #limits: ExchangeLimits
  /** 'head', 'PLC log': in `head request from …`, `head exchange failed: …`. */
  readonly #name: string
  readonly #log: Logger
  #inbound = 0
  #started = false
  #stats = { requests: 0, served: 0 }

  /** `init`'s limits where given, else `defaults`. */
  constructor (libp2p: Pick<Libp2p, 'handle' | 'unhandle' | 'dialProtocol'>, init: Partial<ExchangeLimits>, defaults: ExchangeLimits, name: string, log: Logger) {
    this.#libp2p = libp2p
    this.#limits = {
      protocol: init.protocol ?? defaults.protocol,
      maxRequestBytes: init.maxRequestBytes ?? defaults.maxRequestBytes,
      maxResponseBytes: init.maxResponseBytes ?? defaults.maxResponseBytes,
      timeoutMs: init.timeoutMs ?? defaults.timeoutMs,
      maxConcurrentInbound: init.maxConcurrentInbound ?? defaults.maxConcurrentInbound,
      maxInboundStreamsPerConnection: init.maxInboundStreamsPerConnection ?? defaults.maxInboundStreamsPerConnection,
      maxOutboundStreamsPerConnection: init.maxOutboundStreamsPerConnection ?? defaults.maxOutboundStreamsPerConnection
    }
    this.protocol = this.#limits.protocol
    this.#name = name
    this.#log = log
  }

  /** The DID a request frame asks about, or `undefined` when the request is malformed (answered InvalidRequest). */
  protected abstract parseRequest (frame: Uint8Array): string | undefined

  /** The DRISL map answering a well-formed request for `did` (`{ error: 'NotFound' }` …); an error here cuts the stream off. */
  protected abstract lookUp (did: string, signal: AbortSignal): Promise<Record<string, unknown>>

  /** Responder side: well-formed requests read, and how many were answered with something other than an error. */
  stats (): { requests: number, served: number } {
    return { ...this.#stats }
  }

  /** Streams being served right now. */
  get inbound (): number {
    return this.#inbound
  }

  isStarted (): boolean {
    return this.#started
  }

  async start (): Promise<void> {
    if (this.#started) return
    await this.#libp2p.handle(this.#limits.protocol, (stream, connection) => { void this.#serve(stream, connection) }, {
      maxInboundStreams: this.#limits.maxInboundStreamsPerConnection,
      maxOutboundStreams: this.#limits.maxOutboundStreamsPerConnection
    })
    this.#started = true
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    await this.#libp2p.unhandle(this.#limits.protocol)
  }

  /**
   * Asks `peer` about `did` and returns `parse` of its answer frame. PeerError and
   * RepoVerificationError from `parse` pass through; a timeout is a PeerTimeoutError,
   * anything else a PeerError.
   */
  protected async ask<T> (peer: PeerId, did: string, parse: (frame: Uint8Array, peerName: string) => T, options: { signal?: AbortSignal } = {}): Promise<T> {
    const { timeoutMs, maxResponseBytes } = this.#limits
    const timeout = AbortSignal.timeout(timeoutMs)
    const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout])
    const peerName = peer.toString()
    let stream: Stream | undefined
    try {
      stream = await this.#libp2p.dialProtocol(peer, this.#limits.protocol, { signal })
      const onAbort = (): void => { stream?.abort(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason))) }
      signal.addEventListener('abort', onAbort, { once: true })
      try {
        await send(stream, encodeFrame(encodeCbor({ did })), signal)
        await stream.close({ signal })
        const frame = await readFrame(stream, maxResponseBytes, { peer: peerName, did })
        return parse(frame, peerName)
      } finally {
        signal.removeEventListener('abort', onAbort)
      }
    } catch (err) {
      stream?.abort(err instanceof Error ? err : new Error(String(err)))
      options.signal?.throwIfAborted()
      if (timeout.aborted) throw new PeerTimeoutError({ peer: peerName, did, ms: timeoutMs })
      if (err instanceof PeerError || err instanceof RepoVerificationError) throw err
      throw new PeerError(`${this.#name} exchange failed: ${(err as Error).message}`, { peer: peerName, did }, { cause: err })
    }
  }

  async #serve (stream: Stream, connection: Connection): Promise<void> {
    const name = this.#name
    const log = this.#log
    const { timeoutMs, maxRequestBytes, maxResponseBytes } = this.#limits
    const peer = connection.remotePeer
    if (this.#inbound >= this.#limits.maxConcurrentInbound) {
      log('busy (%d streams): resetting %s request from %p', this.#inbound, name, peer)
      stream.abort(new PeerError(`too many concurrent ${name} requests`))
      return
    }
    this.#inbound++
    const signal = AbortSignal.timeout(timeoutMs)
    const onAbort = (): void => { stream.abort(new PeerTimeoutError({ peer: peer.toString(), ms: timeoutMs })) }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      const frame = await readFrame(stream, maxRequestBytes, { peer: peer.toString() })
      let bytes = encodeCbor(await this.#answer(frame, peer, signal))
      if (bytes.byteLength > maxResponseBytes) {
        log.error('%s answer to %p too large to serve (%d bytes)', name, peer, bytes.byteLength)
        bytes = encodeCbor({ error: 'InternalError' })
      }
      await send(stream, encodeFrame(bytes), signal)
      await stream.close({ signal })
    } catch (err) {
      log('%s request from %p cut off: %e', name, peer, err)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      signal.removeEventListener('abort', onAbort)
      this.#inbound--
    }
  }

  async #answer (frame: Uint8Array, peer: PeerId, signal: AbortSignal): Promise<Record<string, unknown>> {
    const did = this.parseRequest(frame)
    if (did === undefined) {
      this.#log('malformed %s request from %p', this.#name, peer)
      return { error: 'InvalidRequest' }
    }
    this.#stats.requests++
    const answer = await this.lookUp(did, signal)
    if (answer.error === undefined) this.#stats.served++
    this.#log.trace('%s request from %p for %s: %s', this.#name, peer, did, answer.error ?? 'found')
    return answer
  }
}

/** A request frame's map, or `undefined` when it is not DRISL or not a map (`isMap` is the protocol's test). */
export function decodeRequest (frame: Uint8Array, isMap: (value: unknown) => value is Record<string, unknown>): Record<string, unknown> | undefined {
  let value: unknown
  try {
    value = decodeCbor(frame)
  } catch {
    return undefined
  }
  return isMap(value) ? value : undefined
}

/**
 * An answer frame's map. Throws PeerProtocolError when it is not DRISL, not a map or
 * has a non-string error, PeerHeadNotFoundError (`notFound`) on NotFound, PeerError
 * on any other error code.
 */
export function decodeAnswer (frame: Uint8Array, context: { peer: string, did: string }, isMap: (value: unknown) => value is Record<string, unknown>, notFound: string): Record<string, unknown> {
  let value: unknown
  try {
    value = decodeCbor(frame)
  } catch (err) {
    throw new PeerProtocolError('answer is not DRISL', context, { cause: err })
  }
  if (!isMap(value)) throw new PeerProtocolError('answer is not a map', context)
  if (value.error !== undefined) {
    if (typeof value.error !== 'string') throw new PeerProtocolError('error is not a string', context)
    if (value.error === 'NotFound') throw new PeerHeadNotFoundError(notFound, context)
    throw new PeerError(`peer answered ${JSON.stringify(value.error.slice(0, 64))}`, context)
  }
  return value
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

async function send (stream: Stream, bytes: Uint8Array, signal: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain({ signal })
}

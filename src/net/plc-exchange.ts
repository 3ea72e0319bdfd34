/**
 * PLC log exchange (`/atmirror/plc/1.0.0`): one peer asks another for the did:plc
 * operation log it holds for a DID, shaped like head exchange (head-exchange.ts):
 * one request and one answer per stream, each a single length-prefixed DRISL map:
 *
 * ```
 * asker → responder   varint(len) DRISL { did: string }
 * responder → asker   varint(len) DRISL { log: [ { did, operation, cid, nullified, createdAt }, … ] }
 *                  or varint(len) DRISL { error: 'NotFound' | 'InvalidRequest' | 'InternalError' }
 * ```
 *
 * The log is the PLC directory's audit log, entry for entry (operations as DRISL
 * maps). Nothing in it is trusted: the asker verifies it op by op against the DID
 * (src/identity/plc-log.ts) and holds it to the log it already has. Both sides cut
 * off frames above a cap (an operation is at most 7.5 KB, a log a handful of them),
 * streams that stay open past the time limit, and inbound streams beyond a
 * concurrency limit. docs/PROTOCOL.md ("PLC log exchange") describes the bytes.
 */
import { logger } from '@libp2p/logger'
import { PeerProtocolError } from '../errors.ts'
import { isValidDid } from '../repo/syntax.ts'
import { FrameExchange, decodeAnswer, decodeRequest, type ExchangeLimits } from './exchange.ts'
import type { OfferedPlcLog, PlcLogSource, StoredPlcLog } from '../identity/plc-logs.ts'
import type { MirrorLocator } from '../blocks/broker.ts'
import type { Libp2p, PeerId } from '@libp2p/interface'

const log = logger('atmirror:net:plc')

/** The protocol id; the version changes when the wire format does. */
export const PLC_PROTOCOL = '/atmirror/plc/1.0.0'

/** Where the responder gets the logs it serves (MirrorIdentityStore fits: pinned DIDs only). */
export interface LocalPlcLogs {
  getPlcLog: (did: string) => Promise<Pick<StoredPlcLog, 'entries'> | undefined>
}

export interface PlcExchangeComponents {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle' | 'dialProtocol'>
  /** Omit to run as an asker only (answers every request with NotFound). */
  logs?: LocalPlcLogs
}

/**
 * The limits, each optional; the defaults: protocol '/atmirror/plc/1.0.0', requests
 * up to 4096 bytes, answers up to 1 MiB, 5000 ms an exchange, 32 inbound streams at
 * once, 4 inbound and 8 outbound streams a connection.
 */
export type PlcExchangeInit = Partial<ExchangeLimits>

const DEFAULTS: ExchangeLimits = {
  protocol: PLC_PROTOCOL,
  maxRequestBytes: 4096,
  maxResponseBytes: 1024 * 1024,
  timeoutMs: 5000,
  maxConcurrentInbound: 32,
  maxInboundStreamsPerConnection: 4,
  maxOutboundStreamsPerConnection: 8
}

/** Both ends of the PLC log exchange; register it in the node as a `Startable`. */
export class PlcExchange extends FrameExchange {
  readonly #logs: LocalPlcLogs | undefined

  constructor (components: PlcExchangeComponents, init: PlcExchangeInit = {}) {
    super(components.libp2p, init, DEFAULTS, 'PLC log', log)
    this.#logs = components.logs
  }

  /**
   * Asks `peer` for its log of `did`: the entries as the peer sent them, NOT
   * verified. Throws PeerHeadNotFoundError when the peer holds none,
   * PeerTimeoutError / PeerProtocolError when it misbehaves.
   */
  async requestLog (peer: PeerId, did: string, options: { signal?: AbortSignal } = {}): Promise<unknown[]> {
    return await this.ask(peer, did, (frame, peerName) => parseAnswer(frame, did, peerName), options)
  }

  protected parseRequest (frame: Uint8Array): string | undefined {
    const value = decodeRequest(frame, isPlainMap)
    return isValidDid(value?.did) && value.did.startsWith('did:plc:') ? value.did : undefined
  }

  protected async lookUp (did: string, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (this.#logs === undefined) return { error: 'NotFound' }
    try {
      const stored = await this.#logs.getPlcLog(did)
      return stored === undefined ? { error: 'NotFound' } : { log: stored.entries }
    } catch (err) {
      if (signal.aborted) throw err
      log.error('could not read the stored PLC log of %s: %e', did, err)
      return { error: 'InternalError' }
    }
  }
}

export interface PeerPlcLogSourceInit {
  /** Most peers asked per lookup. @default 8 */
  maxPeers?: number
  /** Time budget of a whole lookup (finding peers and asking them). @default 15000 */
  timeoutMs?: number
}

/** The peers' logs of a DID: asks the DID's mirrors (configured peers, then the DHT), one after another. */
export class PeerPlcLogSource implements PlcLogSource {
  readonly #exchange: Pick<PlcExchange, 'requestLog'>
  readonly #mirrors: MirrorLocator
  readonly #maxPeers: number
  readonly #timeoutMs: number

  constructor (components: { exchange: Pick<PlcExchange, 'requestLog'>, mirrors: MirrorLocator }, init: PeerPlcLogSourceInit = {}) {
    this.#exchange = components.exchange
    this.#mirrors = components.mirrors
    this.#maxPeers = init.maxPeers ?? 8
    this.#timeoutMs = init.timeoutMs ?? 15_000
  }

  async * findLogs (did: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<OfferedPlcLog | { source: string, error: Error }> {
    const timeout = AbortSignal.timeout(this.#timeoutMs)
    const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout])
    let asked = 0
    try {
      for await (const found of this.#mirrors.findMirrors(did, { signal, maxPeers: this.#maxPeers })) {
        const peer = found.id
        const source = `peer:${peer.toString()}`
        asked++
        try {
          yield { source, entries: await this.#exchange.requestLog(peer, did, { signal }) }
        } catch (err) {
          options.signal?.throwIfAborted()
          yield { source, error: err as Error }
        }
        if (asked >= this.#maxPeers) break
      }
    } catch (err) {
      options.signal?.throwIfAborted()
      yield { source: 'peers', error: err as Error }
    }
    if (asked === 0) yield { source: 'peers', error: new Error('no mirror of the DID found') }
  }
}

function parseAnswer (frame: Uint8Array, did: string, peer: string): unknown[] {
  const context = { peer, did }
  const value = decodeAnswer(frame, context, isPlainMap, 'peer holds no PLC log')
  if (!Array.isArray(value.log)) throw new PeerProtocolError('log is not an array', context)
  return value.log
}

function isPlainMap (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Uint8Array) && Object.getPrototypeOf(value) === Object.prototype
}

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
import { CommitDidMismatchError, PeerHeadNotFoundError, PeerProtocolError } from '../errors.ts'
import { isServable } from '../mirror/status-policy.ts'
import { DAG_CBOR, asCid, parseCid, verifyBlock, type CID } from '../repo/cid.ts'
import { decodeCommit, type Commit } from '../repo/commit.ts'
import { isValidDid } from '../repo/syntax.ts'
import { FrameExchange, decodeAnswer, decodeRequest, type ExchangeLimits } from './exchange.ts'
import type { Libp2p, PeerId } from '@libp2p/interface'

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

/**
 * The limits, each optional; the defaults: protocol '/atmirror/head/1.0.0', requests
 * up to 4096 bytes, answers up to 16384 (a commit block is < 1 KB), 5000 ms an
 * exchange, 64 inbound streams at once, 8 inbound and 16 outbound streams a connection.
 */
export type HeadExchangeInit = Partial<ExchangeLimits>

const DEFAULTS: ExchangeLimits = {
  protocol: HEAD_PROTOCOL,
  maxRequestBytes: 4096,
  maxResponseBytes: 16384,
  timeoutMs: 5000,
  maxConcurrentInbound: 64,
  maxInboundStreamsPerConnection: 8,
  maxOutboundStreamsPerConnection: 16
}

/**
 * Both ends of the head exchange. `start()` registers the responder; `requestHead()`
 * asks a peer. Register it in the node as a `Startable`.
 */
export class HeadExchange extends FrameExchange {
  readonly #heads: LocalHeadSource | undefined

  constructor (components: HeadExchangeComponents, init: HeadExchangeInit = {}) {
    super(components.libp2p, init, DEFAULTS, 'head', log)
    this.#heads = components.heads
  }

  /**
   * Asks `peer` for its head of `did`. Throws {@link PeerHeadNotFoundError} when the
   * peer holds none, {@link PeerTimeoutError} / {@link PeerProtocolError} when it
   * misbehaves, CidMismatchError / CommitInvalidError / CommitDidMismatchError when
   * its block is not a commit for `did`. The caller must still check the signature.
   */
  async requestHead (peer: PeerId, did: string, options: { signal?: AbortSignal } = {}): Promise<PeerHeadAnswer> {
    return await this.ask(peer, did, (frame, peerName) => ({ peer, ...parseAnswer(frame, did, peerName) }), options)
  }

  protected parseRequest (frame: Uint8Array): string | undefined {
    const value = decodeRequest(frame, isPlainMap)
    return isValidDid(value?.did) ? value.did : undefined
  }

  protected async lookUp (did: string, signal: AbortSignal): Promise<Record<string, unknown>> {
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

function parseAnswer (frame: Uint8Array, did: string, peer: string): Omit<PeerHeadAnswer, 'peer'> {
  const context = { peer, did }
  const value = decodeAnswer(frame, context, isPlainMap, 'peer holds no head')
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

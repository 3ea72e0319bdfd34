/**
 * Head from other mirrors: ask the peers that mirror a DID (DHT rendezvous +
 * configured peers) for their latest commit over the head exchange, verify each
 * answer against the DID's signing key, and keep the highest rev.
 *
 * Nothing a peer says is trusted: the block must hash to its CID, decode as a
 * commit for this DID, and carry a valid signature by the DID's current key (the
 * identity is refreshed once if a signature fails, since keys rotate). A head older
 * than the one already stored here is refused too: a peer replaying an old but
 * genuine commit must not move the repo back. Every refused answer is logged with
 * the peer id and listed in the error when no peer succeeds.
 */
import { logger } from '@libp2p/logger'
import { CommitSignatureError, HeadStaleError, HeadUnavailableError, PeerError } from '../errors.ts'
import { verifyCommitSignature } from '../repo/commit.ts'
import { publicKeyEquals } from '../repo/keys.ts'
import type { Identity, IdentityResolver } from '../identity/resolver.ts'
import type { HeadExchange, PeerHeadAnswer } from './head-exchange.ts'
import type { MirrorLocator, MirrorPeer } from '../blocks/broker.ts'
import { eachParallel } from '../blocks/parallel.ts'
import { compareRevs, type Head, type HeadResolver, type ResolveHeadOptions } from '../head/head-resolver.ts'
import type { PeerId } from '@libp2p/interface'

const log = logger('atmirror:head:peer')

export interface PeerHeadResolverComponents {
  headExchange: Pick<HeadExchange, 'requestHead'>
  identity: IdentityResolver
  /** Where the peers come from (a MirrorFinder). */
  mirrors: MirrorLocator
  /** The stored state, so that no peer can move a repo back. */
  store?: { getState: (did: string) => Promise<{ rev: string } | undefined> }
}

export interface PeerHeadResolverInit {
  /** Time budget for a whole resolution (finding peers and asking them), in ms. @default 15000 */
  timeoutMs?: number
  /** Peers asked at once. @default 8 */
  concurrency?: number
  /** Most peers asked per resolution. @default 16 */
  maxPeers?: number
}

/** {@link HeadResolver} asking other mirrors over the head exchange. */
export class PeerHeadResolver implements HeadResolver {
  readonly name = 'peers'
  readonly #headExchange: PeerHeadResolverComponents['headExchange']
  readonly #identity: IdentityResolver
  readonly #mirrors: PeerHeadResolverComponents['mirrors']
  readonly #store: PeerHeadResolverComponents['store']
  readonly #timeoutMs: number
  readonly #concurrency: number
  readonly #maxPeers: number

  constructor (components: PeerHeadResolverComponents, init: PeerHeadResolverInit = {}) {
    this.#headExchange = components.headExchange
    this.#identity = components.identity
    this.#mirrors = components.mirrors
    this.#store = components.store
    this.#timeoutMs = init.timeoutMs ?? 15_000
    this.#concurrency = Math.max(1, init.concurrency ?? 8)
    this.#maxPeers = init.maxPeers ?? 16
  }

  /**
   * Asks the mirrors of `did` and returns the highest verified head, with
   * `source: 'peer:<peer id>'`. Throws HeadUnavailableError listing each peer's
   * reason when none gives a usable head (or none is found).
   */
  async resolveHead (did: string, options: ResolveHeadOptions = {}): Promise<Head> {
    return await this.resolveFrom(did, this.#mirrors.findMirrors(did, { signal: options.signal, maxPeers: this.#maxPeers }), options)
  }

  /** Like {@link resolveHead}, asking the given peers only. */
  async resolveFrom (did: string, peers: AsyncIterable<MirrorPeer | PeerId> | Iterable<MirrorPeer | PeerId>, options: ResolveHeadOptions = {}): Promise<Head> {
    const timeout = AbortSignal.timeout(this.#timeoutMs)
    const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout])
    let identity: Identity = options.identity ?? await this.#identity.resolve(did, { signal, verifyHandle: false })
    let refreshed: Promise<Identity> | undefined
    const stored = await this.#store?.getState(did)

    const errors: Array<{ source: string, error: Error }> = []
    const heads: Head[] = []

    const ask = async (peer: PeerId): Promise<void> => {
      const source = `peer:${peer.toString()}`
      try {
        const answer = await this.#headExchange.requestHead(peer, did, { signal })
        let verifiedBy = identity
        try {
          verifyCommitSignature(answer.commit, verifiedBy.signingKey, { cid: answer.cid })
        } catch (err) {
          if (!(err instanceof CommitSignatureError)) throw err
          // The key may have rotated since we resolved it: look once, for all peers.
          refreshed ??= this.#identity.refresh(did, { signal, verifyHandle: false })
          const fresh = await refreshed
          if (publicKeyEquals(fresh.signingKey, verifiedBy.signingKey)) throw err
          identity = fresh
          verifiedBy = fresh
          verifyCommitSignature(answer.commit, verifiedBy.signingKey, { cid: answer.cid })
        }
        const head = toHead(did, answer, source, verifiedBy)
        if (stored !== undefined && compareRevs(head.rev, stored.rev) < 0) {
          throw new HeadStaleError(did, head.rev, stored.rev, { source })
        }
        heads.push(head)
        log('%p has %s at rev %s', peer, did, head.rev)
      } catch (err) {
        const error = err instanceof Error ? err : new Error(String(err))
        if (options.signal?.aborted === true) return
        if (error.name === 'PeerHeadNotFoundError') log('%p holds no head for %s', peer, did)
        else log('ignoring head of %s from %p - %e', did, peer, error)
        errors.push({ source, error })
      }
    }

    let asked = 0
    const maxPeers = this.#maxPeers
    const first = async function * (): AsyncGenerator<PeerId> {
      for await (const item of peers) {
        if (asked >= maxPeers) return
        asked++
        yield 'id' in item && 'source' in item ? item.id : item as PeerId
      }
    }
    try {
      // `ask` never throws; a failure here is the peer search's, once every ask in flight has settled
      await eachParallel(first(), ask, this.#concurrency)
    } catch (err) {
      options.signal?.throwIfAborted()
      if (!timeout.aborted) throw err
    }
    options.signal?.throwIfAborted()
    // the highest rev; a head verified before another answer made us refresh must hold under the refreshed key
    heads.sort((a, b) => compareRevs(b.rev, a.rev))
    for (const head of heads) {
      const verified = head.identity === identity ? head : reverify(head, identity, errors)
      if (verified !== undefined) return verified
    }
    if (asked === 0) errors.push({ source: 'peers', error: new PeerError('no mirrors found', { did }) })
    throw new HeadUnavailableError(did, errors)
  }
}

function toHead (did: string, answer: PeerHeadAnswer, source: string, identity: Identity): Head {
  return { did, cid: answer.cid, rev: answer.commit.rev, data: answer.commit.data, commit: answer.commit, bytes: answer.bytes, source, identity }
}

/** `head` checked against `identity`'s key, or undefined (and the reason listed) when it does not verify. */
function reverify (head: Head, identity: Identity, errors: Array<{ source: string, error: Error }>): Head | undefined {
  try {
    verifyCommitSignature(head.commit, identity.signingKey, { cid: head.cid })
    return { ...head, identity }
  } catch (err) {
    if (!(err instanceof CommitSignatureError)) throw err
    log('ignoring head of %s from %s: signed by a key the refreshed document no longer names', head.did, head.source)
    errors.push({ source: head.source, error: err })
    return undefined
  }
}

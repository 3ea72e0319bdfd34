/**
 * The PDS first, the peers when it fails. Both are asked at the same time, so a
 * failing PDS costs no extra round trip, but a verified PDS answer is taken at once
 * and the peers' lookup (a DHT walk that can take its whole time budget when nobody
 * mirrors the repo) is aborted, not awaited.
 *
 * There is no grace period for a peer with a higher rev: the PDS is the authority on
 * its repo, so a peer ahead of it is either a race (the next sync picks the commit
 * up from the PDS) or a replay, possibly signed by a key the DID has rotated out.
 * When the PDS fails, the highest rev among the peers' verified heads wins; before it
 * is taken it must also verify against the identity as it stands after the PDS's
 * attempt (which may have refreshed it), so a head signed by a rotated-out key is
 * refused even if a peer resolver verified it against an older copy. When nobody
 * answers, one {@link HeadUnavailableError} lists every source's reason.
 */
import { logger } from '@libp2p/logger'
import { CommitSignatureError, HeadUnavailableError } from '../errors.ts'
import { verifyCommitSignature } from '../repo/commit.ts'
import { publicKeyEquals } from '../repo/keys.ts'
import type { IdentityResolver } from '../identity/resolver.ts'
import { compareRevs, type Head, type HeadResolver, type ResolveHeadOptions } from './head-resolver.ts'

const log = logger('atmirror:head:composite')

export interface CompositeHeadResolverComponents {
  /** The authority: the PDS the DID document names. */
  pds: HeadResolver
  /** Other sources (mirrors): asked at the same time, counted only when the PDS fails. */
  peers?: HeadResolver[]
  /**
   * Resolves the identity once per resolution when the caller passes none, and gives
   * the current key a peer's head must verify against.
   */
  identity?: IdentityResolver
}

/** {@link HeadResolver} over the PDS and, as a fallback asked in parallel, peers. */
export class CompositeHeadResolver implements HeadResolver {
  readonly name = 'composite'
  readonly #pds: HeadResolver
  readonly #peers: HeadResolver[]
  readonly #identity: IdentityResolver | undefined

  constructor (components: CompositeHeadResolverComponents) {
    this.#pds = components.pds
    this.#peers = [...(components.peers ?? [])]
    this.#identity = components.identity
  }

  async resolveHead (did: string, options: ResolveHeadOptions = {}): Promise<Head> {
    const { signal } = options
    const identity = options.identity ?? await this.#identity?.resolve(did, { signal, verifyHandle: false })
    const asked = { signal, identity }
    const notNeeded = new AbortController()
    const peerSignal = signal === undefined ? notNeeded.signal : AbortSignal.any([signal, notNeeded.signal])
    const peers = this.#peers.map(async source => await source.resolveHead(did, { ...asked, signal: peerSignal }))
    // abandoned once the PDS answers: their failure then is expected and must not go unhandled
    for (const peer of peers) peer.catch(() => {})

    const errors: Array<{ source: string, error: Error }> = []
    try {
      const head = await this.#pds.resolveHead(did, asked)
      notNeeded.abort(new DOMException('the PDS answered', 'AbortError'))
      return head
    } catch (err) {
      if (signal?.aborted === true) {
        notNeeded.abort(signal.reason)
        throw err
      }
      errors.push({ source: this.#pds.name ?? 'pds', error: asError(err) })
    }

    const results = await Promise.allSettled(peers)
    signal?.throwIfAborted()
    const heads: Head[] = []
    results.forEach((result, i) => {
      if (result.status === 'fulfilled') heads.push(result.value)
      else errors.push({ source: this.#peers[i]?.name ?? `source ${i + 1}`, error: asError(result.reason) })
    })
    if (heads.length > 0) {
      // what the PDS's attempt may have refreshed: the key as the node knows it now
      const current = this.#identity === undefined ? undefined : await this.#identity.resolve(did, { signal, verifyHandle: false }).catch(() => undefined)
      heads.sort((a, b) => compareRevs(b.rev, a.rev))
      for (const head of heads) {
        if (current === undefined || publicKeyEquals(current.signingKey, head.identity.signingKey)) return head
        try {
          verifyCommitSignature(head.commit, current.signingKey, { cid: head.cid })
          return { ...head, identity: current }
        } catch (err) {
          if (!(err instanceof CommitSignatureError)) throw err
          log('ignoring head of %s from %s: signed by a key the DID no longer names', did, head.source)
          errors.push({ source: head.source, error: err })
        }
      }
    }
    throw new HeadUnavailableError(did, errors)
  }
}

function asError (err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

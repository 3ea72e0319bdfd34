/**
 * Who mirrors a DID: the providers of its rendezvous key on the DHT (every node that
 * pins the DID announces `rendezvousCid(did)`, see src/net/reprovider.ts) plus the
 * peers configured by hand (`--peer`). A provider record only says a peer claims
 * to hold the repo; what it serves is verified by whoever fetches from it.
 */
import { logger } from '@libp2p/logger'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { rendezvousCid } from '../identity/rendezvous.ts'
import type { FindMirrorsOptions, MirrorPeer } from '../blocks/broker.ts'
import type { Libp2p } from '@libp2p/interface'

const log = logger('atmirror:net:mirrors')

export type { FindMirrorsOptions, MirrorLocator, MirrorPeer } from '../blocks/broker.ts'

/** What `findMirrors` needs of libp2p. */
export type MirrorFinderLibp2p = Pick<Libp2p, 'peerId' | 'contentRouting' | 'dial' | 'peerStore' | 'getConnections'>

export interface MirrorFinderComponents {
  libp2p: MirrorFinderLibp2p
  /**
   * How many peers the DHT routing table holds. Right after connecting, the table is
   * still empty until identify finishes; a lookup then waits a moment for it rather
   * than asking nobody.
   */
  routingTableSize?: () => number
}

export interface MirrorFinderInit {
  /**
   * Peers asked for every DID, as multiaddrs. With a `/p2p/<peer id>` suffix they
   * are used as given; without one they are dialled once to learn who answers.
   *
   * @default []
   */
  peers?: string[]
  /** Time budget of one DHT lookup, in ms; what was found by then is the answer. @default 10000 */
  timeoutMs?: number
  /** Most peers returned per DID (configured peers count). @default 20 */
  maxPeers?: number
  /** Time limit for dialling a configured peer without a peer id, in ms. @default 5000 */
  dialTimeoutMs?: number
  /** Longest wait for an empty DHT routing table to fill while connected, in ms. @default 3000 */
  settleMs?: number
}

/** Finds the mirrors of a DID. */
export class MirrorFinder {
  readonly #libp2p: MirrorFinderLibp2p
  readonly #peers: Multiaddr[]
  readonly #timeoutMs: number
  readonly #maxPeers: number
  readonly #dialTimeoutMs: number
  readonly #settleMs: number
  readonly #routingTableSize: (() => number) | undefined

  constructor (components: MirrorFinderComponents, init: MirrorFinderInit = {}) {
    this.#libp2p = components.libp2p
    this.#routingTableSize = components.routingTableSize
    this.#settleMs = init.settleMs ?? 3000
    this.#peers = (init.peers ?? []).map(value => multiaddr(value))
    this.#timeoutMs = init.timeoutMs ?? 10_000
    this.#maxPeers = init.maxPeers ?? 20
    this.#dialTimeoutMs = init.dialTimeoutMs ?? 5000
  }

  /** The configured peers' addresses. */
  get peers (): readonly Multiaddr[] {
    return this.#peers
  }

  /** Adds a configured peer (a multiaddr string or object) for every later lookup. */
  addPeer (address: string | Multiaddr): void {
    this.#peers.push(typeof address === 'string' ? multiaddr(address) : address)
  }

  /**
   * Yields the configured peers, then the DHT providers of `rendezvousCid(did)`,
   * each once and never this node, until `maxPeers` or the time budget is reached.
   * Running out of time is not an error: the peers found so far are the answer.
   */
  async * findMirrors (did: string, options: FindMirrorsOptions = {}): AsyncGenerator<MirrorPeer> {
    const key = rendezvousCid(did)
    const maxPeers = options.maxPeers ?? this.#maxPeers
    const timeout = AbortSignal.timeout(options.timeoutMs ?? this.#timeoutMs)
    const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout])
    const seen = new Set<string>([this.#libp2p.peerId.toString()])
    let count = 0

    for await (const peer of this.#configured(signal)) {
      if (seen.has(peer.id.toString())) continue
      seen.add(peer.id.toString())
      yield peer
      if (++count >= maxPeers) return
    }
    options.signal?.throwIfAborted()
    if (timeout.aborted || options.dht === false) return
    await this.#settle(signal)

    try {
      for await (const provider of this.#libp2p.contentRouting.findProviders(key, { signal })) {
        const id = provider.id.toString()
        if (seen.has(id)) continue
        seen.add(id)
        if (provider.multiaddrs.length > 0) {
          // So that a later dial by peer id (Bitswap, head exchange) knows where to go.
          await this.#libp2p.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs }, { signal }).catch(err => {
            log('could not record addresses of %p - %e', provider.id, err)
          })
        }
        yield { id: provider.id, multiaddrs: provider.multiaddrs, source: 'dht' }
        if (++count >= maxPeers) return
      }
    } catch (err) {
      options.signal?.throwIfAborted()
      if (timeout.aborted) {
        log('DHT lookup for %s stopped after %d ms with %d peers', did, options.timeoutMs ?? this.#timeoutMs, count)
        return
      }
      // A lookup with no DHT peers at all fails; that is "no mirrors found", not a crash.
      log('DHT lookup of %c for %s failed - %e', key, did, err)
    }
  }

  async #settle (signal: AbortSignal): Promise<void> {
    const size = this.#routingTableSize
    if (size === undefined) return
    const deadline = Date.now() + this.#settleMs
    while (size() === 0 && this.#libp2p.getConnections().length > 0 && Date.now() < deadline && !signal.aborted) {
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }

  async * #configured (signal: AbortSignal): AsyncGenerator<MirrorPeer> {
    for (const ma of this.#peers) {
      const id = ma.getComponents().findLast(c => c.name === 'p2p')?.value
      if (id !== undefined) {
        const peerId = peerIdFromString(id)
        await this.#libp2p.peerStore.merge(peerId, { multiaddrs: [ma.decapsulateCode(421)] }, { signal }).catch(err => {
          log('could not record addresses of %p - %e', peerId, err)
        })
        yield { id: peerId, multiaddrs: [ma], source: 'config' }
        continue
      }
      try {
        const connection = await this.#libp2p.dial(ma, { signal: AbortSignal.any([signal, AbortSignal.timeout(this.#dialTimeoutMs)]) })
        yield { id: connection.remotePeer, multiaddrs: [ma], source: 'config' }
      } catch (err) {
        if (signal.aborted) return
        log('configured peer %s not reachable - %e', ma.toString(), err)
      }
    }
  }
}

/** One-off lookup: `new MirrorFinder(components, init).findMirrors(did, options)` collected into an array. */
export async function findMirrors (components: MirrorFinderComponents, did: string, options: FindMirrorsOptions & MirrorFinderInit = {}): Promise<MirrorPeer[]> {
  const peers: MirrorPeer[] = []
  for await (const peer of new MirrorFinder(components, options).findMirrors(did, options)) peers.push(peer)
  return peers
}

/**
 * Helia's view of libp2p routing (the DHT): how Bitswap finds providers of a block
 * when no connected peer has it. The node builds libp2p itself, so this adapter is
 * what `withLibp2p` would otherwise install.
 */
import { peerIdFromCID } from '@libp2p/peer-id'
import type { Libp2p, AbortOptions } from '@libp2p/interface'
import type { Peer, Provider, Router, RoutingOptions } from 'helia'
import type { CID } from 'multiformats/cid'

export class Libp2pRouter implements Router {
  readonly name = 'libp2p-router'
  readonly #libp2p: Libp2p

  constructor (libp2p: Libp2p) {
    this.#libp2p = libp2p
  }

  async provide (cid: CID, options?: RoutingOptions): Promise<void> {
    await this.#libp2p.contentRouting.provide(cid, options)
  }

  async cancelReprovide (key: CID, options?: AbortOptions): Promise<void> {
    await this.#libp2p.contentRouting.cancelReprovide(key, options)
  }

  async * findProviders (cid: CID, options?: RoutingOptions): AsyncIterable<Provider> {
    for await (const info of this.#libp2p.contentRouting.findProviders(cid, options)) {
      yield { id: info.id.toCID(), multiaddrs: info.multiaddrs, router: this.name, fallback: false }
    }
  }

  async put (key: Uint8Array, value: Uint8Array, options?: RoutingOptions): Promise<void> {
    await this.#libp2p.contentRouting.put(key, value, options)
  }

  async get (key: Uint8Array, options?: RoutingOptions): Promise<Uint8Array<ArrayBuffer>> {
    const value = await this.#libp2p.contentRouting.get(key, options)
    return new Uint8Array(value) as Uint8Array<ArrayBuffer>
  }

  async findPeer (peer: CID, options?: RoutingOptions): Promise<Peer> {
    const info = await this.#libp2p.peerRouting.findPeer(peerIdFromCID(peer), options)
    return { id: info.id.toCID(), multiaddrs: info.multiaddrs, router: this.name }
  }

  async * getClosestPeers (key: Uint8Array, options?: RoutingOptions): AsyncIterable<Peer> {
    for await (const info of this.#libp2p.peerRouting.getClosestPeers(key, options)) {
      yield { id: info.id.toCID(), multiaddrs: info.multiaddrs, router: this.name }
    }
  }

  toString (): string {
    return 'Libp2pRouter()'
  }
}

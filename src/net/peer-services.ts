/**
 * The peer-to-peer services a networked node runs on top of libp2p and its store:
 *
 * - the head-exchange responder and asker (`/atmirror/head/1.0.0`), serving the
 *   stored commit of every pinned, servable repo;
 * - a {@link PeerHeadResolver} over the DID's mirrors, which the node combines with
 *   the PDS in a CompositeHeadResolver;
 * - the PLC log exchange (`/atmirror/plc/1.0.0`), serving the stored verified
 *   did:plc log of every pinned DID, and the {@link PeerPlcLogSource} the identity
 *   resolver asks when the PLC directory is down;
 * - the {@link Reprovider}, told about every repo change (`repoChanged(did)`);
 * - which repos Bitswap withholds (suspended, deactivated: see ServingBlockstore),
 *   kept in step with the stored states on start and on every repo change.
 *
 * The node composition creates one, starts it after the network and stops it before.
 */
import { logger } from '@libp2p/logger'
import { PeerHeadResolver, type PeerHeadResolverInit } from './peer-head-resolver.ts'
import { holdsBlocks, isServable } from '../mirror/status-policy.ts'
import { HeadExchange, storeHeadSource, type HeadExchangeInit, type HeadStore } from './head-exchange.ts'
import { PeerPlcLogSource, PlcExchange, type LocalPlcLogs, type PlcExchangeInit, type PeerPlcLogSourceInit } from './plc-exchange.ts'
import { Reprovider, type ProvideMode, type ReproviderComponents, type ReproviderInit } from './reprovider.ts'
import type { FindMirrorsOptions, MirrorFinder, MirrorPeer } from './mirrors.ts'
import type { IdentityResolver } from '../identity/resolver.ts'
import type { ReadonlyBlockStore } from '../repo/block-store.ts'
import type { Libp2p, PeerId } from '@libp2p/interface'

const log = logger('atmirror:net:peers')

/** What the services need of the node's store (MirrorStore fits). */
export interface PeerServicesStore extends HeadStore {
  pins: HeadStore['pins'] & { list: () => Promise<string[]> }
  getState: (did: string) => Promise<({ status: string, commit: string, rev: string }) | undefined>
  blocks: ReadonlyBlockStore
}

export interface PeerServicesComponents {
  libp2p: Libp2p
  store: PeerServicesStore
  identity: IdentityResolver
  /** The node's mirror finder (shared with the Bitswap broker, so configured peers agree). */
  mirrors: MirrorFinder
  /** How many peers the DHT routing table holds (MirrorNetwork.dhtPeerCount). */
  routingTableSize?: () => number
  /** kad-dht's datastore (the node's), so stale self provider records can be found. */
  datastore?: NonNullable<ReproviderComponents['providerRecords']>['datastore']
  /** The stored PLC logs served over the PLC log exchange (MirrorIdentityStore: pinned DIDs only). */
  plcLogs?: LocalPlcLogs
  /** What Bitswap serves from (MirrorNetwork.serving): told which repos to withhold. */
  serving?: { setServable: (did: string, servable: boolean) => void }
}

export interface PeerServicesInit {
  /** What to announce for pinned repos. @default 'heads' */
  provide?: ProvideMode
  /** Run the reprovider (a one-shot command does not: it leaves right after). @default true */
  reprovide?: boolean
  reprovider?: Omit<ReproviderInit, 'provide'>
  headExchange?: HeadExchangeInit
  peerHeads?: PeerHeadResolverInit
  plcExchange?: PlcExchangeInit
  peerPlcLogs?: PeerPlcLogSourceInit
}

/** A connected peer as the control API reports it. */
export interface ConnectedPeer {
  peerId: string
  addresses: string[]
  /** `inbound` or `outbound` for each open connection. */
  directions: string[]
}

export class PeerServices {
  readonly headExchange: HeadExchange
  readonly heads: PeerHeadResolver
  readonly plcExchange: PlcExchange
  /** The peers' PLC logs (for the identity resolver). */
  readonly plcLogs: PeerPlcLogSource
  readonly mirrors: MirrorFinder
  readonly reprovider: Reprovider | undefined
  readonly #libp2p: Libp2p
  readonly #store: PeerServicesStore
  readonly #serving: PeerServicesComponents['serving']
  readonly #announcing = new Set<Promise<void>>()

  constructor (components: PeerServicesComponents, init: PeerServicesInit = {}) {
    this.#libp2p = components.libp2p
    this.#store = components.store
    this.#serving = components.serving
    this.mirrors = components.mirrors
    this.headExchange = new HeadExchange({ libp2p: components.libp2p, heads: storeHeadSource(components.store) }, init.headExchange)
    this.heads = new PeerHeadResolver({
      headExchange: this.headExchange,
      identity: components.identity,
      mirrors: components.mirrors,
      store: components.store
    }, init.peerHeads)
    this.plcExchange = new PlcExchange({ libp2p: components.libp2p, logs: components.plcLogs }, init.plcExchange)
    this.plcLogs = new PeerPlcLogSource({ exchange: this.plcExchange, mirrors: components.mirrors }, init.peerPlcLogs)
    this.reprovider = init.reprovide === false
      ? undefined
      : new Reprovider({
        routing: components.libp2p.contentRouting,
        store: components.store,
        routingTableSize: components.routingTableSize,
        providerRecords: components.datastore === undefined ? undefined : { datastore: components.datastore, peerId: components.libp2p.peerId }
      }, { ...init.reprovider, provide: init.provide })
  }

  async start (): Promise<void> {
    // before anything is served: which stored repos are withheld
    for (const did of await this.#store.pins.list()) await this.#updateServing(did)
    await this.headExchange.start()
    await this.plcExchange.start()
    await this.#publishSelf()
    this.#libp2p.addEventListener('transport:listening', this.#onListening)
    this.reprovider?.start()
  }

  async stop (): Promise<void> {
    this.#libp2p.removeEventListener('transport:listening', this.#onListening)
    await this.reprovider?.stop()
    await this.plcExchange.stop()
    await this.headExchange.stop()
  }

  readonly #onListening = (): void => {
    this.#publishSelf().catch(err => { log.error('could not record our addresses - %e', err) })
  }

  /**
   * kad-dht answers GET_PROVIDERS from the peer store, and libp2p does not keep our
   * own addresses there: without them a node never lists itself as a provider, so a
   * peer that asks the provider directly (a two-node network, or the provider being
   * the closest peer to the key) would not find it.
   */
  async #publishSelf (): Promise<void> {
    const multiaddrs = this.#libp2p.getMultiaddrs().map(ma => ma.decapsulateCode(421))
    if (multiaddrs.length > 0) await this.#libp2p.peerStore.merge(this.#libp2p.peerId, { multiaddrs })
  }

  /**
   * A repo was synced, unpinned or changed status: serve or withhold its blocks, and
   * announce its new state or withdraw it (unpinned, taken down…). Never throws:
   * this is background work.
   */
  repoChanged (did: string): void {
    const work = this.#updateServing(did)
      .then(async () => { await this.reprovider?.announce(did) })
      .catch(err => { log.error('announcing %s failed - %e', did, err) })
      .finally(() => { this.#announcing.delete(work) })
    this.#announcing.add(work)
  }

  /** Bitswap withholds the blocks of a stored repo that is not servable (suspended, deactivated). */
  async #updateServing (did: string): Promise<void> {
    if (this.#serving === undefined) return
    const state = await this.#store.getState(did)
    // No state (unpinned) or taken down / deleted: its holds are released and no block
    // names it as a holder, so keeping it in the set would only cost lookups.
    this.#serving.setServable(did, !holdsBlocks(state) || isServable(state))
  }

  /** Resolves when every change reported so far is applied and its announcements have reached the DHT (or failed). */
  async idle (): Promise<void> {
    await Promise.all([...this.#announcing])
    await this.reprovider?.onIdle()
  }

  /** Peers with an open connection. */
  connectedPeers (): ConnectedPeer[] {
    const byPeer = new Map<string, ConnectedPeer>()
    for (const connection of this.#libp2p.getConnections()) {
      const id = connection.remotePeer.toString()
      let entry = byPeer.get(id)
      if (entry === undefined) {
        entry = { peerId: id, addresses: [], directions: [] }
        byPeer.set(id, entry)
      }
      entry.addresses.push(connection.remoteAddr.toString())
      entry.directions.push(connection.direction)
    }
    return [...byPeer.values()]
  }

  /** Who announces `did` (DHT rendezvous providers and configured peers). */
  async findMirrors (did: string, options: FindMirrorsOptions = {}): Promise<MirrorPeer[]> {
    const found: MirrorPeer[] = []
    for await (const peer of this.mirrors.findMirrors(did, options)) found.push(peer)
    return found
  }

  /** This node's peer id. */
  get peerId (): PeerId {
    return this.#libp2p.peerId
  }
}

/**
 * The node's peer-to-peer side: libp2p (TCP + noise + yamux, identify, ping, kad-dht)
 * and Helia with Bitswap over the mirror's own blockstore and datastore.
 *
 * libp2p is built here, not by `createHelia`, because Helia's defaults add services
 * the private mode must not run (autoNAT, UPnP, mDNS, circuit relay, delegated HTTP
 * routing, HTTP gateways). Helia is created "light" and given this libp2p, a DHT
 * router and Bitswap, nothing else.
 *
 * Two modes:
 * - `public`: the IPFS Amino DHT (`/ipfs/kad/1.0.0`) and its bootstrap peers, plus
 *   what a node needs to become reachable. libp2p 3 lists a public listen address
 *   only once something has confirmed that others can dial it (an `announce`
 *   address counts as confirmed): autoNAT asks connected peers to dial us back and
 *   confirms each address that works, UPnP (optional) asks the home router to
 *   forward the port and adds the mapped address for autoNAT to confirm, and
 *   identify-push tells connected peers when our addresses and protocols change.
 *   The DHT starts in client mode and switches itself to server mode once a public
 *   address is confirmed; until then provider records we publish carry no
 *   dialable address. Private and loopback addresses are not put into the routing
 *   table.
 * - `private`: none of those services; only the given `bootstrap` peers, the DHT in
 *   server mode from the start on whatever addresses we have (loopback included),
 *   queries allowed with zero peers, and a connection gater that refuses to dial
 *   anything but loopback and the hosts named in `listen`, `bootstrap`, `announce`,
 *   `peers` and `allowDial`.
 */
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import * as dagCbor from '@ipld/dag-cbor'
import { bootstrap } from '@libp2p/bootstrap'
import { autoNAT } from '@libp2p/autonat'
import { identify, identifyPush, type Identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, type KadDHT, type SingleKadDHT } from '@libp2p/kad-dht'
import { logger } from '@libp2p/logger'
import { repeatingTask, type RepeatingTask } from '@libp2p/utils'
import { ping, type Ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { uPnPNAT } from '@libp2p/upnp-nat'
import { createHeliaLight, type Helia } from 'helia'
import { createLibp2p, type Libp2pOptions } from 'libp2p'
import { AMINO_DHT_PROTOCOL, DialAllowList, PUBLIC_BOOTSTRAP_PEERS, defaultListenAddresses, multiaddrPeerId, parseBootstrapAddress, parseListenAddress, parseMultiaddr, parsePeerAddress, type NetworkMode } from './addresses.ts'
import { ListenError } from '../errors.ts'
import { Libp2pRouter } from './routing.ts'
import { ServingBlockstore, type BlockHolderIndex, type ServedBlobs, type VerifiedBlockReader } from './serving-blockstore.ts'
import type { Libp2p, PeerId, PrivateKey } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Blockstore } from 'interface-blockstore'
import type { Datastore } from 'interface-datastore'

const log = logger('atmirror:net')

/**
 * The libp2p services. Both modes run `identify`, `ping` and `dht`; the public mode
 * adds `bootstrap` (the IPFS bootstrap peers), `autoNAT`, `identifyPush` and, unless
 * turned off, `upnp`.
 */
export interface NetworkServices extends Record<string, unknown> {
  identify: Identify
  ping: Ping
  dht: KadDHT
}

/** Service names only the public mode runs. */
export const PUBLIC_ONLY_SERVICES: readonly string[] = ['bootstrap', 'autoNAT', 'identifyPush', 'upnp']

/** Helia with the libp2p node it runs on. */
export type MirrorHelia = Helia & { libp2p: Libp2p<NetworkServices> }

export interface NetworkComponents {
  /**
   * The mirror's blockstore. Bitswap serves from it; Helia never writes to it (see
   * ServingBlockstore): whoever fetches through `helia.blockstore.get` stores the
   * bytes itself.
   */
  blockstore: Blockstore
  /** libp2p's peer store, the DHT's records and Helia's bookkeeping live here. */
  datastore: Datastore
  /**
   * Which repos hold a block: decides which blocks of withheld repos are not served
   * (see ServingBlockstore). Without it nothing is withheld.
   */
  holders?: BlockHolderIndex
  /** The mirror's hash-checked read, which Bitswap serves through (see ServingBlockstore). */
  verified?: VerifiedBlockReader
  /** Blobs stored outside the blockstore, served too (see ServingBlockstore). */
  blobs?: ServedBlobs
  /** The node's identity (see `loadOrCreatePeerKey`). */
  privateKey: PrivateKey
  /**
   * libp2p's metrics (the node's Prometheus registry, src/server/metrics.ts); Helia's
   * Bitswap reports through them too. Without it nothing is measured.
   */
  metrics?: Libp2pOptions['metrics']
}

export interface NetworkInit {
  /**
   * `public` joins the IPFS Amino DHT; `private` talks only to the given peers.
   *
   * @default 'public'
   */
  mode?: NetworkMode
  /**
   * TCP multiaddrs to listen on.
   *
   * @default ['/ip4/0.0.0.0/tcp/4001'] (public), ['/ip4/127.0.0.1/tcp/0'] (private)
   */
  listen?: string[]
  /**
   * Peers to connect to at start and to reconnect to when the connection drops,
   * as `/ip4/…/tcp/…/p2p/<peer id>`. The public mode adds the IPFS bootstrap peers.
   *
   * @default []
   */
  bootstrap?: string[]
  /**
   * Addresses to announce instead of the listen addresses (e.g. a public IP behind
   * port forwarding). Announced addresses count as verified.
   *
   * @default []
   */
  announce?: string[]
  /**
   * Configured mirror peers (`--peer`), as multiaddrs with or without /p2p/<peer id>.
   * The network does not dial them itself (the mirror finder does); in private mode
   * their hosts are allowed to be dialled.
   *
   * @default []
   */
  peers?: string[]
  /**
   * Private mode only: further IPs or CIDR ranges the node may dial (peers learned
   * through the DHT on a LAN, say). Loopback and the hosts of `listen`, `bootstrap`,
   * `announce` and `peers` are always allowed.
   *
   * @default []
   */
  allowDial?: string[]
  /**
   * Public mode only: ask the local router by UPnP / NAT-PMP to forward our port, so
   * a node behind a home router can be reachable. The mapped address is still
   * confirmed by autoNAT before it is announced.
   *
   * @default true
   */
  upnp?: boolean
  /**
   * The DHT protocol id.
   *
   * @default '/ipfs/kad/1.0.0'
   */
  dhtProtocol?: string
  /**
   * How long one dial to a bootstrap peer may take, in ms.
   *
   * @default 10000
   */
  dialTimeoutMs?: number
  /**
   * How often bootstrap peers that are not connected are dialled again, in ms.
   *
   * @default 30000
   */
  reconnectIntervalMs?: number
  /** Version string announced through identify. @default '0.0.0' */
  version?: string
}

/** Libp2p and Helia, started and stopped together. */
export class MirrorNetwork {
  readonly mode: NetworkMode
  readonly libp2p: Libp2p<NetworkServices>
  readonly helia: MirrorHelia
  /** What Bitswap serves from: tell it which repos are withheld (`setServable`). */
  readonly serving: ServingBlockstore
  readonly #bootstrap: Multiaddr[]
  readonly #dialTimeoutMs: number
  readonly #reconnectIntervalMs: number
  readonly #allowList: DialAllowList | undefined
  #reconnect: RepeatingTask | undefined
  #stopping: AbortController | undefined

  constructor (init: { mode: NetworkMode, libp2p: Libp2p<NetworkServices>, helia: MirrorHelia, serving: ServingBlockstore, bootstrap: Multiaddr[], dialTimeoutMs: number, reconnectIntervalMs: number, allowList?: DialAllowList }) {
    this.mode = init.mode
    this.#allowList = init.allowList
    this.libp2p = init.libp2p
    this.helia = init.helia
    this.serving = init.serving
    this.#bootstrap = init.bootstrap
    this.#dialTimeoutMs = init.dialTimeoutMs
    this.#reconnectIntervalMs = init.reconnectIntervalMs
  }

  /**
   * Whether the connection gater lets this node dial `ma`: always in public mode;
   * in private mode only loopback, the configured hosts and `allowDial` ranges.
   */
  dialAllowed (ma: Multiaddr): boolean {
    return this.#allowList?.allows(ma) ?? true
  }

  get peerId (): PeerId {
    return this.libp2p.peerId
  }

  /** The addresses other nodes can dial, each ending in /p2p/<our peer id>. */
  getMultiaddrs (): Multiaddr[] {
    return this.libp2p.getMultiaddrs()
  }

  /** How many peers the DHT routing table holds. */
  dhtPeerCount (): number {
    return (this.libp2p.services.dht as SingleKadDHT).routingTable?.size ?? 0
  }

  /** Peers we hold a connection to. */
  getPeers (): PeerId[] {
    return this.libp2p.getPeers()
  }

  /**
   * Starts libp2p and Helia, then dials the configured bootstrap peers once and
   * waits for those dials (each bounded by `dialTimeoutMs`), so a node is connected
   * when `start()` returns if its peers are up. Failed dials are retried in the
   * background.
   */
  async start (): Promise<void> {
    this.#stopping = new AbortController()
    try {
      await this.libp2p.start()
    } catch (err) {
      throw listenError(err)
    }
    try {
      await this.helia.start()
    } catch (err) {
      await this.libp2p.stop()
      throw err
    }
    log('started %p in %s mode on %s', this.peerId, this.mode, this.getMultiaddrs().map(ma => ma.toString()).join(', '))
    await this.#connectBootstrap()
    if (this.#bootstrap.length > 0) {
      // the next round starts an interval after the last one ended, never on top of it
      this.#reconnect = repeatingTask(async () => {
        await this.#connectBootstrap().catch(err => { log.error('bootstrap reconnect failed - %e', err) })
      }, this.#reconnectIntervalMs)
      this.#reconnect.start()
    }
  }

  async stop (): Promise<void> {
    this.#reconnect?.stop()
    this.#reconnect = undefined
    this.#stopping?.abort()
    try {
      await this.helia.stop()
    } finally {
      await this.libp2p.stop()
    }
    log('stopped %p', this.peerId)
  }

  /** Dials a peer by multiaddr (ending in /p2p/<peer id>). */
  async dial (address: string | Multiaddr, options: { signal?: AbortSignal } = {}): Promise<PeerId> {
    const ma = typeof address === 'string' ? parseMultiaddr(address) : address
    const signal = AbortSignal.any([AbortSignal.timeout(this.#dialTimeoutMs), ...(options.signal === undefined ? [] : [options.signal])])
    const connection = await this.libp2p.dial(ma, { signal })
    return connection.remotePeer
  }

  async #connectBootstrap (): Promise<void> {
    const stopping = this.#stopping?.signal
    await Promise.all(this.#bootstrap.map(async (ma) => {
      const id = multiaddrPeerId(ma)
      if (id !== undefined && this.libp2p.getPeers().some(peer => peer.toString() === id)) return
      if (stopping?.aborted === true) return
      try {
        await this.dial(ma, { signal: stopping })
        log('connected to bootstrap peer %s', ma.toString())
      } catch (err) {
        if (this.#stopping?.signal.aborted === true) return
        log.error('could not dial bootstrap peer %s - %e', ma.toString(), err)
      }
    }))
  }
}

/**
 * Builds (but does not start) the network side of a node. Validates every address
 * first: a bad `--listen`, `--bootstrap` or `--peer` is an InvalidMultiaddrError, not
 * a log line.
 */
export async function createNetwork (components: NetworkComponents, init: NetworkInit = {}): Promise<MirrorNetwork> {
  const mode = init.mode ?? 'public'
  const listen = (init.listen !== undefined && init.listen.length > 0 ? init.listen : defaultListenAddresses(mode)).map(parseListenAddress)
  const bootstrapPeers = (init.bootstrap ?? []).map(value => parseBootstrapAddress(value, mode))
  const announce = (init.announce ?? []).map(value => parseMultiaddr(value, 'announce address'))
  const peers = (init.peers ?? []).map(value => parsePeerAddress(value, mode))
  const dhtProtocol = init.dhtProtocol ?? AMINO_DHT_PROTOCOL

  const options: Libp2pOptions<NetworkServices> = {
    start: false,
    privateKey: components.privateKey,
    datastore: components.datastore,
    metrics: components.metrics,
    nodeInfo: { name: 'atmirror', version: init.version ?? '0.0.0', userAgent: `atmirror/${init.version ?? '0.0.0'}` },
    addresses: {
      listen: listen.map(ma => ma.toString()),
      announce: announce.map(ma => ma.toString())
    },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      // libp2p's connection monitor pings every peer every 10 s over this protocol
      // and drops the connection when a ping fails. With the default of one
      // outbound ping stream, a heartbeat that fires while the last one is still
      // closing (a busy peer, a long Bitswap transfer on the same connection)
      // fails at once and kills a healthy connection together with every want
      // sent on it. Room for a few overlapping pings keeps that to real failures.
      ping: ping({ maxOutboundStreams: 4, maxInboundStreams: 8 }),
      dht: mode === 'private'
        ? kadDHT({
          protocol: dhtProtocol,
          clientMode: false,
          allowQueryWithZeroPeers: true,
          // loopback and LAN addresses are the whole point of a private network
          peerInfoMapper: passthroughMapper
        })
        : kadDHT({ protocol: dhtProtocol }),
      ...(mode === 'public'
        ? {
            // a service rather than `peerDiscovery`, so that it can be inspected
            bootstrap: bootstrap({ list: [...PUBLIC_BOOTSTRAP_PEERS] }),
            autoNAT: autoNAT(),
            identifyPush: identifyPush(),
            ...(init.upnp === false ? {} : { upnp: uPnPNAT() })
          }
        : {})
    }
  }
  let allowList: DialAllowList | undefined
  if (mode === 'private') {
    const allows = new DialAllowList({ addresses: [...listen, ...bootstrapPeers, ...announce, ...peers], allow: init.allowDial })
    allowList = allows
    options.connectionGater = {
      denyDialMultiaddr: (ma) => {
        const deny = !allows.allows(ma)
        if (deny) log('private mode: refusing to dial %s', ma.toString())
        return deny
      }
    }
  }

  const libp2p = await createLibp2p(options)
  const serving = new ServingBlockstore({ blockstore: components.blockstore, holders: components.holders, verified: components.verified, blobs: components.blobs })
  const light = createHeliaLight({
    blockstore: serving,
    datastore: components.datastore,
    codecs: [dagCbor],
    routers: [new Libp2pRouter(libp2p)],
    metrics: libp2p.metrics
  })
  // What withLibp2p would do, with our libp2p: Bitswap reads `helia.libp2p`.
  const helia = Object.assign(light, { libp2p }) as unknown as MirrorHelia
  withBitswap(helia)
  return new MirrorNetwork({
    mode,
    libp2p,
    helia,
    serving,
    bootstrap: bootstrapPeers,
    dialTimeoutMs: init.dialTimeoutMs ?? 10_000,
    reconnectIntervalMs: init.reconnectIntervalMs ?? 30_000,
    allowList
  })
}

/**
 * libp2p's "some configured addresses failed to be listened on" (its
 * `faultTolerance` advice) as a {@link ListenError} naming each address and its
 * system reason (`EADDRINUSE`, `EADDRNOTAVAIL`, …); anything else as it was.
 */
function listenError (err: unknown): unknown {
  if ((err as Error)?.name !== 'UnsupportedListenAddressesError') return err
  const failures = [...(err as Error).message.matchAll(/^\s*(\/\S+): \w*Error: (.*)$/gm)].map(([, address, reason]) => ({ address: address as string, reason: reason as string }))
  const code = failures.map(f => /\b(E[A-Z]+)\b/.exec(f.reason)?.[1]).find(c => c !== undefined)
  const said = code === 'EADDRINUSE' ? 'address already in use' : code === 'EADDRNOTAVAIL' ? 'address not available on this machine' : code === 'EACCES' ? 'permission denied (ports below 1024 need privileges)' : 'cannot listen'
  return new ListenError(said, { address: failures.map(f => f.address).join(','), code }, { cause: err })
}

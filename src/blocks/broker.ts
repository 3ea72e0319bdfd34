/**
 * A source of blocks. The fetch chain asks brokers in order (local blockstore,
 * then bitswap, then the DID's PDS) for whatever is still missing.
 *
 * A broker yields the blocks it has, each already hash-checked against its CID, in
 * any order, and simply does not yield the ones it lacks. When it fails (a request
 * errors, a block is corrupt), it yields what it could and then throws; the fetcher
 * records that error as the source's reason for everything still missing.
 */
import type { Block } from '../repo/block-store.ts'
import type { CID } from '../repo/cid.ts'
import type { PeerId } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'

export interface BrokerOptions {
  /** The repo the blocks belong to (the PDS broker asks that DID's PDS). */
  did?: string
  /**
   * The PDS that the sync's identity names: the PDS broker asks it rather than
   * resolving the DID again (a second resolution could name another host than the
   * one the head came from). @default resolved from `did`
   */
  pds?: string
  signal?: AbortSignal
}

export interface BlockBroker {
  /** Names the source in errors and counters (`local`, `bitswap`, `pds`). */
  readonly name: string
  getMany: (cids: CID[], options: BrokerOptions) => AsyncGenerator<Block>
}

/** A peer that mirrors (or says it mirrors) a DID. */
export interface MirrorPeer {
  id: PeerId
  multiaddrs: Multiaddr[]
  /** `dht` (a provider record) or `config` (a configured peer). */
  source: 'dht' | 'config'
}

export interface FindMirrorsOptions {
  signal?: AbortSignal
  /** Override the finder's time budget for this call, in ms. */
  timeoutMs?: number
  /** Override the finder's peer count limit for this call. */
  maxPeers?: number
  /** Ask the DHT too; `false` yields the configured peers only (no lookup). @default true */
  dht?: boolean
}

/** Finds the peers that mirror a DID (implemented in src/net by `MirrorFinder`). */
export interface MirrorLocator {
  findMirrors: (did: string, options?: FindMirrorsOptions) => AsyncIterable<MirrorPeer>
}

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

export interface BrokerOptions {
  /** The repo the blocks belong to (the PDS broker asks that DID's PDS). */
  did?: string
  signal?: AbortSignal
}

export interface BlockBroker {
  /** Names the source in errors and counters (`local`, `bitswap`, `pds`). */
  readonly name: string
  getMany: (cids: CID[], options: BrokerOptions) => AsyncGenerator<Block>
}

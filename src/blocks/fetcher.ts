/**
 * The fetch chain: ask each broker in order for what is still missing (local
 * blockstore → bitswap, when the node injects one → the DID's PDS), store every
 * block a remote source yields, and when something is still missing after the last
 * source, fail with one error listing each source's reason.
 */
import { logger } from '@libp2p/logger'
import { AllSourcesFailedError, BlockNotFoundError } from '../errors.ts'
import type { Block } from '../repo/block-store.ts'
import type { CID } from '../repo/cid.ts'
import { cidKey, verifyBlock } from '../repo/cid.ts'
import type { BlockBroker } from './broker.ts'

const log = logger('atmirror:blocks:fetcher')

/** Where fetched blocks are written (MirrorStore fits). */
export interface BlockSink {
  putBlocks: (did: string, blocks: readonly Block[], options?: { signal?: AbortSignal }) => Promise<void>
}

export interface FetchOptions {
  /** The repo the blocks belong to: the PDS broker asks its PDS, and stored blocks are staged for it. */
  did?: string
  /** The PDS to ask for `did`'s blocks, as the sync's identity names it (see {@link BrokerOptions.pds}). */
  pds?: string
  signal?: AbortSignal
  /**
   * Store blocks that remote sources yield. Needs `did` (blocks are staged for
   * that DID's running sync). @default true when `did` is given
   */
  store?: boolean
  /** Called for every block found, with its source's name. */
  onBlock?: (block: Block, source: string) => void
}

/** A block and the source that gave it. */
export interface FetchedBlock extends Block {
  source: string
}

export interface BlockFetcherComponents {
  /** Brokers in the order they are asked. */
  brokers: BlockBroker[]
  /** Where blocks from sources other than `local` are stored. */
  store?: BlockSink
}

export interface BlockFetcherInit {
  /** Blocks stored per write batch. @default 256 */
  storeBatch?: number
}

export class BlockFetcher {
  readonly #brokers: BlockBroker[]
  readonly #store: BlockSink | undefined
  readonly #storeBatch: number

  constructor (components: BlockFetcherComponents, init: BlockFetcherInit = {}) {
    this.#brokers = components.brokers
    this.#store = components.store
    this.#storeBatch = init.storeBatch ?? 256
  }

  /** The brokers, in order. */
  get brokers (): readonly BlockBroker[] {
    return this.#brokers
  }

  /**
   * Fetches `cids` through the chain, yielding each block once (in arrival order)
   * after it is stored. Throws AllSourcesFailedError, after yielding everything
   * found, when some are still missing; its `errors` hold each source's reason.
   */
  async * getMany (cids: readonly CID[], options: FetchOptions = {}): AsyncGenerator<FetchedBlock> {
    const missing = new Map<string, CID>()
    for (const cid of cids) missing.set(cidKey(cid), cid)
    const reasons: Array<{ source: string, error: Error }> = []
    const storing = options.store ?? options.did !== undefined
    if (storing && (this.#store === undefined || options.did === undefined)) {
      throw new TypeError('storing fetched blocks needs a store and a DID')
    }

    for (const broker of this.#brokers) {
      if (missing.size === 0) break
      options.signal?.throwIfAborted()
      const pending: FetchedBlock[] = []
      const flush = async (): Promise<FetchedBlock[]> => {
        const out = pending.splice(0)
        if (storing && broker.name !== 'local' && out.length > 0) {
          await this.#store?.putBlocks(options.did as string, out, { signal: options.signal })
        }
        return out
      }
      let error: Error | undefined
      try {
        for await (const block of broker.getMany([...missing.values()], { did: options.did, pds: options.pds, signal: options.signal })) {
          const key = cidKey(block.cid)
          const wanted = missing.get(key)
          if (wanted === undefined) continue // unasked or a duplicate
          // brokers verify; the chain does not take their word for it
          verifyBlock(wanted, block.bytes)
          missing.delete(key)
          pending.push({ cid: wanted, bytes: block.bytes, source: broker.name })
          if (pending.length >= this.#storeBatch) {
            for (const fetched of await flush()) {
              options.onBlock?.(fetched, broker.name)
              yield fetched
            }
          }
        }
      } catch (err) {
        if (options.signal?.aborted === true) throw err
        error = err as Error
        log('source %s failed: %e', broker.name, err)
      }
      // what a source yielded before failing is good: keep it
      for (const fetched of await flush()) {
        options.onBlock?.(fetched, broker.name)
        yield fetched
      }
      if (missing.size > 0) {
        const first = missing.values().next().value as CID
        reasons.push({
          source: broker.name,
          error: error ?? new BlockNotFoundError(first, { source: broker.name })
        })
      }
    }

    if (missing.size > 0) {
      const first = missing.values().next().value as CID
      if (missing.size > 1) {
        log('%d blocks missing after every source, first %c', missing.size, first)
      }
      throw new AllSourcesFailedError(first, reasons)
    }
  }

  /** Fetches `cids` and returns them all (for small sets); see {@link getMany}. */
  async fetchAll (cids: readonly CID[], options: FetchOptions = {}): Promise<FetchedBlock[]> {
    const out: FetchedBlock[] = []
    for await (const block of this.getMany(cids, options)) out.push(block)
    return out
  }
}

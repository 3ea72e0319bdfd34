/**
 * The first link of the fetch chain: blocks already on disk.
 */
import type { Block } from '../repo/block-store.ts'
import { verifyBlock, type CID } from '../repo/cid.ts'
import { parallel } from './parallel.ts'
import type { BlockBroker, BrokerOptions } from './broker.ts'

/** What the local broker reads from. */
export interface LocalBlockSource {
  getBlock: (cid: CID, options?: { signal?: AbortSignal }) => Promise<Uint8Array | undefined>
}

export interface LocalBrokerInit {
  /** Reads in flight. @default 32 */
  concurrency?: number
}

export class LocalBroker implements BlockBroker {
  readonly name = 'local'
  readonly #source: LocalBlockSource
  readonly #concurrency: number

  constructor (components: { store: LocalBlockSource }, init: LocalBrokerInit = {}) {
    this.#source = components.store
    this.#concurrency = init.concurrency ?? 32
  }

  async * getMany (cids: CID[], options: BrokerOptions = {}): AsyncGenerator<Block> {
    const found = parallel(cids, async (cid): Promise<Block | undefined> => {
      const bytes = await this.#source.getBlock(cid, { signal: options.signal })
      if (bytes === undefined) return undefined
      // bytes on disk were checked when written; checking again is cheap and
      // catches a file damaged since
      verifyBlock(cid, bytes)
      return { cid, bytes }
    }, this.#concurrency)
    for await (const block of found) {
      if (block !== undefined) yield block
    }
  }
}

/**
 * Misbehaving blockstores for Bitswap tests: a peer serving them is a real libp2p
 * node whose store lies (wrong bytes) or dawdles (one block held back on request).
 */
import { MemoryBlockstore } from 'blockstore-core/memory'
import type { AbortOptions } from '@libp2p/interface'
import type { Blockstore } from 'interface-blockstore'
import { cidKey, type CID } from '../../src/repo/cid.ts'

/**
 * Makes a network's Bitswap hand out `store`'s bytes as they are. Every atmirror
 * node hash-checks what it serves (ServingBlockstore), so a peer that sends bytes
 * not matching their CIDs has to be built by going around that check.
 */
export function serveUnchecked (net: { serving: { get: (cid: CID, options?: AbortOptions) => unknown } }, store: Pick<Blockstore, 'get'>): void {
  net.serving.get = (cid, options) => store.get(cid, options)
}

/** A blockstore that has every block it is given but serves each with one byte flipped. */
export class CorruptingBlockstore extends MemoryBlockstore {
  /** Blocks handed out (with a flipped byte): shows a peer did ask this store. */
  served = 0

  override async * get (cid: CID): AsyncGenerator<Uint8Array> {
    this.served++
    for await (const chunk of super.get(cid)) {
      const bad = Uint8Array.from(chunk)
      bad[bad.length - 1] ^= 0xff
      yield bad
    }
  }
}

/**
 * A blockstore that holds back one block until released, telling when it was
 * first asked for it: a want is then surely in flight on the connection.
 */
export class GatedBlockstore extends MemoryBlockstore {
  readonly #gated: string
  readonly asked: Promise<void>
  readonly #open: Promise<void>
  #onAsked: () => void = () => {}
  release: () => void = () => {}

  constructor (gated: CID) {
    super()
    this.#gated = cidKey(gated)
    this.asked = new Promise(resolve => { this.#onAsked = resolve })
    this.#open = new Promise(resolve => { this.release = resolve })
  }

  override async * get (cid: CID): AsyncGenerator<Uint8Array> {
    if (cidKey(cid) === this.#gated) {
      this.#onAsked()
      await this.#open
    }
    yield * super.get(cid)
  }
}

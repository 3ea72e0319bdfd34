/**
 * Misbehaving blockstores for Bitswap tests: a peer serving them is a real libp2p
 * node whose store lies (wrong bytes) or dawdles (one block held back on request).
 */
import { MemoryBlockstore } from 'blockstore-core/memory'
import { cidKey, type CID } from '../../src/repo/cid.ts'

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

import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { BlockBroker, BrokerOptions } from '../../src/blocks/broker.ts'
import { BlockFetcher } from '../../src/blocks/fetcher.ts'
import { LocalBroker } from '../../src/blocks/local.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import type { Block } from '../../src/repo/block-store.ts'
import { cidKey, type CID } from '../../src/repo/cid.ts'
import { block } from '../helpers/blocks.ts'

/** A broker over a fixed set of blocks: what a bitswap or PDS source would give. */
class SetBroker implements BlockBroker {
  readonly name: string
  readonly asked: CID[][] = []
  readonly #blocks = new Map<string, Block>()
  readonly #fail?: Error
  readonly #failAfter: number

  constructor (name: string, blocks: Block[], init: { fail?: Error, failAfter?: number } = {}) {
    this.name = name
    for (const b of blocks) this.#blocks.set(cidKey(b.cid), b)
    this.#fail = init.fail
    this.#failAfter = init.failAfter ?? 0
  }

  async * getMany (cids: CID[], options: BrokerOptions): AsyncGenerator<Block> {
    this.asked.push(cids)
    let yielded = 0
    for (const cid of cids) {
      options.signal?.throwIfAborted()
      if (this.#fail !== undefined && yielded >= this.#failAfter) throw this.#fail
      const found = this.#blocks.get(cidKey(cid))
      if (found === undefined) continue
      yielded++
      yield found
    }
    if (this.#fail !== undefined) throw this.#fail
  }
}

const DID = 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'
const blocks = Array.from({ length: 6 }, (_, i) => block({ n: i, text: `block ${i}` }))

describe('BlockFetcher', () => {
  let root: string
  let n = 0
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-fetcher-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })
  const open = async (): Promise<MirrorStore> => await MirrorStore.open(join(root, `s${++n}`))

  it('asks each source only for what is still missing, in order', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      await store.putBlocks(DID, [blocks[0]])
      const bitswap = new SetBroker('bitswap', [blocks[1], blocks[2]])
      const pds = new SetBroker('pds', blocks)
      const fetcher = new BlockFetcher({ store, brokers: [new LocalBroker({ store }), bitswap, pds] })
      const got = await fetcher.fetchAll(blocks.slice(0, 4).map(b => b.cid), { did: DID })
      await release()
      assert.deepEqual(got.map(b => [b.cid.toString(), b.source]).sort(), [
        [blocks[0].cid.toString(), 'local'],
        [blocks[1].cid.toString(), 'bitswap'],
        [blocks[2].cid.toString(), 'bitswap'],
        [blocks[3].cid.toString(), 'pds']
      ].sort())
      assert.deepEqual(bitswap.asked.map(list => list.length), [3])
      assert.deepEqual(pds.asked.map(list => list.map(c => c.toString())), [[blocks[3].cid.toString()]])
    } finally {
      await store.close()
    }
  })

  it('stores what remote sources give', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      const fetcher = new BlockFetcher({ store, brokers: [new LocalBroker({ store }), new SetBroker('pds', blocks)] })
      await fetcher.fetchAll(blocks.map(b => b.cid), { did: DID })
      await release()
      for (const b of blocks) assert.deepEqual(await store.getBlock(b.cid), b.bytes)
    } finally {
      await store.close()
    }
  })

  it('falls through a failing source to the next', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      const broken = new SetBroker('bitswap', blocks, { fail: new Error('peer went away'), failAfter: 2 })
      const fetcher = new BlockFetcher({ store, brokers: [broken, new SetBroker('pds', blocks)] })
      const got = await fetcher.fetchAll(blocks.map(b => b.cid), { did: DID })
      await release()
      assert.equal(got.length, blocks.length)
      // what the failing source gave before it failed is kept
      assert.equal(got.filter(b => b.source === 'bitswap').length, 2)
      assert.equal(got.filter(b => b.source === 'pds').length, blocks.length - 2)
    } finally {
      await store.close()
    }
  })

  it('treats a source that yields a corrupt block as failed and takes the block from the next', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      const forged = { cid: blocks[0].cid, bytes: blocks[1].bytes }
      const liar = new SetBroker('bitswap', [forged])
      const fetcher = new BlockFetcher({ store, brokers: [liar, new SetBroker('pds', blocks)] })
      const [got] = await fetcher.fetchAll([blocks[0].cid], { did: DID })
      await release()
      assert.equal(got.source, 'pds')
      assert.deepEqual(await store.getBlock(blocks[0].cid), blocks[0].bytes)
    } finally {
      await store.close()
    }
  })

  it('lists every source\'s reason when blocks are missing everywhere', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      const fetcher = new BlockFetcher({
        store,
        brokers: [new LocalBroker({ store }), new SetBroker('bitswap', [], { fail: new Error('no peers') }), new SetBroker('pds', [blocks[0]])]
      })
      const err = await fetcher.fetchAll([blocks[0].cid, blocks[5].cid], { did: DID }).then(() => undefined, (e: unknown) => e) as { name: string, cid: string, errors: Array<{ source: string, error: Error }> }
      await release()
      assert.equal(err?.name, 'AllSourcesFailedError')
      assert.equal(err.cid, blocks[5].cid.toString())
      assert.deepEqual(err.errors.map(e => [e.source, e.error.name]), [['local', 'BlockNotFoundError'], ['bitswap', 'Error'], ['pds', 'BlockNotFoundError']])
      // what was found is stored; what was not is nowhere
      assert.deepEqual(await store.getBlock(blocks[0].cid), blocks[0].bytes)
      assert.equal(await store.hasBlock(blocks[5].cid), false)
    } finally {
      await store.close()
    }
  })

  it('rethrows the caller\'s abort as it is', async () => {
    const fetcher = new BlockFetcher({ brokers: [new SetBroker('pds', blocks)] })
    const controller = new AbortController()
    controller.abort(new DOMException('stop', 'AbortError'))
    await assert.rejects(fetcher.fetchAll([blocks[0].cid], { signal: controller.signal, store: false }), { name: 'AbortError' })
  })

  it('fetches without storing when asked to', async () => {
    const store = await open()
    try {
      const fetcher = new BlockFetcher({ store, brokers: [new SetBroker('pds', blocks)] })
      const [got] = await fetcher.fetchAll([blocks[2].cid], { did: DID, store: false })
      assert.deepEqual(got.bytes, blocks[2].bytes)
      assert.equal(await store.hasBlock(blocks[2].cid), false)
    } finally {
      await store.close()
    }
  })
})

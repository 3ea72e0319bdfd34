import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { BlockBroker, BrokerOptions } from '../../src/blocks/broker.ts'
import { BlockFetcher } from '../../src/blocks/fetcher.ts'
import { LocalBroker } from '../../src/blocks/local.ts'
import { completeMst } from '../../src/blocks/walker.ts'
import { repoBlocksDelta, repoHoldDelta } from '../../src/mirror/gc.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import type { Block } from '../../src/repo/block-store.ts'
import { cidKey, type CID } from '../../src/repo/cid.ts'
import { verifyRepo } from '../../src/repo/verify.ts'
import { EvolvingRepo, post, posts, type RepoVersion } from '../helpers/evolving-repo.ts'
import { hostileRepo } from '../helpers/hostile-mst.ts'

class SetBroker implements BlockBroker {
  readonly name = 'pds'
  readonly asked: CID[][] = []
  readonly #blocks = new Map<string, Block>()

  constructor (blocks: Block[]) {
    for (const b of blocks) this.#blocks.set(cidKey(b.cid), b)
  }

  /** Blocks asked and not yet answered, now and at most. */
  outstanding = 0
  maxOutstanding = 0

  async * getMany (cids: CID[], _options: BrokerOptions): AsyncGenerator<Block> {
    this.asked.push(cids)
    this.outstanding += cids.length
    this.maxOutstanding = Math.max(this.maxOutstanding, this.outstanding)
    try {
      // answers take a moment, so requests overlap as they would over a network
      await new Promise(resolve => setTimeout(resolve, 1))
      for (const cid of cids) {
        const found = this.#blocks.get(cidKey(cid))
        if (found !== undefined) yield found
      }
    } finally {
      this.outstanding -= cids.length
    }
  }
}

describe('completeMst', () => {
  let root: string
  let n = 0
  let repo: EvolvingRepo
  let records: ReturnType<typeof posts>
  let v1: RepoVersion
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'atmirror-walker-'))
    records = posts(200)
    repo = await EvolvingRepo.create(11, records)
    v1 = await repo.version()
  })
  after(async () => { await rm(root, { recursive: true, force: true }) })
  const open = async (): Promise<MirrorStore> => await MirrorStore.open(join(root, `s${++n}`))

  it('fills an empty store from the sources, each block asked once, a bounded number in flight', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      const broker = new SetBroker(v1.blocks)
      const fetcher = new BlockFetcher({ store, brokers: [new LocalBroker({ store }), broker] })
      await store.putBlocks(v1.did, v1.blocks.filter(b => b.cid.equals(v1.commit)))
      const result = await completeMst(store.blocks, fetcher, v1.data, { did: v1.did, inFlight: 16, batch: 8 })
      await release()
      assert.equal(result.fetched.pds, v1.blocks.length - 1)
      const asked = broker.asked.flat().map(cidKey)
      assert.equal(asked.length, v1.blocks.length - 1)
      assert.equal(new Set(asked).size, asked.length)
      assert.ok(broker.maxOutstanding <= 16, `${broker.maxOutstanding} blocks in flight at once`)
      // pipelined: requests overlap rather than going one level at a time
      assert.ok(broker.maxOutstanding > 8, `${broker.maxOutstanding} blocks in flight at once`)
      const summary = await verifyRepo(store.blocks, v1.commit, { did: v1.did, key: repo.key })
      assert.equal(summary.records, records.length)
    } finally {
      await store.close()
    }
  })

  it('does not enter subtrees the stored repo holds', async () => {
    const store = await open()
    try {
      let release = await store.beginWrite()
      await store.putBlocks(v1.did, v1.blocks)
      await store.commitRepo({ did: v1.did, commit: v1.commit.toString(), rev: v1.rev, data: v1.data.toString(), status: 'active', syncedAt: '' }, await repoBlocksDelta(store.blocks, v1.commit), { fresh: true })
      await release()

      const v2 = await repo.write([{ action: 'update', value: post(records[120].rkey, 'edited') }])
      const v1Blocks = new Set(v1.blocks.map(b => cidKey(b.cid)))
      const fresh = v2.blocks.filter(b => !v1Blocks.has(cidKey(b.cid)))
      release = await store.beginWrite()
      await store.putBlocks(v2.did, fresh.filter(b => b.cid.equals(v2.commit)))
      const broker = new SetBroker(v2.blocks)
      const fetcher = new BlockFetcher({ store, brokers: [new LocalBroker({ store }), broker] })
      const result = await completeMst(store.blocks, fetcher, v2.data, { did: v2.did, known: async (cids) => await store.holds.heldBy(v2.did, cids) })
      // one path from the root to the changed key, plus the new record
      assert.equal(result.nodes, result.depth)
      assert.equal(result.fetched.pds, fresh.length - 1)
      const asked = broker.asked.flat().length
      assert.equal(asked, fresh.length - 1)
      const delta = await repoHoldDelta(store.blocks, v1, v2)
      await store.commitRepo({ did: v2.did, commit: v2.commit.toString(), rev: v2.rev, data: v2.data.toString(), status: 'active', syncedAt: '' }, delta)
      await release()
      const summary = await verifyRepo(store.blocks, v2.commit, { did: v2.did, key: repo.key })
      assert.equal(summary.records, records.length)
    } finally {
      await store.close()
    }
  })

  it('fails with AllSourcesFailedError when a record is nowhere', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      const lost = v1.blocks.find(b => !b.cid.equals(v1.commit) && !b.cid.equals(v1.data) && b.bytes[0] !== 0xa2) as Block
      const fetcher = new BlockFetcher({ store, brokers: [new LocalBroker({ store }), new SetBroker(v1.blocks.filter(b => b !== lost))] })
      await assert.rejects(completeMst(store.blocks, fetcher, v1.data, { did: v1.did }), (err: Error & { cid?: string }) => {
        assert.equal(err.name, 'AllSourcesFailedError')
        assert.equal(err.cid, lost.cid.toString())
        return true
      })
      await store.discardStaged(v1.did)
      await release()
    } finally {
      await store.close()
    }
  })

  it('fails with MstInvalidError when a node is not an MST node', async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      // a record block where the tree says a node is
      const record = v1.blocks.find(b => b.bytes[0] !== 0xa2 && !b.cid.equals(v1.commit)) as Block
      const fetcher = new BlockFetcher({ store, brokers: [new SetBroker([record])] })
      await assert.rejects(completeMst(store.blocks, fetcher, record.cid, { did: v1.did }), { name: 'MstInvalidError' })
      await store.discardStaged(v1.did)
      await release()
      assert.equal(await store.hasBlock(record.cid), false)
    } finally {
      await store.close()
    }
  })

  it('fails with MstInvalidError on a node reached twice, asking for each block at most once', { timeout: 60_000 }, async () => {
    const store = await open()
    try {
      const release = await store.beginWrite()
      // 3^40 paths through 40 nodes: a walk that went down every link would not end
      const hostile = hostileRepo(40)
      const broker = new SetBroker(hostile.blocks)
      const fetcher = new BlockFetcher({ store, brokers: [new LocalBroker({ store }), broker] })
      await assert.rejects(completeMst(store.blocks, fetcher, hostile.data, { did: hostile.did }), (err: Error & { cid?: string }) => {
        assert.equal(err.name, 'MstInvalidError')
        assert.match(err.message, /reached twice/)
        assert.equal(err.cid, hostile.shared.toString())
        return true
      })
      const asked = broker.asked.flat().map(cidKey)
      assert.equal(new Set(asked).size, asked.length)
      await store.discardStaged(hostile.did)
      await release()
    } finally {
      await store.close()
    }
  })
})

/**
 * The Bitswap broker between real nodes on loopback (private mode, in-memory
 * stores): it fetches a wide batch from the DID's mirror, yields only blocks that
 * hash to their CID, and a peer that serves wrong bytes cannot get them in.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { MemoryDatastore } from 'datastore-core/memory'
import * as dagCbor from '@ipld/dag-cbor'
import { BitswapBroker } from '../../src/blocks/bitswap-broker.ts'
import { MirrorFinder } from '../../src/net/mirrors.ts'
import { createNetwork, type MirrorNetwork } from '../../src/net/network.ts'
import { cidForBytes, cidKey } from '../../src/repo/cid.ts'
import type { Block } from '../../src/repo/block-store.ts'
import type { CID } from '../../src/repo/cid.ts'
import type { Blockstore } from 'interface-blockstore'
import { CorruptingBlockstore, GatedBlockstore, serveUnchecked } from '../helpers/blockstores.ts'
import { until } from '../helpers/until.ts'

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'

function makeBlocks (n: number, seed: number): Block[] {
  const blocks: Block[] = []
  for (let i = 0; i < n; i++) {
    const bytes = dagCbor.encode({ $type: 'app.bsky.feed.post', text: `post ${seed}/${i}`, createdAt: '2024-01-01T00:00:00.000Z' })
    blocks.push({ cid: cidForBytes(bytes), bytes })
  }
  return blocks
}

async function startNode (blockstore: Blockstore): Promise<MirrorNetwork> {
  const net = await createNetwork({
    blockstore,
    datastore: new MemoryDatastore(),
    privateKey: await generateKeyPair('Ed25519')
  }, { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'] })
  await net.start()
  return net
}

/**
 * A block time limit far above any delay a loaded machine causes, for the tests
 * where blocks must arrive: two nodes in one busy process can take seconds to move
 * a batch, and a want that timed out is not answered again (the mirror does not
 * resend a block it has sent), so a tight limit fails the whole batch. It only
 * bounds a failure; a test whose wants end by the limit sets its own.
 */
const PATIENT = { blockTimeoutMs: 60_000 }

function brokerFor (node: MirrorNetwork, peers: MirrorNetwork[], init: { blockTimeoutMs?: number, maxSessionResets?: number } = {}): BitswapBroker {
  const mirrors = new MirrorFinder({ libp2p: node.libp2p }, { peers: peers.map(peer => peer.getMultiaddrs()[0]?.toString() as string), timeoutMs: 500 })
  return new BitswapBroker({ blocks: node.helia.blockstore, libp2p: node.libp2p, mirrors }, { ...PATIENT, ...init })
}

/** A MirrorFinder that records each lookup: whether it asked the DHT. */
function countingFinder (finder: MirrorFinder): { mirrors: Pick<MirrorFinder, 'findMirrors'>, lookups: boolean[] } {
  const lookups: boolean[] = []
  return {
    lookups,
    mirrors: {
      findMirrors: (did, options) => {
        lookups.push(options?.dht !== false)
        return finder.findMirrors(did, options)
      }
    }
  }
}

async function collect (source: AsyncGenerator<Block>, onBlock?: (block: Block) => void): Promise<{ blocks: Block[], error?: Error }> {
  const blocks: Block[] = []
  try {
    for await (const block of source) {
      blocks.push(block)
      onBlock?.(block)
    }
  } catch (err) {
    return { blocks, error: err as Error }
  }
  return { blocks }
}

describe('bitswap broker', () => {
  const held = makeBlocks(600, 1)
  const absent = makeBlocks(3, 2)
  let mirror: MirrorNetwork
  let hostile: MirrorNetwork
  let hostileStore: CorruptingBlockstore
  const nodes: MirrorNetwork[] = []

  before(async () => {
    const store = new MemoryBlockstore()
    for (const { cid, bytes } of held) await store.put(cid, bytes)
    mirror = await startNode(store)
    hostileStore = new CorruptingBlockstore()
    for (const { cid, bytes } of held.slice(0, 20)) await hostileStore.put(cid, bytes)
    hostile = await startNode(hostileStore)
    serveUnchecked(hostile, hostileStore)
    nodes.push(mirror, hostile)
  })

  after(async () => {
    await Promise.all(nodes.map(async node => { await node.stop() }))
  })

  it('fetches a wide batch from the mirror, every block verified', async () => {
    const fetcherStore = new MemoryBlockstore()
    const node = await startNode(fetcherStore)
    nodes.push(node)
    const broker = brokerFor(node, [mirror])
    const { blocks, error } = await collect(broker.getMany(held.map(b => b.cid), { did: DID }))
    assert.equal(error, undefined)
    assert.equal(blocks.length, held.length)
    const want = new Map(held.map(b => [cidKey(b.cid), b.bytes]))
    for (const block of blocks) assert.ok(Buffer.from(block.bytes).equals(want.get(cidKey(block.cid)) as Uint8Array))
    assert.equal(broker.stats().sessions, 1, 'one session for the batch: no per-block lookups')
  })

  it('blocks no mirror has do not hold up the rest of the batch', async () => {
    const node = await startNode(new MemoryBlockstore())
    nodes.push(node)
    const broker = brokerFor(node, [mirror])
    const present = held.slice(0, 50)
    const wanted = [...present, ...absent]
    // a want nobody can answer ends only by the block time limit: stop the batch
    // once everything the mirror has is in, rather than wait for that
    const controller = new AbortController()
    const got = new Set<string>()
    const { error } = await collect(broker.getMany(wanted.map(b => b.cid), { did: DID, signal: controller.signal }), block => {
      got.add(cidKey(block.cid))
      if (present.every(b => got.has(cidKey(b.cid)))) controller.abort()
    })
    assert.equal(error?.name, 'AbortError')
    for (const b of present) assert.ok(got.has(cidKey(b.cid)))
    for (const b of absent) assert.ok(!got.has(cidKey(b.cid)))
  })

  it('yields nothing when the only mirror serves bytes that do not match their CIDs, and stores nothing', async () => {
    const store = new MemoryBlockstore()
    const node = await startNode(store)
    nodes.push(node)
    const broker = brokerFor(node, [hostile], { blockTimeoutMs: 1000 })
    const wanted = held.slice(0, 5)
    const servedBefore = hostileStore.served
    const { blocks } = await collect(broker.getMany(wanted.map(b => b.cid), { did: DID }))
    assert.equal(blocks.length, 0)
    for (const b of wanted) assert.equal(await store.has(b.cid), false)
    // not vacuous: the broker did open a session with the hostile peer, which did send its bytes
    assert.ok(broker.stats().sessions >= 1)
    assert.ok(hostileStore.served > servedBefore, `the hostile peer was asked (${hostileStore.served - servedBefore} blocks sent)`)
    assert.equal(broker.stats().blocks, 0)
  })

  it('refuses bytes that do not match their CID even when the session hands them over, and says so', async () => {
    // Bitswap never hands over mismatching bytes (it matches blocks to wants by
    // hash), so the broker's own check is reached only through a session that does:
    // a hand-made one over a real connection to the mirror.
    const node = await startNode(new MemoryBlockstore())
    nodes.push(node)
    const wanted = held.slice(100, 110)
    const bad = wanted[3] as Block
    const bytesOf = new Map(held.map(b => [cidKey(b.cid), b.bytes]))
    let asked = 0
    const lying = {
      createSession: () => ({
        get: async function * (cid: CID) {
          asked++
          const bytes = bytesOf.get(cidKey(cid)) as Uint8Array
          if (!cid.equals(bad.cid)) { yield bytes; return }
          const flipped = Uint8Array.from(bytes)
          flipped[flipped.length - 1] ^= 0xff
          yield flipped
        }
      })
    }
    const mirrors = new MirrorFinder({ libp2p: node.libp2p }, { peers: [mirror.getMultiaddrs()[0]?.toString() as string], timeoutMs: 500 })
    const broker = new BitswapBroker({ blocks: lying, libp2p: node.libp2p, mirrors }, { blockTimeoutMs: 2000 })
    const { blocks, error } = await collect(broker.getMany(wanted.map(b => b.cid), { did: DID }))
    assert.equal(error?.name, 'CidMismatchError')
    assert.deepEqual(new Set(blocks.map(b => cidKey(b.cid))), new Set(wanted.filter(b => b !== bad).map(b => cidKey(b.cid))))
    for (const block of blocks) assert.ok(Buffer.from(block.bytes).equals(bytesOf.get(cidKey(block.cid)) as Uint8Array))
    // asked once, then once more on a fresh session, then given up
    assert.ok(asked >= wanted.length + 1)
    assert.equal(broker.stats().failed, 1)
    assert.ok(broker.stats().sessions >= 2, 'the retry went to a fresh session')
  })

  it('gets the right bytes from the honest mirror when a hostile one is in the session too', async () => {
    const store = new MemoryBlockstore()
    const node = await startNode(store)
    nodes.push(node)
    const broker = brokerFor(node, [hostile, mirror])
    const wanted = held.slice(0, 20)
    const { blocks } = await collect(broker.getMany(wanted.map(b => b.cid), { did: DID }))
    assert.equal(blocks.length, wanted.length)
    const want = new Map(wanted.map(b => [cidKey(b.cid), b.bytes]))
    for (const block of blocks) assert.ok(Buffer.from(block.bytes).equals(want.get(cidKey(block.cid)) as Uint8Array))
  })

  it('yields nothing without mirrors', async () => {
    const node = await startNode(new MemoryBlockstore())
    nodes.push(node)
    const broker = brokerFor(node, [])
    const { blocks, error } = await collect(broker.getMany(held.slice(0, 3).map(b => b.cid), { did: DID }))
    assert.equal(blocks.length, 0)
    assert.equal(error, undefined)
  })

  it('remembers finding no mirrors: the next batches skip the DHT lookup but still use configured peers', async () => {
    const node = await startNode(new MemoryBlockstore())
    nodes.push(node)
    const finder = new MirrorFinder({ libp2p: node.libp2p }, { timeoutMs: 500 })
    const { mirrors, lookups } = countingFinder(finder)
    const broker = new BitswapBroker({ blocks: node.helia.blockstore, libp2p: node.libp2p, mirrors }, { ...PATIENT, emptyCacheMs: 60_000 })
    const first = await collect(broker.getMany(held.slice(0, 3).map(b => b.cid), { did: DID }))
    assert.equal(first.blocks.length, 0)
    assert.deepEqual(lookups, [true], 'the first batch asks the DHT')
    const second = await collect(broker.getMany(held.slice(3, 6).map(b => b.cid), { did: DID }))
    assert.equal(second.blocks.length, 0)
    assert.deepEqual(lookups, [true, false], 'the second batch does not repeat the DHT lookup')
    // a peer configured meanwhile is used at once
    finder.addPeer(mirror.getMultiaddrs()[0]?.toString() as string)
    const third = await collect(broker.getMany(held.slice(6, 9).map(b => b.cid), { did: DID }))
    assert.equal(third.error, undefined)
    assert.deepEqual(new Set(third.blocks.map(b => cidKey(b.cid))), new Set(held.slice(6, 9).map(b => cidKey(b.cid))))
    assert.deepEqual(lookups, [true, false, false])
    // forget() drops the memory: the DHT is asked again
    broker.forget(DID)
    await collect(broker.getMany(held.slice(9, 10).map(b => b.cid), { did: DID }))
    assert.equal(lookups.at(-1), true)
  })

  it('looks the DHT up again once emptyCacheMs has passed', async () => {
    const node = await startNode(new MemoryBlockstore())
    nodes.push(node)
    const { mirrors, lookups } = countingFinder(new MirrorFinder({ libp2p: node.libp2p }, { timeoutMs: 500 }))
    const broker = new BitswapBroker({ blocks: node.helia.blockstore, libp2p: node.libp2p, mirrors }, { blockTimeoutMs: 2000, emptyCacheMs: 300 })
    const started = Date.now()
    await collect(broker.getMany(held.slice(0, 1).map(b => b.cid), { did: DID }))
    await until('a second DHT lookup', async () => {
      await collect(broker.getMany(held.slice(0, 1).map(b => b.cid), { did: DID }))
      return lookups.filter(Boolean).length >= 2
    })
    assert.ok(Date.now() - started >= 300, 'not before emptyCacheMs')
    assert.ok(lookups.includes(false), 'batches in between skipped the DHT')
  })

  /**
   * A mirror holding `n` blocks that holds back the middle one, and a fetcher
   * asking it for all of them with a block timeout far longer than any test: had
   * the broker waited for it, a want would have timed out. Resolves once the
   * mirror is serving the batch.
   */
  async function midBatch (n: number, seed: number, init: { maxSessionResets?: number } = {}) {
    const blocks = makeBlocks(n, seed)
    const slowStore = new GatedBlockstore((blocks[n >> 1] as Block).cid)
    for (const { cid, bytes } of blocks) await slowStore.put(cid, bytes)
    const slow = await startNode(slowStore)
    const node = await startNode(new MemoryBlockstore())
    nodes.push(slow, node)
    const broker = brokerFor(node, [slow], { blockTimeoutMs: 120_000, ...init })
    const fetching = collect(broker.getMany(blocks.map(b => b.cid), { did: DID }))
    await slowStore.asked
    return { blocks, slow, slowStore, node, broker, fetching }
  }

  it('asks again at once when the connection to the mirror closes with wants in flight', async () => {
    const { blocks, slow, slowStore, node, broker, fetching } = await midBatch(40, 3)
    // drop the connection under the batch, then let the block go
    await node.libp2p.hangUp(slow.libp2p.peerId)
    slowStore.release()
    const { blocks: got, error } = await fetching
    assert.equal(error, undefined)
    assert.deepEqual(new Set(got.map(b => cidKey(b.cid))), new Set(blocks.map(b => cidKey(b.cid))))
    const stats = broker.stats()
    assert.ok(stats.requeued > 0, `wants in flight were asked again (requeued ${stats.requeued})`)
    assert.equal(stats.timeouts, 0)
    assert.equal(stats.failed, 0)
    assert.equal(stats.sessions, 2, 'one fresh session after the connection closed')
  })

  it('gives up on the batch when connections keep closing past maxSessionResets, so the next source takes over', async () => {
    const { blocks, slow, slowStore, node, broker, fetching } = await midBatch(10, 4, { maxSessionResets: 0 })
    await node.libp2p.hangUp(slow.libp2p.peerId)
    const { blocks: got, error } = await fetching
    slowStore.release()
    assert.equal(error, undefined)
    assert.ok(got.length < blocks.length, `the broker stopped instead of waiting (${got.length} of ${blocks.length})`)
    assert.equal(broker.stats().timeouts, 0)
    assert.ok(broker.stats().failed > 0)
  })

  it('ends the batch without waiting for timeouts when the mirror goes away mid-batch', async () => {
    const { blocks, slow, slowStore, broker, fetching } = await midBatch(10, 5)
    // the mirror shuts down while it is serving the batch
    const stopping = slow.stop()
    slowStore.release()
    await stopping
    const { blocks: got, error } = await fetching
    assert.equal(error, undefined)
    assert.ok(got.length < blocks.length, `the broker stopped instead of waiting (${got.length} of ${blocks.length})`)
    assert.equal(broker.stats().timeouts, 0)
  })
})

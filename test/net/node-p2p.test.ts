/**
 * The peer-to-peer side as the node wires it (createMirrorNode, private mode on
 * loopback, a real data directory): Bitswap withholds the blocks of suspended and
 * deactivated repos, the reprovider follows unpins and republishes on its interval,
 * and configured peers reach the network's dial allow-list.
 *
 * Repos are made by the reference implementation (test/helpers/evolving-repo.ts) and written
 * into the node's store the way a sync does (staged blocks, one atomic advance), so
 * the holder index is the real one.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { MemoryDatastore } from 'datastore-core/memory'
import { base32 } from 'multiformats/bases/base32'
import { BitswapBroker } from '../../src/blocks/bitswap-broker.ts'
import { rendezvousCid } from '../../src/identity/rendezvous.ts'
import { repoBlocksDelta } from '../../src/mirror/gc.ts'
import type { MirrorStore, RepoState } from '../../src/mirror/store.ts'
import { HeadExchange } from '../../src/net/head-exchange.ts'
import { MirrorFinder } from '../../src/net/mirrors.ts'
import { createNetwork, type MirrorNetwork } from '../../src/net/network.ts'
import { ServingBlockstore, type BlockHolderIndex } from '../../src/net/serving-blockstore.ts'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import type { Block } from '../../src/repo/block-store.ts'
import { cidKey, type CID } from '../../src/repo/cid.ts'
import { EvolvingRepo, posts, type RepoVersion } from '../helpers/evolving-repo.ts'
import { until } from '../helpers/until.ts'
import type { PeerId } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'

/** Writes a repo version into the store as a sync would, pinned, with `status`. */
async function storeVersion (store: MirrorStore, version: RepoVersion, status: RepoState['status']): Promise<void> {
  const release = await store.beginWrite()
  try {
    await store.putBlocks(version.did, version.blocks)
    const state: RepoState = { did: version.did, commit: version.commit.toString(), rev: version.rev, data: version.data.toString(), status, syncedAt: new Date().toISOString() }
    await store.commitRepo(state, await repoBlocksDelta(store.blocks, version.commit), { pin: true, fresh: true })
  } finally {
    await release()
  }
}

/** Changes the stored status of a repo and tells the node, as a sync that learned it would. */
async function setStatus (node: MirrorNode, did: string, status: RepoState['status']): Promise<void> {
  const state = await node.store.getState(did)
  assert.ok(state !== undefined)
  await node.store.putState({ ...state, status })
  node.p2p?.repoChanged(did)
  await node.p2p?.idle()
}

/** Whether the node holds its own kad-dht provider record for `cid`. */
async function hasSelfRecord (node: MirrorNode, cid: CID): Promise<boolean> {
  const key = `/dht/provider/${base32.baseEncode(cid.multihash.bytes).toUpperCase()}/${node.network?.peerId.toString()}`.toUpperCase()
  for await (const found of node.store.datastore.queryKeys({ prefix: '/dht/provider/' })) {
    if (found.toString().toUpperCase() === key) return true
  }
  return false
}

const dirs: string[] = []

async function mirrorNode (init: { reprovideIntervalMs?: number, bootstrap?: string[] } = {}): Promise<MirrorNode> {
  const dir = await mkdtemp(join(tmpdir(), 'atmirror-node-p2p-'))
  dirs.push(dir)
  return await createMirrorNode({
    dataDir: dir,
    network: {
      mode: 'private',
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: init.bootstrap,
      services: { reprovider: init.reprovideIntervalMs === undefined ? undefined : { intervalMs: init.reprovideIntervalMs } }
    },
    api: false,
    checkOnStart: false,
    intervalMs: 0
  })
}

after(async () => {
  await Promise.all(dirs.map(async dir => await rm(dir, { recursive: true, force: true })))
})

describe('Bitswap withholds the blocks of repos that are not active', () => {
  let node: MirrorNode
  let fetcher: MirrorNetwork
  let active: RepoVersion
  let deactivated: RepoVersion
  /** Blocks of the active repo only, of the deactivated one only, and of both. */
  let activeOnly: Block[]
  let deactivatedOnly: Block[]
  let shared: Block[]

  before(async () => {
    active = await (await EvolvingRepo.create(31, [...posts(20, 'shared'), ...posts(5, 'active only', 20)])).version()
    deactivated = await (await EvolvingRepo.create(32, [...posts(20, 'shared'), ...posts(5, 'deactivated only', 40)])).version()
    const inActive = new Set(active.blocks.map(b => cidKey(b.cid)))
    const inDeactivated = new Set(deactivated.blocks.map(b => cidKey(b.cid)))
    activeOnly = active.blocks.filter(b => !inDeactivated.has(cidKey(b.cid)))
    deactivatedOnly = deactivated.blocks.filter(b => !inActive.has(cidKey(b.cid)))
    shared = active.blocks.filter(b => inDeactivated.has(cidKey(b.cid)))
    assert.ok(activeOnly.length >= 6 && deactivatedOnly.length >= 6 && shared.length >= 20, 'the two repos share the common records')

    node = await mirrorNode()
    await storeVersion(node.store, active, 'active')
    await storeVersion(node.store, deactivated, 'deactivated')
    // the withheld set is read from the stored states when the node starts
    await node.start()
    fetcher = await createNetwork({ blockstore: new MemoryBlockstore(), datastore: new MemoryDatastore(), privateKey: await generateKeyPair('Ed25519') }, { mode: 'private' })
    await fetcher.start()
  })

  after(async () => {
    await fetcher?.stop()
    await node?.stop()
  })

  /**
   * Asks the node for `blocks` over Bitswap from a fresh peer; the CIDs that
   * arrived. The fetch ends once every block of `expect.served` is in and the node
   * has refused `expect.refused` more requests, not after some time: a want the
   * node refuses ends only by the broker's time limit, and a tight limit fails the
   * wants for blocks that must arrive on a loaded machine (the limit here only
   * bounds a failure). A fresh peer each time, because the node's Bitswap keeps
   * per-peer state: for a few seconds it does not answer again a want for a block
   * it sent that peer, and it sends a block a peer wanted earlier once that block
   * becomes servable, so a reused peer could see neither a refusal nor a block.
   */
  async function fetchFromNode (blocks: Block[], expect: { served: Block[], refused: number }): Promise<Set<string>> {
    const serving = node.network?.serving
    assert.ok(serving !== undefined)
    const refusedBefore = serving.stats().refused
    const peer = await createNetwork({ blockstore: new MemoryBlockstore(), datastore: new MemoryDatastore(), privateKey: await generateKeyPair('Ed25519') }, { mode: 'private' })
    await peer.start()
    try {
      const mirrors = new MirrorFinder({ libp2p: peer.libp2p }, { peers: [node.network?.getMultiaddrs()[0]?.toString() as string], timeoutMs: 1000 })
      const broker = new BitswapBroker({ blocks: peer.helia.blockstore, libp2p: peer.libp2p, mirrors }, { blockTimeoutMs: 60_000 })
      const got = new Set<string>()
      const controller = new AbortController()
      let ended = false
      const fetching = (async () => {
        try {
          for await (const block of broker.getMany(blocks.map(b => b.cid), { did: deactivated.did, signal: controller.signal })) got.add(cidKey(block.cid))
        } catch (err) {
          if (!controller.signal.aborted) throw err
        } finally {
          ended = true
        }
      })()
      await until('the node to serve and refuse what it should', () => ended || (expect.served.every(b => got.has(cidKey(b.cid))) && serving.stats().refused >= refusedBefore + expect.refused), { timeout: 120_000 })
      controller.abort()
      await fetching
      return got
    } finally {
      await peer.stop()
    }
  }

  it('serves the active repo, and a block the active and the deactivated repo share, but not what only the deactivated repo holds', async () => {
    assert.deepEqual([...node.network?.serving.withheld ?? []], [deactivated.did])
    const refusedBefore = node.network?.serving.stats().refused ?? 0
    const got = await fetchFromNode([...activeOnly, ...shared, ...deactivatedOnly], { served: [...activeOnly, ...shared], refused: deactivatedOnly.length })
    for (const b of activeOnly) assert.ok(got.has(cidKey(b.cid)), `active block ${b.cid.toString()} served`)
    for (const b of shared) assert.ok(got.has(cidKey(b.cid)), `shared block ${b.cid.toString()} served`)
    for (const b of deactivatedOnly) assert.equal(got.has(cidKey(b.cid)), false, `deactivated block ${b.cid.toString()} withheld`)
    // the node was asked for them and said no (it has them on disk)
    assert.ok((node.network?.serving.stats().refused ?? 0) > refusedBefore)
    for (const b of deactivatedOnly) assert.equal(await node.store.hasBlock(b.cid), true)
    // the head exchange agrees: the active repo's head, nothing for the deactivated one
    const asker = new HeadExchange({ libp2p: fetcher.libp2p })
    const peerId = node.network?.peerId as PeerId
    await fetcher.libp2p.dial(node.network?.getMultiaddrs()[0] as Multiaddr)
    assert.equal((await asker.requestHead(peerId, active.did)).cid.toString(), active.commit.toString())
    await assert.rejects(asker.requestHead(peerId, deactivated.did), { name: 'PeerHeadNotFoundError' })
  })

  it('serves the repo again once it is active, and withholds it when it is suspended', async () => {
    await setStatus(node, deactivated.did, 'active')
    assert.equal(node.network?.serving.withheld.size, 0)
    const got = await fetchFromNode(deactivatedOnly, { served: deactivatedOnly, refused: 0 })
    assert.equal(got.size, deactivatedOnly.length)

    await setStatus(node, deactivated.did, 'suspended')
    assert.deepEqual([...node.network?.serving.withheld ?? []], [deactivated.did])
    const refusedBefore = node.network?.serving.stats().refused ?? 0
    const again = await fetchFromNode(deactivatedOnly.slice(0, 3), { served: [], refused: 3 })
    assert.equal(again.size, 0)
    assert.ok((node.network?.serving.stats().refused ?? 0) > refusedBefore, 'the node was asked and refused')
  })

  it('an unpinned repo is no longer withheld (its holds are gone with it)', async () => {
    await node.unpin(deactivated.did)
    await node.p2p?.idle()
    assert.equal(node.network?.serving.withheld.size, 0)
  })
})

describe('ServingBlockstore', () => {
  it('looks up no holders while no repo is withheld', async () => {
    const store = new MemoryBlockstore()
    const { blocks } = await (await EvolvingRepo.create(33, posts(1, 'solo'))).version()
    for (const { cid, bytes } of blocks) await store.put(cid, bytes)
    let lookups = 0
    const holders: BlockHolderIndex = { holders: async function * () { lookups++; yield 'did:plc:someone' } }
    const serving = new ServingBlockstore({ blockstore: store, holders })
    const cid = (blocks[0] as Block).cid
    assert.equal(await serving.has(cid), true)
    assert.equal(lookups, 0)
    serving.setServable('did:plc:someone', false)
    assert.equal(await serving.has(cid), false)
    await assert.rejects(async () => { for await (const chunk of serving.get(cid)) assert.ok(chunk) }, { name: 'NotFoundError' })
    assert.equal(lookups, 2)
    assert.equal(serving.stats().refused, 2)
    serving.setServable('did:plc:someone', true)
    assert.equal(await serving.has(cid), true)
    assert.equal(lookups, 2)
  })
})

describe('DHT announcements through the node', () => {
  it('withdraws the self records of a repo unpinned through the node', async () => {
    const version = await (await EvolvingRepo.create(34, posts(10, 'unpin me'))).version()
    const node = await mirrorNode()
    try {
      await storeVersion(node.store, version, 'active')
      await node.start()
      // the pass on start announces what is pinned
      await until('the repo to be announced', async () => await hasSelfRecord(node, rendezvousCid(version.did)) && await hasSelfRecord(node, version.commit))
      assert.equal(node.p2p?.reprovider?.announcedFor(version.did)?.commit.toString(), version.commit.toString())
      await node.unpin(version.did)
      await node.p2p?.idle()
      assert.equal(await hasSelfRecord(node, rendezvousCid(version.did)), false)
      assert.equal(await hasSelfRecord(node, version.commit), false)
      assert.equal(node.p2p?.reprovider?.announcedFor(version.did), undefined)
    } finally {
      await node.stop()
    }
  })

  it('re-announces pinned repos on its interval, to the DHT peer', async () => {
    const version = await (await EvolvingRepo.create(35, posts(3, 'again'))).version()
    const peer = await createNetwork({ blockstore: new MemoryBlockstore(), datastore: new MemoryDatastore(), privateKey: await generateKeyPair('Ed25519') }, { mode: 'private' })
    await peer.start()
    const node = await mirrorNode({ reprovideIntervalMs: 200, bootstrap: [peer.getMultiaddrs()[0]?.toString() as string] })
    try {
      await storeVersion(node.store, version, 'active')
      await node.start()
      await until('the DHT peer in the routing table', () => (node.network?.dhtPeerCount() ?? 0) > 0)
      const reprovider = node.p2p?.reprovider
      assert.ok(reprovider !== undefined)
      const passes = reprovider.stats().passes
      await until('three more passes', () => reprovider.stats().passes >= passes + 3)
      // two keys per pass (rendezvous + commit)
      assert.ok(reprovider.stats().provided >= 6, `provided ${reprovider.stats().provided}`)
      assert.equal(reprovider.stats().failed, 0)
      assert.ok(await hasSelfRecord(node, rendezvousCid(version.did)))
      // and the peer holds the record it was sent
      await until('the peer to list the node as a provider', async () => {
        for await (const provider of peer.libp2p.contentRouting.findProviders(rendezvousCid(version.did), { signal: AbortSignal.timeout(2000) })) {
          if (provider.id.equals(node.network?.peerId)) return true
        }
        return false
      })
    } finally {
      await node.stop()
      await peer.stop()
    }
  })
})

describe('configured peers reach the network', () => {
  it('a --peer the private mode could not dial fails the node at creation, and leaves the data directory free', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'atmirror-node-p2p-'))
    dirs.push(dir)
    const init = { dataDir: dir, api: false as const, checkOnStart: false, intervalMs: 0 }
    await assert.rejects(createMirrorNode({
      ...init,
      network: { mode: 'private', mirrors: { peers: ['/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN'] } }
    }), { name: 'InvalidMultiaddrError' })
    const node = await createMirrorNode({ ...init, network: false })
    assert.deepEqual(await node.store.pins.list(), [])
    await node.stop()
  })
})

/**
 * DHT announcements between three real nodes on loopback (private mode, kad-dht in
 * server mode): a pinned DID's rendezvous key and commit become findable, a new
 * commit replaces the old one, unpinning and takedowns withdraw, stale self records
 * from earlier runs are cancelled, and the work stays within its concurrency.
 *
 * "Withdrawn" is checked where it is true: our own provider record (kad-dht's
 * datastore) is gone, so this node neither lists itself nor republishes. Records
 * other peers already hold expire on their own (the DHT has no retraction).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MemoryDatastore } from 'datastore-core/memory'
import { MemoryBlockstore } from 'blockstore-core/memory'
import * as dagCbor from '@ipld/dag-cbor'
import { base32 } from 'multiformats/bases/base32'
import { rendezvousCid } from '../../src/identity/rendezvous.ts'
import { MirrorStore, type RepoState } from '../../src/mirror/store.ts'
import { MirrorFinder } from '../../src/net/mirrors.ts'
import { createNetwork, type MirrorNetwork } from '../../src/net/network.ts'
import { Reprovider } from '../../src/net/reprovider.ts'
import { MemoryBlockStore } from '../../src/repo/block-store.ts'
import { cidForBytes, parseCid, type CID } from '../../src/repo/cid.ts'
import { generateRepo } from '../../support/generated-repo.ts'
import { splitCar } from '../helpers/car-tools.ts'
import { until } from '../helpers/until.ts'
import { hostileRepo } from '../helpers/hostile-mst.ts'

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
const OTHER = 'did:plc:44ybard66vv44zksje25o7dz'

function block (label: string): { cid: CID, bytes: Uint8Array } {
  const bytes = dagCbor.encode({ label })
  return { cid: cidForBytes(bytes), bytes }
}

function state (did: string, commit: CID, status: RepoState['status'] = 'active'): RepoState {
  return { did, commit: commit.toString(), rev: '3l3qo2vutsw2b', data: block('data').cid.toString(), status, syncedAt: new Date().toISOString() }
}

async function startNode (init: { bootstrap?: string[], datastore?: MemoryDatastore } = {}): Promise<MirrorNetwork> {
  const net = await createNetwork({
    blockstore: new MemoryBlockstore(),
    datastore: init.datastore ?? new MemoryDatastore(),
    privateKey: await generateKeyPair('Ed25519')
  }, { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: init.bootstrap ?? [] })
  await net.start()
  return net
}

/** Whether `node` holds its own provider record for `cid` (what cancelReprovide deletes). */
async function hasSelfRecord (datastore: MemoryDatastore, node: MirrorNetwork, cid: CID): Promise<boolean> {
  const key = `/dht/provider/${base32.baseEncode(cid.multihash.bytes).toUpperCase()}/${node.peerId.toString()}`
  for await (const found of datastore.queryKeys({ prefix: '/dht/provider/' })) {
    if (found.toString().toUpperCase() === key.toUpperCase()) return true
  }
  return false
}

async function providersOf (node: MirrorNetwork, cid: CID): Promise<string[]> {
  const found: string[] = []
  for await (const provider of node.libp2p.contentRouting.findProviders(cid, { signal: AbortSignal.timeout(5000) })) found.push(provider.id.toString())
  return found
}

describe('reprovider', () => {
  let dir: string
  let store: MirrorStore
  let aData: MemoryDatastore
  let a: MirrorNetwork
  let b: MirrorNetwork
  let c: MirrorNetwork
  let reprovider: Reprovider
  const commit1 = block('commit 1').cid
  const commit2 = block('commit 2').cid

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-reprovider-'))
    store = await MirrorStore.open(dir)
    aData = new MemoryDatastore()
    a = await startNode({ datastore: aData })
    const bootstrap = [a.getMultiaddrs()[0]?.toString() as string]
    b = await startNode({ bootstrap })
    c = await startNode({ bootstrap: [b.getMultiaddrs()[0]?.toString() as string] })
    // every DHT knows at least one other server before anything is provided
    await until('routing tables', async () => a.getPeers().length >= 1 && c.getPeers().length >= 1)
    reprovider = new Reprovider({
      routing: a.libp2p.contentRouting,
      store,
      providerRecords: { datastore: aData, peerId: a.peerId }
    }, { passOnStart: false, intervalMs: 0 })
    reprovider.start()
  })

  after(async () => {
    await reprovider.stop()
    await Promise.all([a.stop(), b.stop(), c.stop()])
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('announces the rendezvous key and the commit of a pinned repo', async () => {
    await store.pins.add(DID)
    await store.putState(state(DID, commit1))
    await reprovider.announce(DID)
    await reprovider.onIdle()
    assert.ok(await hasSelfRecord(aData, a, rendezvousCid(DID)))
    assert.ok(await hasSelfRecord(aData, a, commit1))
    // C knows only B, and finds A through the DHT (B stores A's records a moment
    // after A sent them: ADD_PROVIDER has no answer to wait for)
    const mirrors = new MirrorFinder({ libp2p: c.libp2p }, { timeoutMs: 5000 })
    let found: string[] = []
    await until('C to find A', async () => {
      found = []
      for await (const peer of mirrors.findMirrors(DID)) found.push(peer.id.toString())
      return found.length > 0
    })
    assert.deepEqual(found, [a.peerId.toString()])
    await until('C to find A for the commit', async () => (await providersOf(c, commit1)).includes(a.peerId.toString()))
  })

  it('announces the new commit and cancels the old one when the repo advances', async () => {
    await store.putState(state(DID, commit2))
    await reprovider.announce(DID)
    await reprovider.onIdle()
    assert.ok(await hasSelfRecord(aData, a, commit2))
    assert.equal(await hasSelfRecord(aData, a, commit1), false)
    assert.ok(await hasSelfRecord(aData, a, rendezvousCid(DID)))
    await until('C to find A for the new commit', async () => (await providersOf(c, commit2)).includes(a.peerId.toString()))
    assert.equal(reprovider.announcedFor(DID)?.commit.toString(), commit2.toString())
  })

  it('withdraws a repo that is taken down', async () => {
    await store.pins.add(OTHER)
    const commit = block('other commit').cid
    await store.putState(state(OTHER, commit))
    await reprovider.announce(OTHER)
    await reprovider.onIdle()
    assert.ok(await hasSelfRecord(aData, a, rendezvousCid(OTHER)))
    await store.putState(state(OTHER, commit, 'takendown'))
    await reprovider.announce(OTHER)
    await reprovider.onIdle()
    assert.equal(await hasSelfRecord(aData, a, rendezvousCid(OTHER)), false)
    assert.equal(await hasSelfRecord(aData, a, commit), false)
    assert.equal(reprovider.announcedFor(OTHER), undefined)
    await store.pins.remove(OTHER)
  })

  it('withdraws every key on unpin', async () => {
    await store.pins.remove(DID)
    await reprovider.withdraw(DID)
    await reprovider.onIdle()
    assert.equal(await hasSelfRecord(aData, a, rendezvousCid(DID)), false)
    assert.equal(await hasSelfRecord(aData, a, commit2), false)
    assert.equal(reprovider.announcedFor(DID), undefined)
  })

  it('a full pass re-announces pinned repos and cancels stale self records', async () => {
    const stale = block('left over from an earlier run').cid
    await a.libp2p.contentRouting.provide(stale)
    assert.ok(await hasSelfRecord(aData, a, stale))
    await store.pins.add(DID)
    await store.putState(state(DID, commit2))
    await reprovider.reprovideAll()
    assert.equal(await hasSelfRecord(aData, a, stale), false)
    assert.ok(await hasSelfRecord(aData, a, rendezvousCid(DID)))
    assert.ok(await hasSelfRecord(aData, a, commit2))
    assert.ok(reprovider.stats().lastPassAt !== undefined)
  })

  it("provide 'all' announces every block of the repo within its concurrency", async () => {
    const repo = await generateRepo({ records: 30, seed: 7 })
    const blocks = new MemoryBlockStore()
    const { blocks: raw } = splitCar(repo.car)
    for (const { cid, bytes } of raw) blocks.put(cid, bytes)
    await store.pins.add(repo.did)
    await store.putState(state(repo.did, parseCid(repo.commit)))
    let inFlight = 0
    let maxInFlight = 0
    // The first provide holds until a second one is running (or 5 s pass): a
    // reprovider that ran them one at a time would show a maximum of 1.
    let overlapped: () => void = () => {}
    const overlap = new Promise<void>(resolve => { overlapped = resolve })
    const counting = {
      provide: async (cid: CID, options?: { signal?: AbortSignal }) => {
        maxInFlight = Math.max(maxInFlight, ++inFlight)
        try {
          if (inFlight >= 2) overlapped()
          else await Promise.race([overlap, new Promise(resolve => setTimeout(resolve, 5000))])
          await a.libp2p.contentRouting.provide(cid, options)
        } finally { inFlight-- }
      },
      cancelReprovide: async (cid: CID, options?: { signal?: AbortSignal }) => { await a.libp2p.contentRouting.cancelReprovide(cid, options) }
    }
    const all = new Reprovider({ routing: counting, store: { pins: store.pins, getState: async (did) => await store.getState(did), blocks } }, { provide: 'all', passOnStart: false, intervalMs: 0, concurrency: 3, maxQueue: 5 })
    all.start()
    try {
      await all.announce(repo.did)
      await all.onIdle()
      // every block of the CAR: commit, MST nodes, records
      for (const { cid } of raw) assert.ok(await hasSelfRecord(aData, a, cid), `block ${cid.toString()} provided`)
      assert.ok(await hasSelfRecord(aData, a, rendezvousCid(repo.did)))
      assert.ok(maxInFlight >= 2 && maxInFlight <= 3, `more than one and at most 3 provides at once (saw ${maxInFlight})`)
      assert.equal(all.announcedFor(repo.did)?.blocks, raw.length)
      await store.pins.remove(repo.did)
      await all.withdraw(repo.did)
      await all.onIdle()
      for (const { cid } of raw) assert.equal(await hasSelfRecord(aData, a, cid), false)
    } finally {
      await all.stop()
    }
  })

  it("provide 'all' on a tree with a node reached twice lists each block once and stops", { timeout: 60_000 }, async () => {
    // 3^40 paths through 40 nodes: a listing that followed every link would not end
    const hostile = hostileRepo(40)
    const blocks = new MemoryBlockStore()
    for (const { cid, bytes } of hostile.blocks) blocks.put(cid, bytes)
    await store.pins.add(hostile.did)
    await store.putState(state(hostile.did, hostile.commit))
    const { routing, provides } = countingRouting()
    const all = new Reprovider({ routing, store: { pins: store.pins, getState: async (did) => await store.getState(did), blocks } }, { provide: 'all', passOnStart: false, intervalMs: 0 })
    all.start()
    try {
      await all.announce(hostile.did)
      await all.onIdle()
      assert.ok(provides(hostile.commit) >= 1)
      // (the commit goes out as the head and as a block of the repo)
      for (const { cid } of hostile.blocks) if (!cid.equals(hostile.commit)) assert.ok(provides(cid) <= 1, `${cid.toString()} provided once at most`)
      const listed = all.announcedFor(hostile.did)?.blocks ?? 0
      assert.ok(listed >= 1 && listed < hostile.blocks.length, `the listing stopped at the repeat (${listed} blocks)`)
      await store.pins.remove(hostile.did)
      await all.withdraw(hostile.did)
      await all.onIdle()
    } finally {
      await all.stop()
    }
  })

  /** contentRouting of `a`, counting the provides per key. */
  function countingRouting (): { routing: { provide: (cid: CID, options?: { signal?: AbortSignal }) => Promise<void>, cancelReprovide: (cid: CID, options?: { signal?: AbortSignal }) => Promise<void> }, provides: (cid: CID) => number } {
    const counts = new Map<string, number>()
    return {
      routing: {
        provide: async (cid, options) => {
          counts.set(cid.toString(), (counts.get(cid.toString()) ?? 0) + 1)
          await a.libp2p.contentRouting.provide(cid, options)
        },
        cancelReprovide: async (cid, options) => { await a.libp2p.contentRouting.cancelReprovide(cid, options) }
      },
      provides: (cid) => counts.get(cid.toString()) ?? 0
    }
  }

  it('re-announces every pinned repo on its interval', async () => {
    const did = 'did:plc:periodicperiodicperiodic'
    const commit = block('periodic commit').cid
    await store.pins.add(did)
    await store.putState(state(did, commit))
    const { routing, provides } = countingRouting()
    const periodic = new Reprovider({ routing, store }, { passOnStart: false, intervalMs: 200 })
    periodic.start()
    try {
      assert.equal(periodic.stats().passes, 0)
      assert.ok(periodic.stats().nextPassAt !== undefined, 'the first pass is scheduled')
      // nothing was announced by hand: every provide comes from the timer
      await until('three periodic passes', async () => periodic.stats().passes >= 3)
      assert.ok(provides(rendezvousCid(did)) >= 3, `rendezvous key provided on every pass (${provides(rendezvousCid(did))})`)
      assert.ok(provides(commit) >= 3)
      assert.ok(await hasSelfRecord(aData, a, rendezvousCid(did)))
      const { lastPassAt, nextPassAt } = periodic.stats()
      assert.ok(lastPassAt !== undefined && nextPassAt !== undefined && nextPassAt > lastPassAt, 'the next pass is scheduled after the last one')
    } finally {
      await periodic.stop()
      await store.pins.remove(did)
      await a.libp2p.contentRouting.cancelReprovide(rendezvousCid(did))
      await a.libp2p.contentRouting.cancelReprovide(commit)
    }
  })

  it('runs another pass soon, backing off, while the DHT routing table is empty, and stops retrying once it has peers', async () => {
    const did = 'did:plc:lonelylonelylonelylonely'
    const commit = block('lonely commit').cid
    await store.pins.add(did)
    await store.putState(state(did, commit))
    let tableSize = 0
    const { routing, provides } = countingRouting()
    // no periodic pass at all: every pass after the first is a retry
    const lonely = new Reprovider({ routing, store, routingTableSize: () => tableSize }, { intervalMs: 0, retryMs: 100 })
    const gaps: number[] = []
    lonely.start()
    try {
      let seen = 0
      await until('three retries', async () => {
        const stats = lonely.stats()
        if (stats.passes > seen && stats.lastPassAt !== undefined && stats.nextPassAt !== undefined) {
          seen = stats.passes
          gaps.push(Date.parse(stats.nextPassAt) - Date.parse(stats.lastPassAt))
        }
        return gaps.length >= 3
      })
      // 100, 200, 400 ms (give or take the time between the pass ending and the retry being set)
      for (let i = 1; i < gaps.length; i++) assert.ok((gaps[i] as number) > (gaps[i - 1] as number), `the retry delay grows (${gaps.join(', ')})`)
      assert.ok((gaps[0] as number) >= 100, `the first retry waits retryMs (${gaps.join(', ')})`)
      const before = provides(rendezvousCid(did))
      assert.ok(before >= 3)
      tableSize = 1
      await until('a pass with peers', async () => provides(rendezvousCid(did)) > before && lonely.stats().running === 0 && lonely.stats().queued === 0 && lonely.stats().passes > seen)
      // heard: with intervalMs 0 nothing more is scheduled
      assert.equal(lonely.stats().nextPassAt, undefined)
    } finally {
      await lonely.stop()
      await store.pins.remove(did)
      await a.libp2p.contentRouting.cancelReprovide(rendezvousCid(did))
      await a.libp2p.contentRouting.cancelReprovide(commit)
    }
  })

  it('a pass does not cancel the fresh record of a DID announced while its stale scan runs', async () => {
    const early = 'did:plc:earlyearlyearlyearlyear'
    const late = 'did:plc:latelatelatelatelatelat'
    await store.pins.add(early)
    await store.putState(state(early, block('early commit').cid))
    // the pass's scan of kad-dht's records waits at its start until the late DID is announced and provided
    let scanning: () => void = () => {}
    const scanStarted = new Promise<void>(resolve => { scanning = resolve })
    let release: () => void = () => {}
    const gate = new Promise<void>(resolve => { release = resolve })
    const gated = {
      async * queryKeys (query: { prefix?: string }, options?: { signal?: AbortSignal }) {
        scanning()
        await gate
        yield * aData.queryKeys(query, options)
      }
    }
    const racing = new Reprovider({ routing: a.libp2p.contentRouting, store, providerRecords: { datastore: gated, peerId: a.peerId } }, { passOnStart: false, intervalMs: 0 })
    racing.start()
    try {
      const pass = racing.reprovideAll()
      await scanStarted
      await store.pins.add(late)
      const lateCommit = block('late commit').cid
      await store.putState(state(late, lateCommit))
      await racing.announce(late)
      await racing.onIdle()
      // its provides have left the queue: the records are there, nothing is pending
      assert.ok(await hasSelfRecord(aData, a, rendezvousCid(late)))
      assert.ok(await hasSelfRecord(aData, a, lateCommit))
      release()
      await pass
      assert.ok(await hasSelfRecord(aData, a, rendezvousCid(late)), 'the late rendezvous record survives the scan')
      assert.ok(await hasSelfRecord(aData, a, lateCommit), 'the late commit record survives the scan')
      assert.ok(await hasSelfRecord(aData, a, rendezvousCid(early)))
      assert.equal(racing.announcedFor(late)?.commit.toString(), lateCommit.toString())
    } finally {
      release()
      await racing.stop()
      for (const did of [early, late]) await store.pins.remove(did)
    }
  })
})

/**
 * Mirroring peer to peer with the PDS down: a real PDS + PLC (support/network.ts)
 * and real nodes (createMirrorNode) in private mode on loopback.
 *
 * B is the hub. A pins an account and mirrors it from the PDS; the PDS is stopped;
 * C, which knows only B's address, finds A through the DHT (the DID's rendezvous
 * key), takes the head by head exchange and every block by Bitswap, and holds what
 * A holds record for record. Hostile peers (a forged or old head, a Bitswap peer
 * serving wrong bytes) change nothing. When the PDS is back with newer records, its
 * head wins.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { Secp256k1Keypair } from '@atproto/crypto'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { rendezvousCid } from '../../src/identity/rendezvous.ts'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import { HeadExchange, type LocalHead } from '../../src/net/head-exchange.ts'
import type { MirrorNetwork } from '../../src/net/network.ts'
import { readCar } from '../../src/repo/car.ts'
import { cidForBytes, parseCid, verifyBlock, type CID } from '../../src/repo/cid.ts'
import { decodeCommit } from '../../src/repo/commit.ts'
import { CorruptingBlockstore, serveUnchecked } from '../helpers/blockstores.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type TestRecord } from '../../support/network.ts'
import { recordsOf, startBarePeer, startTestNode, stopPeers } from '../helpers/nodes.ts'
import { until } from '../helpers/until.ts'
import { collect } from '../helpers/bytes.ts'

const pexec = promisify(execFile)
const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')

const postsFor = (n: number, tag: string): TestRecord[] => Array.from({ length: n }, (_, i) => ({
  collection: 'app.bsky.feed.post',
  value: { text: `${tag} post ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i % 60, i)).toISOString() }
}))

/** A bare peer: libp2p + Helia/Bitswap over `blockstore`, and a head-exchange responder serving `head()`. */
async function hostilePeer (blockstore: MemoryBlockstore, bootstrap: string[], head: () => LocalHead | undefined): Promise<{ net: MirrorNetwork, exchange: HeadExchange }> {
  const net = await startBarePeer(blockstore, bootstrap)
  serveUnchecked(net, blockstore)
  const exchange = new HeadExchange({ libp2p: net.libp2p, heads: { getLocalHead: async () => head() } })
  await exchange.start()
  return { net, exchange }
}

describe('peer to peer with the PDS down', () => {
  let net: TestNetwork
  let root: string
  let account: TestAccount
  let oldHead: LocalHead
  const nodes: MirrorNode[] = []
  const bare: Array<{ net: MirrorNetwork, exchange: HeadExchange }> = []
  let a: MirrorNode
  let b: MirrorNode
  let c: MirrorNode

  async function node (name: string, bootstrap: MirrorNode[], init: { api?: boolean } = {}): Promise<MirrorNode> {
    return await startTestNode(nodes, { root, plcUrl: net.plcUrl }, name, { bootstrap, init: { api: init.api === true ? { port: 0 } : false } })
  }

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-p2p-'))
    account = await net.createAccount('p2p')
    await net.writeRecords(account, postsFor(60, 'first'))
    // an older genuine commit, for the peer that replays it later
    const car = await readCar(await net.getRepoCar(account.did))
    const commit = car.roots[0] as CID
    for await (const block of car.blocks) if (block.cid.equals(commit)) oldHead = { cid: block.cid, bytes: block.bytes }
    await net.writeRecords(account, postsFor(90, 'second'))

    b = await node('b', [], { api: true })
    a = await node('a', [b])
    c = await node('c', [b], { api: true })
  })

  after(async () => {
    await stopPeers(bare, nodes)
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('A mirrors the account from the PDS and announces it on the DHT', async () => {
    const result = await a.pin(account.did)
    assert.equal(result.sync.records, 150)
    assert.ok(result.sync.fetched.pds > 0)
    await a.p2p?.idle()
    assert.equal(a.p2p?.reprovider?.announcedFor(account.did)?.commit.toString(), result.sync.commit.toString())
    // C knows only B, and finds A by the rendezvous key
    await until('C to find A', async () => (await c.mirrors(account.did)).mirrors.some(m => m.peerId === a.network?.peerId.toString()))
  })

  it('C mirrors from A with the PDS down: head by head exchange, blocks by Bitswap, same records', async () => {
    await net.stopPds()
    const head = await c.heads.resolveHead(account.did)
    assert.equal(head.source, `peer:${a.network?.peerId.toString()}`)
    const result = await c.pin(account.did)
    const stateA = await a.store.getState(account.did)
    assert.equal(result.sync.rev, stateA?.rev)
    assert.equal(result.sync.commit.toString(), stateA?.commit)
    assert.equal(result.sync.records, 150)
    assert.equal(result.sync.fetched.pds, 0)
    assert.ok(result.sync.fetched.bitswap > 150, `blocks came over Bitswap (${result.sync.fetched.bitswap})`)
    assert.deepEqual(await recordsOf(c, account.did), await recordsOf(a, account.did))
    // and the exports are the same bytes
    assert.deepEqual(await collect(c.exportCar(account.did)), await collect(a.exportCar(account.did)))
  })

  it('a peer answering with a commit signed by another key does not move the head', async () => {
    const forger = await Secp256k1Keypair.create()
    const current = decodeCommit(oldHead.bytes, oldHead.cid)
    const unsigned = { did: account.did, version: 3, data: current.data, rev: '7zzzzzzzzzzzz', prev: null }
    const bytes = dagCbor.encode({ ...unsigned, sig: await forger.sign(dagCbor.encode(unsigned)) })
    const forged = { cid: cidForBytes(bytes), bytes }
    const h = await hostilePeer(new MemoryBlockstore(), [b.network?.getMultiaddrs()[0]?.toString() as string], () => forged)
    bare.push(h)
    await h.net.libp2p.contentRouting.provide(rendezvousCid(account.did))
    await until('C to find the forger', async () => (await c.mirrors(account.did)).mirrors.some(m => m.peerId === h.net.peerId.toString()))
    const before = await c.store.getState(account.did)
    const asked = h.exchange.stats().served
    const head = await c.heads.resolveHead(account.did)
    assert.ok(h.exchange.stats().served > asked, 'C asked the forger for its head')
    assert.equal(head.rev, before?.rev)
    assert.equal(head.source, `peer:${a.network?.peerId.toString()}`)
    await assert.rejects(c.p2p?.heads.resolveFrom(account.did, [h.net.peerId]) as Promise<unknown>, (err: Error & { errors?: Array<{ error: Error }> }) => {
      assert.equal(err.name, 'HeadUnavailableError')
      assert.deepEqual(err.errors?.map(e => e.error.name), ['CommitSignatureError'])
      return true
    })
    const result = await c.sync(account.did)
    assert.equal(result.changed, false)
    assert.deepEqual(await c.store.getState(account.did).then(s => s?.commit), before?.commit)
    await h.exchange.stop()
    await h.net.stop()
    bare.splice(bare.indexOf(h), 1)
  })

  it('a peer replaying an older genuine commit does not move the head back', async () => {
    const h = await hostilePeer(new MemoryBlockstore(), [b.network?.getMultiaddrs()[0]?.toString() as string], () => oldHead)
    bare.push(h)
    await h.net.libp2p.contentRouting.provide(rendezvousCid(account.did))
    // C must know H as a mirror, or the head below would not involve H at all
    await until('C to find the replayer', async () => (await c.mirrors(account.did)).mirrors.some(m => m.peerId === h.net.peerId.toString()))
    const before = await c.store.getState(account.did)
    const asked = h.exchange.stats().served
    const head = await c.heads.resolveHead(account.did)
    assert.ok(h.exchange.stats().served > asked, 'C asked the replayer for its head')
    assert.equal(head.rev, before?.rev)
    assert.equal(head.source, `peer:${a.network?.peerId.toString()}`)
    await assert.rejects(c.p2p?.heads.resolveFrom(account.did, [h.net.peerId]) as Promise<unknown>, (err: Error & { errors?: Array<{ error: Error }> }) => {
      assert.deepEqual(err.errors?.map(e => e.error.name), ['HeadStaleError'])
      return true
    })
    const result = await c.sync(account.did)
    assert.equal(result.changed, false)
    assert.equal((await c.store.getState(account.did))?.rev, before?.rev)
    await h.exchange.stop()
    await h.net.stop()
    bare.splice(bare.indexOf(h), 1)
  })

  it('a peer sending blocks whose bytes do not match their CIDs does not poison the store', async () => {
    // H serves A's genuine head, and every block of the repo with a flipped byte. D
    // knows only H at first: the sync fails and nothing is stored.
    const stateA = await a.store.getState(account.did)
    assert.ok(stateA !== undefined)
    const corrupt = new CorruptingBlockstore()
    const repoBlocks: CID[] = []
    const exported = await readCar(await collect(a.exportCar(account.did)))
    for await (const block of exported.blocks) {
      await corrupt.put(block.cid, block.bytes)
      repoBlocks.push(block.cid)
    }
    const commitBytes = await a.store.getBlock(parseCid(stateA.commit))
    const h = await hostilePeer(corrupt, [], () => ({ cid: parseCid(stateA.commit), bytes: commitBytes as Uint8Array }))
    bare.push(h)
    // D's wants to H end only by the block time limit, so it is short; once D knows
    // A, A's blocks must arrive however loaded the machine is, so D restarts on the
    // same data directory with a limit that only bounds a failure
    const nodeD = async (init: { blockTimeoutMs: number, peers?: string[] }): Promise<MirrorNode> => {
      const created = await createMirrorNode({
        dataDir: join(root, 'd'),
        plcUrl: net.plcUrl,
        allowHttpLocalhost: true,
        network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [h.net.getMultiaddrs()[0]?.toString() as string], mirrors: { timeoutMs: 30_000, peers: init.peers }, bitswap: { blockTimeoutMs: init.blockTimeoutMs } },
        api: false,
        checkOnStart: false,
        intervalMs: 0
      })
      nodes.push(created)
      await created.start()
      return created
    }
    let d = await nodeD({ blockTimeoutMs: 2000 })
    // provided once H's DHT knows D, so the record reaches D
    await until('H and D to see each other in the DHT', async () => h.net.dhtPeerCount() > 0 && (d.network?.dhtPeerCount() ?? 0) > 0)
    await h.net.libp2p.contentRouting.provide(rendezvousCid(account.did))
    await assert.rejects(d.pin(account.did), { name: 'AllSourcesFailedError' })
    assert.equal(await d.store.getState(account.did), undefined)
    for (const cid of repoBlocks) {
      const bytes = await d.store.getBlock(cid)
      // the commit came by head exchange and may be staged; whatever is there is genuine
      if (bytes !== undefined) verifyBlock(cid, bytes)
    }
    // now D also knows A: the same sync succeeds with A's bytes, H's still refused
    await d.stop()
    d = await nodeD({ blockTimeoutMs: 60_000, peers: [a.network?.getMultiaddrs()[0]?.toString() as string] })
    const result = await d.pin(account.did)
    assert.equal(result.sync.commit.toString(), stateA.commit)
    for (const cid of repoBlocks) verifyBlock(cid, await d.store.getBlock(cid) as Uint8Array)
    assert.deepEqual(await recordsOf(d, account.did), await recordsOf(a, account.did))
  })

  it('atmirror peers and atmirror mirrors answer from the daemon', async () => {
    const env = { ...process.env, ATMIRROR_PLC: net.plcUrl }
    const peers = JSON.parse((await pexec(process.execPath, [CLI, 'peers', '--data', join(root, 'b'), '--json'], { env })).stdout)
    assert.equal(peers.ok, true)
    assert.equal(peers.peerId, b.network?.peerId.toString())
    const ids = peers.peers.map((p: { peerId: string }) => p.peerId)
    assert.ok(ids.includes(a.network?.peerId.toString()))
    assert.ok(ids.includes(c.network?.peerId.toString()))
    const mirrors = JSON.parse((await pexec(process.execPath, [CLI, 'mirrors', account.did, '--data', join(root, 'c'), '--json'], { env })).stdout)
    assert.equal(mirrors.did, account.did)
    assert.ok(mirrors.mirrors.some((m: { peerId: string, source: string }) => m.peerId === a.network?.peerId.toString() && m.source === 'dht'))
    // the daemon's lookup takes no --peer / --timeout: said on stderr, not dropped silently
    const extra = b.network?.getMultiaddrs()[0]?.toString() as string
    const withFlags = await pexec(process.execPath, [CLI, 'mirrors', account.did, '--data', join(root, 'c'), '--peer', extra, '--timeout', '3', '--json'], { env })
    assert.match(withFlags.stderr, /ignoring --peer, --timeout/)
    assert.equal(JSON.parse(withFlags.stdout).ok, true)
  })

  it('atmirror mirror --peer mirrors from a peer while the PDS is down', async () => {
    const env = { ...process.env, ATMIRROR_PLC: net.plcUrl }
    const peer = a.network?.getMultiaddrs()[0]?.toString() as string
    const { stdout, stderr } = await pexec(process.execPath, [CLI, 'mirror', account.did, '--peer', peer, '--data', join(root, 'e'), '--json'], { env: { ...env, DEBUG: process.env.P2P_DEBUG ?? '' } })
    if (process.env.P2P_DEBUG !== undefined) console.error(stderr)
    const result = JSON.parse(stdout)
    const stateA = await a.store.getState(account.did)
    assert.equal(result.ok, true)
    assert.equal(result.commit, stateA?.commit)
    assert.equal(result.records, 150)
    assert.equal(result.fetched.pds, 0)
    assert.ok(result.fetched.bitswap > 150)
  })

  it('when the PDS is back with newer records, its head wins', async () => {
    await net.startPds()
    const written = await net.writeRecords(account, postsFor(5, 'third'))
    const head = await c.heads.resolveHead(account.did)
    assert.equal(head.rev, written.commit.rev)
    assert.ok(head.source.startsWith('pds:'))
    const result = await c.sync(account.did)
    assert.equal(result.rev, written.commit.rev)
    assert.equal(result.records, 155)
    assert.equal(result.changed, true)
    // the sync that advanced the repo told the DHT: the new commit is announced
    await c.p2p?.idle()
    assert.equal(c.p2p?.reprovider?.announcedFor(account.did)?.commit.toString(), result.commit.toString())
  })
})

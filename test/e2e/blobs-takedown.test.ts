/**
 * A blob taken down at a real PDS (admin `updateSubjectStatus` with a
 * `repoBlobRef` subject) after a running daemon stored it: the daemon's periodic
 * re-checks ask the PDS about stored blobs in bounded rounds and remove it, so it
 * is no longer served (getBlob, the gateway, Bitswap) and its bytes are gone from
 * disk, while the repo's other blobs stay. The node follows the PDS's firehose, so
 * the repo is never polled in full: the rounds run as the scheduler's light job.
 * Also: a round asks about at most `recheckBlobs` blobs, and none before
 * `recheckIntervalMs` has passed; bytes that another repo references too stay for
 * it and are never served as the first repo's; a takedown reversed at the PDS
 * brings the blob back.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { AtpAgent } from '@atproto/api'
import { BlobFetcher, PdsBlobSource } from '../../src/blocks/blob-fetch.ts'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { BlobMirror } from '../../src/mirror/blobs.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { RepoSyncer } from '../../src/mirror/sync.ts'
import { CID } from '../../src/repo/cid.ts'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'
import { followerInit } from '../helpers/nodes.ts'
import { until } from '../helpers/until.ts'
import { imagePost, upload, type Uploaded } from '../helpers/blobs.ts'

async function takedownBlob (net: TestNetwork, did: string, cid: string, applied = true): Promise<void> {
  const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.admin.updateSubjectStatus`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Basic ${Buffer.from(`admin:${net.adminPassword}`).toString('base64')}` },
    body: JSON.stringify({ subject: { $type: 'com.atproto.admin.defs#repoBlobRef', did, cid }, takedown: applied ? { applied, ref: 'atmirror-test' } : { applied } })
  })
  assert.equal(res.status, 200, await res.text())
}

describe('a blob taken down after a daemon stored it', () => {
  let net: TestNetwork
  let root: string
  let alice: TestAccount
  let agent: AtpAgent

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-blob-takedown-'))
    alice = await net.createAccount('blobtd')
    agent = new AtpAgent({ service: net.pdsUrl })
    await agent.login({ identifier: alice.handle, password: alice.password })
  })

  after(async () => {
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('a following daemon removes it within its re-check rounds and stops serving it; the other blobs stay', async () => {
    const small = await upload(agent, randomBytes(8 * 1024))
    const large = await upload(agent, randomBytes(120 * 1024))
    const other = await upload(agent, randomBytes(90 * 1024))
    await net.writeRecords(alice, [
      { collection: 'app.bsky.feed.post', rkey: 'one', value: imagePost('one', [small, large]) },
      { collection: 'app.bsky.feed.post', rkey: 'two', value: imagePost('two', [other]) }
    ])
    let node: MirrorNode | undefined
    try {
      node = await createMirrorNode(followerInit(join(root, 'daemon'), net.plcUrl, {
        network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'] },
        http: { port: 0 },
        // ticks often; the repo is followed, so a tick only runs the blob round (one blob each)
        intervalMs: 200,
        follow: { backoffMinMs: 50, backoffMaxMs: 500, followedIntervalMs: 3_600_000 },
        blobs: { recheckBlobs: 1, recheckIntervalMs: 0 }
      }))
      const running = node
      await running.pin(alice.did)
      await running.start()
      await until('the PDS stream connected', () => running.status().then(s => s.subscriptions?.[0]?.state === 'connected'))
      const base = running.http?.url ?? ''
      const servedHttp = async (blob: Uploaded): Promise<boolean> => {
        const res = await fetch(`${base}/xrpc/com.atproto.sync.getBlob?did=${alice.did}&cid=${blob.cid}`)
        const body = Buffer.from(await res.arrayBuffer())
        return res.status === 200 && body.equals(blob.bytes)
      }
      const servedGateway = async (blob: Uploaded): Promise<boolean> => {
        const res = await fetch(`${base}/ipfs/${blob.cid}?format=raw`)
        await res.arrayBuffer()
        return res.status === 200
      }
      const servedBitswap = async (blob: Uploaded): Promise<boolean> => {
        const serving = running.network?.serving
        assert.ok(serving !== undefined)
        try {
          const parts: Uint8Array[] = []
          for await (const part of serving.get(CID.parse(blob.cid))) parts.push(part)
          return Buffer.concat(parts).equals(blob.bytes)
        } catch (err) {
          assert.equal((err as Error).name, 'NotFoundError')
          return false
        }
      }
      for (const blob of [small, large, other]) {
        assert.equal(await servedHttp(blob), true, `getBlob ${blob.cid}`)
        assert.equal(await servedGateway(blob), true, `gateway ${blob.cid}`)
        assert.equal(await servedBitswap(blob), true, `bitswap ${blob.cid}`)
      }
      const largeCid = CID.parse(large.cid)
      const smallCid = CID.parse(small.cid)
      assert.equal(existsSync(running.store.blobs.pathOf(largeCid)), true)

      // one kept in a file, one kept as a block
      await takedownBlob(net, alice.did, large.cid)
      await takedownBlob(net, alice.did, small.cid)
      await until('the taken-down blobs removed', async () => !await running.store.blobs.has(largeCid) && !await running.store.blobs.has(smallCid), { timeout: 60_000 })

      assert.equal(existsSync(running.store.blobs.pathOf(largeCid)), false, 'the file is gone')
      assert.equal(await running.store.blockstore.has(smallCid), false, 'the block is gone')
      for (const blob of [large, small]) {
        assert.equal(await servedHttp(blob), false, `getBlob ${blob.cid}`)
        assert.equal(await servedGateway(blob), false, `gateway ${blob.cid}`)
        assert.equal(await servedBitswap(blob), false, `bitswap ${blob.cid}`)
      }
      const gone = await running.store.blobs.gone(alice.did)
      assert.deepEqual([...gone.keys()].sort(), [large.cid, small.cid].sort())
      // the other one stays, stored and served
      assert.equal(await servedHttp(other), true)
      assert.equal(await servedBitswap(other), true)
      assert.equal(existsSync(running.store.blobs.pathOf(CID.parse(other.cid))), true)
      // the repo's records are untouched and it was never synced in full for it
      assert.equal((await running.getState(alice.did)).status, 'active')
      assert.equal(net.pdsRequests.filter(path => path.includes('getRepo')).length, 1, 'one getRepo: the pin')

      // the takedown reversed: the PDS serves it again, and the rounds fetch it again
      await takedownBlob(net, alice.did, large.cid, false)
      await until('the blob served again fetched again', async () => await running.store.blobs.has(largeCid), { timeout: 60_000 })
      assert.equal(await servedHttp(large), true)
      assert.equal((await running.store.blobs.gone(alice.did)).has(large.cid), false)
    } finally {
      await node?.stop()
    }
  })

  it('the same bytes in two repos: taken down for one, kept for the other, never served as the first one\'s', async () => {
    const owners = [await net.createAccount('sharea'), await net.createAccount('shareb')]
    const bytes = randomBytes(100 * 1024)
    const [fromA, fromB] = await Promise.all(owners.map(async (owner) => {
      const ownerAgent = new AtpAgent({ service: net.pdsUrl })
      await ownerAgent.login({ identifier: owner.handle, password: owner.password })
      const uploaded = await upload(ownerAgent, bytes)
      await net.writeRecords(owner, [{ collection: 'app.bsky.feed.post', rkey: 'same', value: imagePost('same', [uploaded]) }])
      return uploaded
    }))
    assert.equal(fromA.cid, fromB.cid)
    const [a, b] = owners
    let node: MirrorNode | undefined
    try {
      node = await createMirrorNode({ dataDir: join(root, 'shared'), plcUrl: net.plcUrl, allowHttpLocalhost: true, network: false, api: false, http: { port: 0 }, checkOnStart: false, intervalMs: 0 })
      await node.start()
      await node.pin(a.did)
      await node.pin(b.did)
      const base = node.http?.url ?? ''
      const status = async (did: string): Promise<number> => {
        const res = await fetch(`${base}/xrpc/com.atproto.sync.getBlob?did=${did}&cid=${fromA.cid}`)
        await res.arrayBuffer()
        return res.status
      }
      const listed = async (did: string): Promise<string[]> => (await (await fetch(`${base}/xrpc/com.atproto.sync.listBlobs?did=${did}`)).json() as { cids: string[] }).cids
      assert.equal(await status(a.did), 200)
      assert.equal(await status(b.did), 200)

      await takedownBlob(net, a.did, fromA.cid)
      assert.equal((await node.syncer.checkBlobs(a.did)).removed, 1)
      // b's PDS still serves its copy: the bytes stay, for b alone
      assert.equal(await node.store.blobs.has(CID.parse(fromA.cid)), true, 'kept for b')
      assert.equal(await status(b.did), 200)
      assert.deepEqual(await listed(b.did), [fromB.cid])
      assert.equal(await status(a.did), 400)
      assert.deepEqual(await listed(a.did), [])
      // a's later checks leave b's copy alone; verify of b finds it intact
      assert.equal((await node.syncer.checkBlobs(a.did)).removed, 0)
      const [report] = await node.verify(b.did)
      assert.equal(report.blobs?.checked, 1)
      assert.deepEqual(report.blobs?.repaired, [])
      // taken down for b too: now the bytes go
      await takedownBlob(net, b.did, fromB.cid)
      assert.equal((await node.syncer.checkBlobs(b.did)).removed, 1)
      assert.equal(await node.store.blobs.has(CID.parse(fromA.cid)), false, 'the bytes are gone')
      assert.equal(await status(b.did), 400)
    } finally {
      await node?.stop()
    }
  })

  it('a round asks about at most recheckBlobs blobs, in turn, and none again before recheckIntervalMs', async () => {
    const bob = await net.createAccount('blobround')
    const bobAgent = new AtpAgent({ service: net.pdsUrl })
    await bobAgent.login({ identifier: bob.handle, password: bob.password })
    const blobs = [await upload(bobAgent, randomBytes(4 * 1024)), await upload(bobAgent, randomBytes(5 * 1024)), await upload(bobAgent, randomBytes(6 * 1024))]
    await net.writeRecords(bob, [{ collection: 'app.bsky.feed.post', rkey: 'pics', value: imagePost('pics', blobs) }])
    const store = await MirrorStore.open(join(root, 'rounds'))
    try {
      const identity = new AtprotoIdentityResolver({ plcUrl: net.plcUrl, allowHttpLocalhost: true })
      const fetcher = new BlobFetcher({ sources: [new PdsBlobSource({ identity })] })
      const make = (recheckIntervalMs: number): RepoSyncer => new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }), blobs: new BlobMirror({ store, fetcher }, { recheckBlobs: 2, recheckIntervalMs }) })
      const syncer = make(0)
      assert.equal((await syncer.sync(bob.did)).blobs?.fetched.pds, 3)
      const getBlobs = (): string[] => net.pdsRequests.filter(path => path.includes('com.atproto.sync.getBlob'))
      const asked = async (run: RepoSyncer): Promise<string[]> => {
        const before = getBlobs().length
        const report = await run.recheckBlobs(bob.did)
        const now = getBlobs().slice(before)
        assert.equal(report.checked, now.length)
        return now.map(path => new URL(path, 'http://127.0.0.1').searchParams.get('cid') ?? '')
      }
      const order = blobs.map(b => b.cid).sort()
      // two, then the third and the first again (wrapping round), then the second and third
      assert.deepEqual((await asked(syncer)).sort(), order.slice(0, 2))
      assert.deepEqual((await asked(syncer)).sort(), [order[2], order[0]].sort())
      assert.deepEqual((await asked(syncer)).sort(), order.slice(1, 3))
      // paced: a second round within the interval asks nothing
      const paced = make(3_600_000)
      assert.equal((await asked(paced)).length, 2)
      assert.deepEqual(await asked(paced), [])
      // nothing was taken down: all stay
      for (const blob of blobs) assert.equal(await store.blobs.has(CID.parse(blob.cid)), true)
    } finally {
      await store.close()
    }
  })
})

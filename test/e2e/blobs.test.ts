/**
 * Blob mirroring against a real PDS + PLC (support/network.ts): images uploaded
 * with @atproto/api's `uploadBlob` and referenced by records are mirrored, small
 * ones into the block store and large ones into files, byte for byte what the PDS
 * serves; a blob is collected once no record references it (record deleted,
 * unpin) and kept while another record does; a blob over the cap is refused and
 * recorded; a blob the PDS has taken down is removed; blob mirroring can be off for
 * a pin; the node serves them over its public HTTP server (`getBlob`, `listBlobs`,
 * `/ipfs`).
 * Hostile input comes from the fake PDS: a blob whose bytes do not match its
 * CID is refused and nothing is stored.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
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
import { BlobMirror, type BlobMirrorInit } from '../../src/mirror/blobs.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { storeDiskUsage } from '../../src/mirror/disk-usage.ts'
import { RepoSyncer } from '../../src/mirror/sync.ts'
import { CID, RAW, cidForBytes } from '../../src/repo/cid.ts'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'
import { EvolvingRepo, posts } from '../helpers/evolving-repo.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'
import { imagePost, upload, type Uploaded } from '../helpers/blobs.ts'

const pexec = promisify(execFile)
const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')

async function readAll (chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return Buffer.concat(parts)
}

/** A store and a syncer that mirrors blobs from the DID's PDS. */
async function mirrorOn (dir: string, plcUrl: string, pdsUrl: string | undefined, init: BlobMirrorInit = {}): Promise<{ store: MirrorStore, syncer: RepoSyncer, identity: AtprotoIdentityResolver }> {
  const store = await MirrorStore.open(dir)
  const identity = new AtprotoIdentityResolver({ plcUrl, allowHttpLocalhost: true, handleResolverUrl: pdsUrl })
  const blobs = new BlobMirror({ store, fetcher: new BlobFetcher({ sources: [new PdsBlobSource({ identity })] }) }, init)
  const syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }), blobs })
  return { store, syncer, identity }
}

describe('blob mirroring from a real PDS', () => {
  let net: TestNetwork
  let root: string
  let alice: TestAccount
  let agent: AtpAgent
  let store: MirrorStore
  let syncer: RepoSyncer
  let small: Uploaded
  let large: Uploaded
  let shared: Uploaded
  let stray: Uploaded

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-blobs-'))
    alice = await net.createAccount('blobs')
    agent = new AtpAgent({ service: net.pdsUrl })
    await agent.login({ identifier: alice.handle, password: alice.password })
    small = await upload(agent, randomBytes(10 * 1024))
    large = await upload(agent, randomBytes(300 * 1024), 'image/jpeg')
    shared = await upload(agent, randomBytes(80 * 1024))
    // uploaded, never referenced: not the mirror's business
    stray = await upload(agent, randomBytes(5 * 1024))
    await net.writeRecords(alice, [
      { collection: 'app.bsky.feed.post', rkey: 'withsmall', value: imagePost('small', [small]) },
      { collection: 'app.bsky.feed.post', rkey: 'withlarge', value: imagePost('large', [large, shared]) },
      { collection: 'app.bsky.feed.post', rkey: 'alsoshared', value: imagePost('shared again', [shared]) },
      { collection: 'app.bsky.actor.profile', rkey: 'self', value: { displayName: 'Blobs' } }
    ])
    ;({ store, syncer } = await mirrorOn(join(root, 'main'), net.plcUrl, net.pdsUrl))
  })

  after(async () => {
    await store?.close()
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('mirrors every referenced image, byte for byte what the PDS serves, small ones as blocks and large ones as files', async () => {
    const result = await syncer.sync(alice.did)
    assert.deepEqual(result.blobs, { wanted: 3, fetched: { local: 0, bitswap: 0, pds: 3 }, bytes: small.bytes.byteLength + large.bytes.byteLength + shared.bytes.byteLength, failed: 0, refused: 0 })
    for (const blob of [small, large, shared]) {
      const cid = CID.parse(blob.cid)
      const fromPds = Buffer.from(await (await fetch(`${net.pdsUrl}/xrpc/com.atproto.sync.getBlob?did=${alice.did}&cid=${blob.cid}`)).arrayBuffer())
      assert.ok(fromPds.equals(blob.bytes))
      const stream = await store.blobs.read(cid)
      assert.ok(stream !== undefined, `blob ${blob.cid} is stored`)
      assert.ok((await readAll(stream.chunks)).equals(fromPds), `blob ${blob.cid} is what the PDS serves`)
    }
    // routed by size: a file for the large ones, the block store for the small one
    assert.equal(existsSync(store.blobs.pathOf(CID.parse(large.cid))), true)
    assert.equal(existsSync(store.blobs.pathOf(CID.parse(shared.cid))), true)
    assert.equal(existsSync(store.blobs.pathOf(CID.parse(small.cid))), false)
    assert.equal(await store.blockstore.has(CID.parse(small.cid)), true)
    assert.equal(await store.blobs.has(CID.parse(stray.cid)), false)
    assert.deepEqual(new Map([...(await store.blobs.refs(alice.did))].sort()), new Map<string, number>([[small.cid, 1], [large.cid, 1], [shared.cid, 2]].sort((a, b) => String(a[0]).localeCompare(String(b[0]))) as Array<[string, number]>))
    assert.deepEqual(await store.blobs.usage(alice.did), { referenced: 3, stored: 3, bytes: result.blobs?.bytes })
    // atmirror du: the blob files on disk, and the repo's stored blobs
    const du = await storeDiskUsage(store)
    assert.ok(du.blobFiles >= large.bytes.byteLength + shared.bytes.byteLength, `blob files ${du.blobFiles}`)
    assert.deepEqual(du.repos.map(repo => [repo.did, repo.blobs, repo.blobBytes]), [[alice.did, 3, result.blobs?.bytes]])
    assert.equal(du.other, Math.max(0, du.total - du.blocks - du.blobFiles))
  })

  it('an unchanged repo fetches no blob again', async () => {
    const result = await syncer.sync(alice.did)
    assert.equal(result.changed, false)
    assert.equal(result.blobs?.wanted, 0)
  })

  it('collects a blob once its last record is deleted, and keeps one another record still references', async () => {
    await net.deleteRecord(alice, 'app.bsky.feed.post', 'withlarge')
    const result = await syncer.sync(alice.did)
    assert.equal(result.changed, true)
    assert.equal(await store.blobs.has(CID.parse(large.cid)), false)
    assert.equal(existsSync(store.blobs.pathOf(CID.parse(large.cid))), false)
    assert.equal(await store.blobs.has(CID.parse(shared.cid)), true, 'still referenced by another record')
    assert.equal(await store.blobs.has(CID.parse(small.cid)), true)

    await net.deleteRecord(alice, 'app.bsky.feed.post', 'withsmall')
    await syncer.sync(alice.did)
    assert.equal(await store.blobs.has(CID.parse(small.cid)), false)
    assert.equal(await store.blockstore.has(CID.parse(small.cid)), false)
    assert.deepEqual(await store.blobs.refs(alice.did), new Map([[shared.cid, 1]]))
  })

  it('a blob added later comes with the incremental sync', async () => {
    const later = await upload(agent, randomBytes(200 * 1024))
    await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', rkey: 'later', value: imagePost('later', [later]) }])
    const result = await syncer.sync(alice.did)
    assert.equal(result.full, false)
    assert.equal(result.blobs?.fetched.pds, 1)
    const stream = await store.blobs.read(CID.parse(later.cid))
    assert.ok(stream !== undefined && (await readAll(stream.chunks)).equals(later.bytes))
  })

  it('refuses a blob over the cap, and records why', async () => {
    const capped = await mirrorOn(join(root, 'capped'), net.plcUrl, net.pdsUrl, { maxBlobSize: 100 * 1024 })
    try {
      const result = await capped.syncer.sync(alice.did)
      // `shared` (80 KiB) fits, `later` (200 KiB) does not
      assert.equal(result.blobs?.fetched.pds, 1)
      assert.equal(result.blobs?.refused, 1)
      const gone = await capped.store.blobs.gone(alice.did)
      assert.equal(gone.size, 1)
      const [[cid, why]] = [...gone]
      assert.equal(why.reason, 'too-large')
      assert.equal(why.max, 100 * 1024)
      assert.equal(await capped.store.blobs.has(CID.parse(cid)), false)
      // not asked for again
      const again = await capped.syncer.sync(alice.did)
      assert.equal(again.blobs?.wanted, 0)
    } finally {
      await capped.store.close()
    }
  })

  it('with blobs off for the pin, counts references but fetches nothing', async () => {
    const off = await mirrorOn(join(root, 'off'), net.plcUrl, net.pdsUrl)
    try {
      await off.store.blobs.setOff(alice.did, true)
      const result = await off.syncer.sync(alice.did)
      assert.equal(result.blobs?.wanted, 0)
      assert.equal((await off.store.blobs.refs(alice.did)).size, 2)
      assert.equal((await off.store.blobs.usage(alice.did)).stored, 0)
      // on again: the next sync fetches them
      await off.store.blobs.setOff(alice.did, false)
      assert.equal((await off.syncer.sync(alice.did)).blobs?.fetched.pds, 2)
    } finally {
      await off.store.close()
    }
  })

  it('a node serves the blobs it mirrors: getBlob, listBlobs and the gateway on its public HTTP server, and the blob bytes in status', async () => {
    const bob = await net.createAccount('blobserve')
    const bobAgent = new AtpAgent({ service: net.pdsUrl })
    await bobAgent.login({ identifier: bob.handle, password: bob.password })
    const image = await upload(bobAgent, randomBytes(150 * 1024))
    const thumb = await upload(bobAgent, randomBytes(3 * 1024))
    await net.writeRecords(bob, [{ collection: 'app.bsky.feed.post', rkey: 'pics', value: imagePost('pics', [image, thumb]) }])
    let node: MirrorNode | undefined
    try {
      node = await createMirrorNode({ dataDir: join(root, 'node'), plcUrl: net.plcUrl, allowHttpLocalhost: true, network: false, api: false, http: { port: 0 }, checkOnStart: false, intervalMs: 0 })
      await node.start()
      const result = await node.pin(bob.did)
      assert.equal(result.sync.blobs?.fetched.pds, 2)
      const base = node.http?.url ?? ''
      for (const blob of [image, thumb]) {
        const res = await fetch(`${base}/xrpc/com.atproto.sync.getBlob?did=${bob.did}&cid=${blob.cid}`)
        assert.equal(res.status, 200)
        assert.equal(res.headers.get('content-length'), String(blob.bytes.byteLength))
        assert.ok(Buffer.from(await res.arrayBuffer()).equals(blob.bytes))
      }
      // the trustless gateway: a file blob streamed, a small one as a block
      for (const blob of [image, thumb]) {
        const res = await fetch(`${base}/ipfs/${blob.cid}?format=raw`)
        assert.equal(res.status, 200)
        assert.ok(Buffer.from(await res.arrayBuffer()).equals(blob.bytes), `gateway ${blob.cid}`)
      }
      assert.equal((await fetch(`${base}/ipfs/${stray.cid}?format=raw`)).status, 404)
      const list = await (await fetch(`${base}/xrpc/com.atproto.sync.listBlobs?did=${bob.did}`)).json() as { cids: string[] }
      assert.deepEqual(list.cids, [image.cid, thumb.cid].sort())
      // a blob bob's records do not reference, and a repo not mirrored here
      const notHis = await fetch(`${base}/xrpc/com.atproto.sync.getBlob?did=${bob.did}&cid=${stray.cid}`)
      assert.equal(notHis.status, 400)
      assert.equal((await notHis.json() as { error: string }).error, 'BlobNotFound')
      const notHere = await fetch(`${base}/xrpc/com.atproto.sync.listBlobs?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa`)
      assert.equal((await notHere.json() as { error: string }).error, 'RepoNotFound')
      const [repo] = (await node.status()).repos
      assert.deepEqual(repo.blobs, { referenced: 2, stored: 2, bytes: image.bytes.byteLength + thumb.bytes.byteLength })
    } finally {
      await node?.stop()
    }
  })

  it('atmirror mirror --no-blobs keeps the setting with the pin; --max-blob-size caps', async () => {
    const data = join(root, 'cli')
    const env = { ...process.env, ATMIRROR_DATA: data, ATMIRROR_PLC: net.plcUrl, DEBUG: '' }
    const run = async (...args: string[]): Promise<{ blobs?: { wanted: number, refused: number, fetched: { pds: number } } }> => JSON.parse((await pexec(process.execPath, [CLI, 'mirror', alice.did, '--json', ...args], { env })).stdout)
    assert.equal((await run('--no-blobs')).blobs?.wanted, 0)
    // the pin remembers: a plain rerun fetches none either
    assert.equal((await run()).blobs?.wanted, 0)
    // on again, with a cap that only the 80 KiB blob fits
    await pexec(process.execPath, [CLI, 'pin', 'rm', alice.did], { env })
    const { stdout, stderr } = await pexec(process.execPath, [CLI, 'mirror', alice.did, '--json', '--max-blob-size', '100K'], { env: { ...env, DEBUG: 'atmirror:mirror:blobs*' } })
    const capped = JSON.parse(stdout) as { blobs?: { refused: number, fetched: { pds: number } } }
    assert.equal(capped.blobs?.fetched.pds, 1)
    assert.equal(capped.blobs?.refused, 1)
    // logged, naming the repo, the blob and its size
    assert.match(stderr, new RegExp(`over the cap of 102400 \\(did=${alice.did} cid=bafkrei[a-z2-7]+ size=\\d+\\)`))
  })

  it('a blob the PDS has taken down (admin takedown) is removed from the mirror', async () => {
    assert.equal(await store.blobs.has(CID.parse(shared.cid)), true)
    const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.admin.updateSubjectStatus`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Basic ${Buffer.from(`admin:${net.adminPassword}`).toString('base64')}` },
      body: JSON.stringify({ subject: { $type: 'com.atproto.admin.defs#repoBlobRef', did: alice.did, cid: shared.cid }, takedown: { applied: true, ref: 'atmirror-test' } })
    })
    assert.equal(res.status, 200, await res.text())
    const report = await syncer.checkBlobs(alice.did)
    assert.equal(report.removed, 1)
    assert.equal(await store.blobs.has(CID.parse(shared.cid)), false)
    assert.equal((await store.blobs.gone(alice.did)).get(shared.cid)?.reason, 'not-found')
    // the others stay, and it is not fetched again
    assert.equal((await syncer.sync(alice.did)).blobs?.wanted, 0)
    assert.equal(await store.blobs.has(CID.parse(shared.cid)), false)
  })

  it('unpin collects the repo\'s blobs', async () => {
    const before = await store.blobs.refs(alice.did)
    assert.ok(before.size > 0)
    await store.unpinRepo(alice.did)
    for (const cid of before.keys()) assert.equal(await store.blobs.has(CID.parse(cid)), false, `blob ${cid} collected`)
    assert.equal((await store.blobs.refs(alice.did)).size, 0)
  })
})

describe('hostile blobs from a fake PDS', () => {
  let pds: FakePds
  let root: string
  let repo: EvolvingRepo
  let good: Uint8Array
  let blobCid: CID

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-blobs-hostile-'))
    good = randomBytes(120 * 1024)
    blobCid = cidForBytes(good, RAW)
    repo = await EvolvingRepo.create(41, [
      ...posts(20),
      {
        collection: 'app.bsky.feed.post',
        rkey: '3zzzzzzzzzzzz',
        record: { $type: 'app.bsky.feed.post', text: 'a picture', createdAt: '2024-01-01T00:00:00.000Z', embed: { $type: 'app.bsky.embed.images', images: [{ alt: '', image: { $type: 'blob', ref: blobCid, mimeType: 'image/png', size: good.byteLength } }] } }
      }
    ])
    pds.setRepo(repo.did, repo.keypair, await repo.version())
  })

  after(async () => {
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('refuses a blob whose bytes do not match its CID, with a clear error, and stores nothing', async () => {
    const tampered = Buffer.from(good)
    tampered[1000] ^= 0xff
    pds.setBlob(blobCid.toString(), tampered)
    const { store, syncer, identity } = await mirrorOn(join(root, 'tampered'), pds.url, undefined)
    try {
      const result = await syncer.sync(repo.did)
      assert.equal(result.changed, true)
      assert.deepEqual(result.blobs, { wanted: 1, fetched: { local: 0, bitswap: 0, pds: 0 }, bytes: 0, failed: 1, refused: 0 })
      assert.equal(await store.blobs.has(blobCid), false)
      // still wanted: the next sync asks again
      assert.deepEqual((await store.blobs.wanted(repo.did)).map(w => w.cid.toString()), [blobCid.toString()])

      const fetcher = new BlobFetcher({ sources: [new PdsBlobSource({ identity })] })
      await assert.rejects(fetcher.fetch(blobCid, async (chunks) => await store.blobs.write(blobCid, chunks), { did: repo.did, maxBytes: 1 << 20 }), (err: Error & { errors?: Array<{ error: Error }> }) => {
        assert.equal(err.name, 'AllSourcesFailedError')
        const cause = err.errors?.[0]?.error
        assert.equal(cause?.name, 'BlobMismatchError')
        assert.match(cause?.message ?? '', new RegExp(`blob bytes do not match CID; did=${repo.did} cid=${blobCid.toString()} actual=bafk`))
        assert.match(cause?.message ?? '', /url=http:\/\/localhost:\d+\/xrpc\/com\.atproto\.sync\.getBlob/)
        return true
      })
      assert.equal(await store.blobs.has(blobCid), false)

      // the good bytes, once the PDS serves them
      pds.setBlob(blobCid.toString(), good)
      assert.equal((await syncer.sync(repo.did)).blobs?.fetched.pds, 1)
      const stream = await store.blobs.read(blobCid)
      assert.ok(stream !== undefined && (await readAll(stream.chunks)).equals(good))
    } finally {
      await store.close()
    }
  })

  it('a blob its PDS no longer serves (taken down) is recorded as gone and its copy removed', async () => {
    const { store, syncer } = await mirrorOn(join(root, 'takedown'), pds.url, undefined)
    try {
      pds.setBlob(blobCid.toString(), good)
      assert.equal((await syncer.sync(repo.did)).blobs?.fetched.pds, 1)
      assert.equal(await store.blobs.has(blobCid), true)
      pds.handle('getBlob', (_req, res) => {
        res.writeHead(400, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ error: 'InvalidRequest', message: 'Blob not found' }))
      })
      const report = await syncer.checkBlobs(repo.did)
      assert.deepEqual(report, { checked: 1, removed: 1, restored: 0 })
      assert.equal(await store.blobs.has(blobCid), false)
      assert.equal((await store.blobs.gone(repo.did)).get(blobCid.toString())?.reason, 'not-found')
      pds.reset()
    } finally {
      await store.close()
    }
  })
})

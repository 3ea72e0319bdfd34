/**
 * The public server of a real node against the real PDS and PLC: an atproto client
 * (`@atproto/api`'s AtpAgent) pointed at the mirror as if it were the PDS calls every
 * read method, with the PDS stopped; `@atproto/repo` verifies the served getRepo and
 * getRecord CARs, which hold what the PDS serves for the same commit; withheld repos
 * answer the lexicon's errors and the gateway 404s their blocks; hostile requests
 * get clean 4xx; 1,000 concurrent getRepo calls stay bounded.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { AtpAgent } from '@atproto/api'
import { verifyProofs, verifyRepoCar } from '@atproto/repo'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type WrittenRecord } from '../../support/network.ts'
import { splitCar } from '../helpers/car-tools.ts'

const sortedCids = (car: Uint8Array): string[] => splitCar(car).blocks.map(b => b.cid.toString()).sort()

/** The XRPC error name and status of a failed AtpAgent call. */
async function xrpcError (call: Promise<unknown>): Promise<{ error: string, status: number }> {
  try {
    await call
  } catch (err) {
    const e = err as { error?: string, status?: number }
    return { error: e.error ?? 'unknown', status: e.status ?? 0 }
  }
  throw new Error('the call succeeded')
}

describe('public server: a mirror read as if it were the PDS (real PDS and PLC)', () => {
  let net: TestNetwork
  let root: string
  let node: MirrorNode
  let mirror: AtpAgent
  let alice: TestAccount
  let posts: WrittenRecord[]
  let head: { cid: string, rev: string }
  let didKey: string
  // what the PDS served for the same commit, before it stopped
  const pds: { repo?: Uint8Array, record?: Uint8Array, absent?: Uint8Array, getRecord?: unknown, list?: unknown, collections?: string[] } = {}

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-serve-'))
    node = await createMirrorNode({
      dataDir: join(root, 'node'),
      plcUrl: net.plcUrl,
      allowHttpLocalhost: true,
      network: false,
      api: false,
      http: { port: 0, maxPerClient: 64 },
      checkOnStart: false,
      intervalMs: 0
    })
    await node.start()
    mirror = new AtpAgent({ service: node.http!.url })
    alice = await net.createAccount('alice')
    posts = (await net.writeRecords(alice, Array.from({ length: 120 }, (_, i) => ({
      collection: 'app.bsky.feed.post',
      value: { text: `post ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
    })))).records
    const more = await net.writeRecords(alice, [
      { collection: 'app.bsky.actor.profile', rkey: 'self', value: { displayName: 'Alice', description: 'bytes and links' } },
      { collection: 'app.bsky.feed.like', value: { subject: { uri: posts[0].uri, cid: posts[0].cid }, createdAt: new Date(0).toISOString() } }
    ])
    head = more.commit
    await node.pin(alice.did)
    didKey = (await node.identity.resolve(alice.did)).didKey

    const agent = new AtpAgent({ service: net.pdsUrl })
    pds.repo = (await agent.com.atproto.sync.getRepo({ did: alice.did })).data
    pds.record = (await agent.com.atproto.sync.getRecord({ did: alice.did, collection: 'app.bsky.feed.post', rkey: posts[7].rkey })).data
    pds.absent = (await agent.com.atproto.sync.getRecord({ did: alice.did, collection: 'app.bsky.feed.post', rkey: '3zzzzzzzzzzzz' })).data
    pds.getRecord = (await agent.com.atproto.repo.getRecord({ repo: alice.did, collection: 'app.bsky.feed.like', rkey: more.records[1].rkey })).data
    pds.list = (await agent.com.atproto.repo.listRecords({ repo: alice.did, collection: 'app.bsky.feed.post', limit: 30 })).data
    pds.collections = (await agent.com.atproto.repo.describeRepo({ repo: alice.did })).data.collections
    assert.equal((await agent.com.atproto.sync.getLatestCommit({ did: alice.did })).data.cid, head.cid)
    // from here on the mirror alone answers
    await net.stopPds()
  })

  after(async () => {
    await node?.stop()
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('health answers the version', async () => {
    const res = await fetch(`${node.http!.url}/xrpc/_health`)
    assert.deepEqual(await res.json(), { version: (await node.status()).version })
  })

  it('getLatestCommit: the stored head', async () => {
    const { data } = await mirror.com.atproto.sync.getLatestCommit({ did: alice.did })
    assert.deepEqual(data, head)
  })

  it('getRepo: a CAR @atproto/repo verifies, holding the blocks the PDS serves for the commit', async () => {
    const { data } = await mirror.com.atproto.sync.getRepo({ did: alice.did })
    const verified = await verifyRepoCar(data, alice.did, didKey)
    assert.equal(verified.commit.rev, head.rev)
    assert.equal(splitCar(data).roots[0].toString(), head.cid)
    assert.deepEqual(sortedCids(data), sortedCids(pds.repo!))
  })

  it('getRepo again: the same bytes (from the CAR cache)', async () => {
    const first = (await mirror.com.atproto.sync.getRepo({ did: alice.did })).data
    const second = (await mirror.com.atproto.sync.getRepo({ did: alice.did })).data
    assert.deepEqual(Buffer.from(second), Buffer.from(first))
    await verifyRepoCar(second, alice.did, didKey)
  })

  it('getRepo with since: the commit alone at the stored rev or later, the whole repo before it', async () => {
    const current = splitCar((await mirror.com.atproto.sync.getRepo({ did: alice.did, since: head.rev })).data)
    assert.deepEqual(current.blocks.map(b => b.cid.toString()), [head.cid])
    const future = splitCar((await mirror.com.atproto.sync.getRepo({ did: alice.did, since: '3zzzzzzzzzzzz' })).data)
    assert.deepEqual(future.blocks.map(b => b.cid.toString()), [head.cid])
    const older = (await mirror.com.atproto.sync.getRepo({ did: alice.did, since: '2222222222222' })).data
    assert.deepEqual(sortedCids(older), sortedCids(pds.repo!))
  })

  it('sync.getRecord: a proof @atproto/repo verifies, the same blocks as the PDS serves', async () => {
    const rkey = posts[7].rkey
    const { data } = await mirror.com.atproto.sync.getRecord({ did: alice.did, collection: 'app.bsky.feed.post', rkey })
    assert.equal(splitCar(data).roots[0].toString(), head.cid)
    assert.deepEqual(sortedCids(data), sortedCids(pds.record!))
    const { CID } = await import('multiformats/cid')
    const result = await verifyProofs(data, [{ collection: 'app.bsky.feed.post', rkey, cid: CID.parse(posts[7].cid) as never }], alice.did, didKey)
    assert.equal(result.verified.length, 1)
    assert.equal(result.unverified.length, 0)
  })

  it('sync.getRecord of an absent record: a proof of absence, as the PDS serves', async () => {
    const { data } = await mirror.com.atproto.sync.getRecord({ did: alice.did, collection: 'app.bsky.feed.post', rkey: '3zzzzzzzzzzzz' })
    assert.deepEqual(sortedCids(data), sortedCids(pds.absent!))
    const result = await verifyProofs(data, [{ collection: 'app.bsky.feed.post', rkey: '3zzzzzzzzzzzz', cid: null }], alice.did, didKey)
    assert.equal(result.verified.length, 1)
  })

  it('getBlocks: the asked blocks of the repo; a block it does not hold is BlockNotFound', async () => {
    const cids = [head.cid, posts[3].cid, posts[50].cid]
    const { data } = await mirror.com.atproto.sync.getBlocks({ did: alice.did, cids })
    assert.deepEqual(sortedCids(data), [...cids].sort())
    const missing = await xrpcError(mirror.com.atproto.sync.getBlocks({ did: alice.did, cids: [head.cid, 'bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm'] }))
    assert.deepEqual(missing, { error: 'BlockNotFound', status: 400 })
  })

  it('getRepoStatus and listRepos', async () => {
    const { data: status } = await mirror.com.atproto.sync.getRepoStatus({ did: alice.did })
    assert.deepEqual(status, { did: alice.did, active: true, rev: head.rev })
    const { data: list } = await mirror.com.atproto.sync.listRepos({})
    assert.deepEqual(list.repos.find(repo => repo.did === alice.did), { did: alice.did, head: head.cid, rev: head.rev, active: true })
    const unknown = await xrpcError(mirror.com.atproto.sync.getRepoStatus({ did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa' }))
    assert.deepEqual(unknown, { error: 'RepoNotFound', status: 400 })
  })

  it('repo.getRecord: the record as JSON, as the PDS answers it; by handle too', async () => {
    const like = pds.getRecord as { uri: string, cid: string, value: unknown }
    const rkey = like.uri.split('/').pop()!
    const { data } = await mirror.com.atproto.repo.getRecord({ repo: alice.did, collection: 'app.bsky.feed.like', rkey })
    assert.deepEqual(data, like)
    const byHandle = await mirror.com.atproto.repo.getRecord({ repo: alice.handle, collection: 'app.bsky.actor.profile', rkey: 'self' })
    assert.deepEqual(byHandle.data.value, { $type: 'app.bsky.actor.profile', displayName: 'Alice', description: 'bytes and links' })
    const absent = await xrpcError(mirror.com.atproto.repo.getRecord({ repo: alice.did, collection: 'app.bsky.feed.post', rkey: '3zzzzzzzzzzzz' }))
    assert.deepEqual(absent, { error: 'RecordNotFound', status: 400 })
  })

  it('repo.listRecords: the same page as the PDS, and every record page by page both ways', async () => {
    const { data } = await mirror.com.atproto.repo.listRecords({ repo: alice.did, collection: 'app.bsky.feed.post', limit: 30 })
    assert.deepEqual(data, pds.list)
    for (const reverse of [false, true]) {
      const seen: string[] = []
      let cursor: string | undefined
      do {
        const page = (await mirror.com.atproto.repo.listRecords({ repo: alice.did, collection: 'app.bsky.feed.post', limit: 50, cursor, reverse })).data
        seen.push(...page.records.map(r => r.uri))
        cursor = page.cursor
      } while (cursor !== undefined)
      const expected = posts.map(p => p.uri).sort()
      assert.deepEqual(seen, reverse ? expected : expected.reverse())
    }
  })

  it('repo.describeRepo: the collections and the DID document', async () => {
    const { data } = await mirror.com.atproto.repo.describeRepo({ repo: alice.did })
    assert.deepEqual(data.collections, pds.collections)
    assert.equal(data.did, alice.did)
    assert.equal(data.handle, alice.handle)
    assert.equal((data.didDoc as { id: string }).id, alice.did)
  })

  it('the gateway serves raw blocks and CARs of what it mirrors', async () => {
    const url = node.http!.url
    const raw = await fetch(`${url}/ipfs/${posts[3].cid}?format=raw`)
    assert.equal(raw.status, 200)
    assert.equal(raw.headers.get('content-type'), 'application/vnd.ipld.raw')
    const { sha256 } = await import('multiformats/hashes/sha2')
    const { CID } = await import('multiformats/cid')
    const bytes = new Uint8Array(await raw.arrayBuffer())
    assert.deepEqual((await sha256.digest(bytes)).digest, CID.parse(posts[3].cid).multihash.digest)
    const byAccept = await fetch(`${url}/ipfs/${posts[3].cid}`, { headers: { accept: 'application/vnd.ipld.raw' } })
    assert.deepEqual(new Uint8Array(await byAccept.arrayBuffer()), bytes)
    // the whole repo under its commit, which @atproto/repo verifies
    const car = await fetch(`${url}/ipfs/${head.cid}?format=car`)
    assert.match(car.headers.get('content-type') ?? '', /^application\/vnd\.ipld\.car; version=1/)
    const carBytes = new Uint8Array(await car.arrayBuffer())
    assert.equal((await verifyRepoCar(carBytes, alice.did, didKey)).commit.rev, head.rev)
    assert.deepEqual(sortedCids(carBytes), sortedCids(pds.repo!))
    const block = splitCar(new Uint8Array(await (await fetch(`${url}/ipfs/${head.cid}?format=car&dag-scope=block`)).arrayBuffer()))
    assert.deepEqual(block.blocks.map(b => b.cid.toString()), [head.cid])
    const absent = await fetch(`${url}/ipfs/bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm?format=raw`)
    assert.equal(absent.status, 404)
  })

  describe('hostile input gets a clean 4xx', () => {
    const cases: Array<[string, string, number]> = [
      ['a bad DID', '/xrpc/com.atproto.sync.getLatestCommit?did=not-a-did', 400],
      ['a DID of 3,000 characters', `/xrpc/com.atproto.sync.getRepo?did=did:plc:${'a'.repeat(3000)}`, 400],
      ['a bad CID in getBlocks', '/xrpc/com.atproto.sync.getBlocks?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa&cids=notacid', 400],
      ['a bad since', '/xrpc/com.atproto.sync.getRepo?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa&since=../../etc', 400],
      ['10,000 CIDs in getBlocks (head too large)', `/xrpc/com.atproto.sync.getBlocks?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa${'&cids=bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm'.repeat(10_000)}`, 431],
      ['a bad rkey', '/xrpc/com.atproto.repo.getRecord?repo=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa&collection=app.bsky.feed.post&rkey=..', 400],
      ['a bad collection', '/xrpc/com.atproto.repo.listRecords?repo=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa&collection=../x', 400],
      ['a limit past the lexicon', '/xrpc/com.atproto.repo.listRecords?repo=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa&collection=app.bsky.feed.post&limit=100000', 400],
      ['a gateway path under a CID', '/ipfs/bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm/app.bsky.feed.post?format=raw', 400],
      ['a dot-dot path (normalised by the client)', '/ipfs/bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm/../../etc/passwd?format=raw', 404],
      ['an encoded dot-dot in a gateway path', '/ipfs/bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm%2f..%2f..%2fetc?format=raw', 400],
      ['a gateway bad CID', '/ipfs/not-a-cid?format=raw', 400],
      ['a gateway request without a format', '/ipfs/bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm', 400],
      ['a gateway bad dag-scope', '/ipfs/bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm?format=car&dag-scope=everything', 400],
      ['an encoded path trick', '/xrpc/..%2f..%2fcom.atproto.sync.getRepo', 400]
    ]
    for (const [name, path, status] of cases) {
      it(name, async () => {
        const res = await fetch(node.http!.url + path)
        assert.equal(res.status, status, await res.clone().text())
        if (status !== 431) assert.equal(typeof (await res.json()).error, 'string')
      })
    }
  })

  it('1,000 concurrent getRepo calls: every one a full CAR or a 429, nothing else', async () => {
    const url = `${node.http!.url}/xrpc/com.atproto.sync.getRepo?did=${alice.did}`
    const answers = await Promise.all(Array.from({ length: 1000 }, async () => {
      const res = await fetch(url)
      const body = new Uint8Array(await res.arrayBuffer())
      return { status: res.status, ok: res.status === 200 && splitCar(body).roots[0].toString() === head.cid }
    }))
    const byStatus = new Map<number, number>()
    for (const answer of answers) byStatus.set(answer.status, (byStatus.get(answer.status) ?? 0) + 1)
    assert.deepEqual([...byStatus.keys()].filter(s => s !== 200 && s !== 429), [], `statuses ${JSON.stringify([...byStatus])}`)
    assert.ok((byStatus.get(200) ?? 0) >= 64, `at least the per-client limit served: ${JSON.stringify([...byStatus])}`)
    assert.ok(answers.every(a => a.status !== 200 || a.ok))
    assert.equal((await fetch(`${node.http!.url}/xrpc/_health`)).status, 200)
  })

  describe('withheld repos (PDS running again)', () => {
    before(async () => { await net.startPds() })

    it('deactivated: RepoDeactivated everywhere, the gateway 404s its blocks, the status says so', async () => {
      const bob = await net.createAccount('bob')
      const written = await net.writeRecords(bob, [{ collection: 'app.bsky.feed.post', value: { text: 'only bob', createdAt: new Date(0).toISOString() } }])
      await node.pin(bob.did)
      assert.equal((await fetch(`${node.http!.url}/ipfs/${written.records[0].cid}?format=raw`)).status, 200)
      // twice: the second answer comes from the CAR cache, which must not outlive the status
      for (let i = 0; i < 2; i++) assert.equal(splitCar((await mirror.com.atproto.sync.getRepo({ did: bob.did })).data).roots[0].toString(), written.commit.cid)
      await net.deactivateAccount(bob)
      await node.sync(bob.did).catch(() => {})
      assert.equal((await node.store.getState(bob.did))?.status, 'deactivated')
      const rkey = written.records[0].rkey
      for (const call of [
        async () => await mirror.com.atproto.sync.getLatestCommit({ did: bob.did }),
        async () => await mirror.com.atproto.sync.getRepo({ did: bob.did }),
        async () => await mirror.com.atproto.sync.getRecord({ did: bob.did, collection: 'app.bsky.feed.post', rkey }),
        async () => await mirror.com.atproto.sync.getBlocks({ did: bob.did, cids: [written.commit.cid] }),
        async () => await mirror.com.atproto.repo.getRecord({ repo: bob.did, collection: 'app.bsky.feed.post', rkey }),
        async () => await mirror.com.atproto.repo.listRecords({ repo: bob.did, collection: 'app.bsky.feed.post' })
      ]) {
        assert.deepEqual(await xrpcError(call()), { error: 'RepoDeactivated', status: 400 })
      }
      assert.deepEqual((await mirror.com.atproto.sync.getRepoStatus({ did: bob.did })).data, { did: bob.did, active: false, status: 'deactivated' })
      for (const cid of [written.records[0].cid, written.commit.cid]) {
        assert.equal((await fetch(`${node.http!.url}/ipfs/${cid}?format=raw`)).status, 404)
      }
    })

    it('taken down: RepoTakendown, and the gateway 404s its blocks', async () => {
      const carol = await net.createAccount('carol')
      const written = await net.writeRecords(carol, [{ collection: 'app.bsky.feed.post', value: { text: 'only carol', createdAt: new Date(0).toISOString() } }])
      await node.pin(carol.did)
      await net.takedownAccount(carol.did)
      await node.sync(carol.did).catch(() => {})
      assert.deepEqual(await xrpcError(mirror.com.atproto.sync.getRepo({ did: carol.did })), { error: 'RepoTakendown', status: 400 })
      assert.deepEqual(await xrpcError(mirror.com.atproto.repo.describeRepo({ repo: carol.did })), { error: 'RepoTakendown', status: 400 })
      assert.equal((await fetch(`${node.http!.url}/ipfs/${written.records[0].cid}?format=raw`)).status, 404)
      assert.equal((await fetch(`${node.http!.url}/ipfs/${written.commit.cid}?format=car`)).status, 404)
    })
  })
})

/**
 * A hostile or broken PDS (a small fake on 127.0.0.1, also serving the DID
 * document as a PLC directory would): every bad answer is rejected with the right
 * error, and the mirror's stored state and blocks stay exactly as they were.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, beforeEach, describe, it } from 'node:test'
import { BlockFetcher } from '../../src/blocks/fetcher.ts'
import { PdsBroker } from '../../src/blocks/pds.ts'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { MirrorStore, type RepoState } from '../../src/mirror/store.ts'
import { RepoSyncer } from '../../src/mirror/sync.ts'
import { cidKey } from '../../src/repo/cid.ts'
import { assembleRepo, dropBlock, findNodes, flipByteInBlock, keyWithHeightAfter, openRepo, splitCar, joinCar, type RepoParts, type TreeNode } from '../helpers/car-tools.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'
import { storedBlocks } from '../helpers/blocks.ts'
import { EvolvingRepo, post, posts, type RepoVersion } from '../helpers/evolving-repo.ts'

describe('mirroring from a hostile PDS', () => {
  let pds: FakePds
  let root: string
  let store: MirrorStore
  let syncer: RepoSyncer
  let identity: AtprotoIdentityResolver
  let repo: EvolvingRepo
  let v1: RepoVersion
  let v2: RepoVersion
  let stateBefore: RepoState | undefined
  let blocksBefore: string[]

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-hostile-'))
    store = await MirrorStore.open(join(root, 'data'))
    identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
    syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) }, { pds: { idleTimeoutMs: 500, timeoutMs: 5000 } })

    repo = await EvolvingRepo.create(31, posts(60))
    v1 = await repo.version()
    pds.setRepo(v1.did, repo.keypair, v1)
    const first = await syncer.sync(v1.did)
    assert.equal(first.records, 60)
    stateBefore = await store.getState(v1.did)
    blocksBefore = await storedBlocks(store)
    assert.equal(blocksBefore.length, v1.blocks.length)

    // the PDS moves on; every test serves this version badly
    v2 = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'the new post') }])
    pds.setRepo(v2.did, repo.keypair, v2)
  })

  after(async () => {
    await store.close()
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  beforeEach(() => { pds.reset() })

  const sinceCar = (): Uint8Array => {
    const had = new Set(v1.blocks.map(b => cidKey(b.cid)))
    const { roots, blocks } = splitCar(v2.car)
    return joinCar(roots, blocks.filter(b => !had.has(cidKey(b.cid))))
  }
  const newRecord = (): string => {
    const had = new Set(v1.blocks.map(b => cidKey(b.cid)))
    const added = v2.blocks.filter(b => !had.has(cidKey(b.cid)) && !b.cid.equals(v2.commit) && b.bytes[0] !== 0xa2)
    assert.equal(added.length, 1)
    return added[0].cid.toString()
  }
  const assertUnchanged = async (): Promise<void> => {
    assert.deepEqual(await store.getState(v1.did), stateBefore)
    assert.deepEqual(await storedBlocks(store), blocksBefore)
  }

  it('rejects a block whose bytes do not match its CID (CidMismatchError)', async () => {
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(flipByteInBlock(sinceCar(), newRecord()))
    })
    await assert.rejects(syncer.sync(v1.did), { name: 'CidMismatchError' })
    await assertUnchanged()
  })

  it('rejects a CAR whose commit is signed by another key (CommitSignatureError)', async () => {
    // same DID, same records plus one, newer rev, but signed by a key the DID does not have
    const forged = await (await EvolvingRepo.create(31, [...posts(60), post('3zzzzzzzzzzzz', 'forged')], { keySeed: 99 })).version()
    assert.ok(forged.rev > v2.rev)
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(forged.car)
    })
    await assert.rejects(syncer.sync(v1.did), { name: 'CommitSignatureError' })
    await assertUnchanged()
  })

  it('gives up on a getRepo that stalls mid-stream, in bounded time', async () => {
    pds.handle('getRepo', (_req, res) => {
      const car = sinceCar()
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.write(car.subarray(0, car.byteLength >> 1))
      // and nothing more, ever
    })
    const started = performance.now()
    await assert.rejects(syncer.sync(v1.did), (err: Error) => {
      assert.equal(err.name, 'PdsUnavailableError')
      assert.match(err.message, /stalled/)
      return true
    })
    assert.ok(performance.now() - started < 5000, `took ${performance.now() - started} ms`)
    await assertUnchanged()
  })

  it('a download that breaks off mid-header is an interrupted download naming the URL and the bytes received, not a malformed CAR', async () => {
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.write(sinceCar().subarray(0, 10), () => { res.socket?.destroy() })
    })
    await assert.rejects(syncer.sync(v1.did), (err: Error & { url?: string }) => {
      assert.equal(err.name, 'PdsUnavailableError')
      assert.match(err.message, /download interrupted after 10 bytes/)
      assert.match(err.url ?? '', /com\.atproto\.sync\.getRepo/)
      return true
    })
    await assertUnchanged()
  })

  it('a response that ends inside a block is an interrupted download too', async () => {
    pds.handle('getRepo', (_req, res) => {
      const car = sinceCar()
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(car.subarray(0, car.byteLength - 5))
    })
    await assert.rejects(syncer.sync(v1.did), (err: Error) => {
      assert.equal(err.name, 'PdsUnavailableError')
      assert.match(err.message, /download interrupted after \d+ bytes/)
      return true
    })
    await assertUnchanged()
  })

  it('fails with AllSourcesFailedError naming the PDS when getBlocks answers 500', async () => {
    // getRepo leaves out the new record, so the walk must ask getBlocks for it
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(dropBlock(sinceCar(), newRecord()))
    })
    pds.handle('getBlocks', async (_req, res, url, fallback) => {
      // the head resolver's request for the commit block still works
      if (url.searchParams.getAll('cids').every(cid => cid === v2.commit.toString())) return await fallback()
      res.writeHead(500, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: 'InternalServerError', message: 'database on fire' }))
    })
    await assert.rejects(syncer.sync(v1.did), (err: Error & { errors?: Array<{ source: string, error: Error }> }) => {
      assert.equal(err.name, 'AllSourcesFailedError')
      const pdsReason = err.errors?.find(e => e.source === 'pds')
      assert.equal(pdsReason?.error.name, 'PdsUnavailableError')
      return true
    })
    await assertUnchanged()
  })

  it('a PDS without getRepo is still mirrored, through getBlocks', async () => {
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(501, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: 'MethodNotImplemented', message: 'no getRepo here' }))
    })
    const result = await syncer.sync(v1.did)
    assert.equal(result.changed, true)
    assert.equal(result.full, false)
    assert.equal(result.rev, v2.rev)
    assert.equal(result.records, 61)
    // only the changed path and the new record: the walk does not enter what v1 held
    assert.ok(result.fetched.pds <= 8, `fetched ${result.fetched.pds}`)
    assert.ok(pds.requests.some(r => r.route === 'getBlocks'))
    assert.deepEqual(await storedBlocks(store), v2.blocks.map(b => Buffer.from(b.cid.multihash.bytes).toString('hex')).sort())
  })
})

describe('an incremental sync of a tree that reuses stored subtrees wrongly', () => {
  // the stored tree rearranged and re-signed with the account's own key: only the
  // structure is wrong, and the walk does not enter the stored subtrees it reuses,
  // so the incremental verification is what must refuse it
  let pds: FakePds
  let root: string
  let store: MirrorStore
  let syncer: RepoSyncer
  let repo: EvolvingRepo
  let v1: RepoVersion
  let stateBefore: RepoState | undefined
  let blocksBefore: string[]

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-reuse-'))
    store = await MirrorStore.open(join(root, 'data'))
    const identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
    syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) })
    repo = await EvolvingRepo.create(41, posts(300))
    v1 = await repo.version()
    pds.setRepo(v1.did, repo.keypair, v1)
    assert.equal((await syncer.sync(v1.did)).records, 300)
    stateBefore = await store.getState(v1.did)
    blocksBefore = await storedBlocks(store)
  })

  after(async () => {
    await store.close()
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  let revs = 0
  /** Serves the stored tree changed by `edit`, signed by the account's key, as the PDS's head. */
  const serveHostile = async (edit: (parts: RepoParts) => void): Promise<void> => {
    const parts = openRepo(v1.car)
    edit(parts)
    const rev = `3zzzzzzzzzzz${'234567'[revs++]}`
    const { car, commitCid } = await assembleRepo(parts, repo.keypair, { rev })
    pds.setRepo(v1.did, repo.keypair, { commit: commitCid, rev, car })
  }
  const refused = async (message: RegExp): Promise<void> => {
    await assert.rejects(syncer.sync(v1.did), (err: Error) => {
      assert.equal(err.name, 'MstInvalidError', err.message)
      assert.match(err.message, message)
      return true
    })
    assert.deepEqual(await store.getState(v1.did), stateBefore)
    assert.deepEqual(await storedBlocks(store), blocksBefore)
  }

  it('two stored subtrees swapped, each in the other\'s key range: MstInvalidError, nothing stored', async () => {
    await serveHostile(({ tree }) => {
      const left = tree.left
      tree.left = tree.entries[0].right
      tree.entries[0].right = left
    })
    await refused(/previous tree reused with key not (after|before)/)
  })

  it('a new key with the stored subtree next to it left unsplit: MstInvalidError, nothing stored', async () => {
    await serveHostile(({ tree }) => {
      // the root's subtrees in key order; the new key goes right after the first one with two keys or more
      const i = [tree.left, ...tree.entries.map(entry => entry.right)].findIndex(child => child !== null && child.entries.length > 1)
      const straddled = (i === 0 ? tree.left : tree.entries[i - 1].right) as TreeNode
      tree.entries.splice(i, 0, { key: keyWithHeightAfter(straddled.entries[0].key, tree.layer), value: tree.entries[0].value, right: null })
    })
    await refused(/previous tree reused with key not before/)
  })

  it('a syncer verifying every advance whole (verify: \'full\') refuses it alike', async () => {
    await serveHostile(({ tree }) => {
      const left = tree.left
      tree.left = tree.entries[0].right
      tree.entries[0].right = left
    })
    const identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
    const whole = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) }, { verify: 'full' })
    await assert.rejects(whole.sync(v1.did), { name: 'MstInvalidError' })
    assert.deepEqual(await store.getState(v1.did), stateBefore)
    assert.deepEqual(await storedBlocks(store), blocksBefore)
  })

  it('a stored subtree linked a layer too high: MstInvalidError, nothing stored', async () => {
    await serveHostile(({ tree }) => {
      const [parent] = findNodes(tree.left as TreeNode, node => node.left !== null && node.layer === tree.layer - 1)
      tree.left = parent.left
    })
    await refused(/key height \d+ does not match node layer/)
  })

  it('an honest change afterwards advances, its record count carried from the stored one by the diff', async () => {
    const v2 = await repo.write([
      { action: 'create', value: post('3zzzzzzzzzzzz', 'new') },
      { action: 'delete', collection: 'app.bsky.feed.post', rkey: posts(300)[7].rkey },
      { action: 'delete', collection: 'app.bsky.feed.post', rkey: posts(300)[8].rkey }
    ])
    pds.setRepo(v2.did, repo.keypair, v2)
    const result = await syncer.sync(v1.did)
    assert.equal(result.full, false)
    assert.equal(result.records, 299)
    const report = await syncer.verifyStored(v1.did)
    assert.equal(report.error, undefined)
    assert.equal(report.records, 299)
  })
})

describe('a PDS that rolls back', () => {
  it('an older signed rev than stored is not taken, and the sync result says it was a rollback', async () => {
    const pds = await startFakePds()
    const root = await mkdtemp(join(tmpdir(), 'atmirror-rollback-'))
    const store = await MirrorStore.open(join(root, 'data'))
    try {
      const identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
      const syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) })
      const repo = await EvolvingRepo.create(51, posts(5))
      const old = await repo.version()
      const current = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'later') }])
      pds.setRepo(current.did, repo.keypair, current)
      assert.equal((await syncer.sync(current.did)).rev, current.rev)
      const stored = await store.getState(current.did)
      // the PDS now serves the older, validly signed commit as its head
      pds.handle('getLatestCommit', (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ cid: old.commit.toString(), rev: old.rev }))
      })
      pds.handle('getBlocks', (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
        res.end(joinCar([], old.blocks.filter(b => b.cid.equals(old.commit))))
      })
      const result = await syncer.sync(current.did)
      assert.equal(result.changed, false)
      assert.equal(result.rev, current.rev)
      assert.deepEqual(result.rollback, { rev: old.rev, commit: old.commit })
      assert.equal((await store.getState(current.did))?.commit, stored?.commit)
    } finally {
      await store.close()
      await pds.stop()
      await rm(root, { recursive: true, force: true })
    }
  })
})

describe('PdsBroker', () => {
  let pds: FakePds
  let version: RepoVersion
  let repo: EvolvingRepo
  let identity: AtprotoIdentityResolver

  before(async () => {
    pds = await startFakePds()
    repo = await EvolvingRepo.create(41, posts(150))
    version = await repo.version()
    pds.setRepo(version.did, repo.keypair, version)
    identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
  })
  after(async () => { await pds.stop() })
  beforeEach(() => { pds.reset() })

  it('asks for many CIDs per getBlocks request', async () => {
    const broker = new PdsBroker({ identity }, { batchSize: 100 })
    const cids = version.blocks.map(b => b.cid)
    const got: string[] = []
    for await (const block of broker.getMany(cids, { did: version.did })) got.push(block.cid.toString())
    assert.deepEqual(got.sort(), cids.map(c => c.toString()).sort())
    const requests = pds.requests.filter(r => r.route === 'getBlocks')
    assert.equal(requests.length, Math.ceil(cids.length / 100))
  })

  it('keeps a request under the URL length limit', async () => {
    const broker = new PdsBroker({ identity }, { batchSize: 500, maxUrlLength: 4000 })
    for await (const _ of broker.getMany(version.blocks.map(b => b.cid), { did: version.did })) { /* drain */ }
    for (const request of pds.requests.filter(r => r.route === 'getBlocks')) {
      assert.ok(`${pds.url}${request.url}`.length <= 4000)
    }
  })

  it('a CID the PDS lacks does not hide the rest of its batch', async () => {
    const absent = (await (await EvolvingRepo.create(42, posts(1))).version()).commit
    const fetcher = new BlockFetcher({ brokers: [new PdsBroker({ identity })] })
    const wanted = [...version.blocks.slice(0, 20).map(b => b.cid), absent]
    const err = await fetcher.fetchAll(wanted, { did: version.did, store: false }).then(() => undefined, (e: unknown) => e) as Error & { cid: string, errors: Array<{ source: string, error: Error }> }
    assert.equal(err.name, 'AllSourcesFailedError')
    assert.equal(err.cid, absent.toString())
    assert.deepEqual(err.errors.map(e => [e.source, e.error.name]), [['pds', 'BlockNotFoundError']])
  })

  it('a block whose bytes do not match is not yielded and the PDS is named as failed', async () => {
    const target = version.blocks[5]
    pds.handle('getBlocks', (_req, res, url) => {
      const wanted = new Set(url.searchParams.getAll('cids'))
      const blocks = version.blocks.filter(b => wanted.has(b.cid.toString())).map(b => b.cid.equals(target.cid) ? { cid: b.cid, bytes: Uint8Array.from(version.blocks[6].bytes) } : b)
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(joinCar([], blocks))
    })
    const fetcher = new BlockFetcher({ brokers: [new PdsBroker({ identity })] })
    const err = await fetcher.fetchAll([target.cid], { did: version.did, store: false }).then(() => undefined, (e: unknown) => e) as Error & { errors: Array<{ source: string, error: Error }> }
    assert.equal(err.name, 'AllSourcesFailedError')
    assert.equal(err.errors[0].error.name, 'CidMismatchError')
  })
})

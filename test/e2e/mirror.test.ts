/**
 * Mirroring from a real PDS + PLC (support/network.ts): full and incremental
 * syncs, exports compared record for record with the PDS's own getRepo, garbage
 * collection of deleted records, account status (deactivation, takedown), unpin,
 * and the `mirror`, `export` and `block get` commands.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { readCarWithRoot, verifyRepo as atprotoVerifyRepo } from '@atproto/repo'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { exportStoredRepo } from '../../src/mirror/export.ts'
import { RepoSyncer } from '../../src/mirror/sync.ts'
import { cidForBytes, parseCid } from '../../src/repo/cid.ts'
import { verifyRepo, verifyRepoCar } from '../../src/repo/verify.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type TestRecord } from '../../support/network.ts'
import { hexOf, storedBlocks } from '../helpers/blocks.ts'
import { collect } from '../helpers/bytes.ts'

const pexec = promisify(execFile)
const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')

/** Every record of a repo CAR as `collection/rkey → cid`, by the reference implementation. */
async function recordsOf (car: Uint8Array, did: string): Promise<Map<string, string>> {
  const { root, blocks } = await readCarWithRoot(car)
  const repo = await atprotoVerifyRepo(blocks, root, did)
  return new Map(repo.creates.map(op => [`${op.collection}/${op.rkey}`, op.cid.toString()]))
}

const postsFor = (n: number, tag: string): TestRecord[] => Array.from({ length: n }, (_, i) => ({
  collection: 'app.bsky.feed.post',
  value: { text: `${tag} post ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i % 60, i)).toISOString() }
}))

describe('mirroring from a real PDS', () => {
  let net: TestNetwork
  let root: string
  let store: MirrorStore
  let syncer: RepoSyncer

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-mirror-'))
    store = await MirrorStore.open(join(root, 'data'))
    const identity = new AtprotoIdentityResolver({ plcUrl: net.plcUrl, allowHttpLocalhost: true, handleResolverUrl: net.pdsUrl })
    syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) })
  })

  after(async () => {
    await store?.close()
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  describe('one account through its life', () => {
    let alice: TestAccount
    let written: Awaited<ReturnType<TestNetwork['writeRecords']>>

    before(async () => {
      alice = await net.createAccount('alice')
      written = await net.writeRecords(alice, [
        { collection: 'app.bsky.actor.profile', rkey: 'self', value: { displayName: 'Alice' } },
        ...postsFor(120, 'alice')
      ])
    })

    it('mirrors the account and exports what the PDS serves, record for record', async () => {
      const result = await syncer.sync(alice.handle)
      assert.equal(result.did, alice.did)
      assert.equal(result.full, true)
      assert.equal(result.changed, true)
      assert.equal(result.records, 121)
      assert.equal(result.rev, written.commit.rev)
      assert.equal(result.commit.toString(), written.commit.cid)
      assert.ok(result.fetched.pds > 121)
      assert.deepEqual(await store.pins.list(), [alice.did])
      const state = await store.getState(alice.did)
      assert.equal(state?.status, 'active')
      assert.equal(state?.commit, written.commit.cid)

      const exported = await collect(exportStoredRepo(store, alice.did))
      const ours = await recordsOf(exported, alice.did)
      const theirs = await recordsOf(await net.getRepoCar(alice.did), alice.did)
      assert.equal(ours.size, 121)
      assert.deepEqual([...ours].sort(), [...theirs].sort())
    })

    it('fetches nothing but the head when the repo has not changed', async () => {
      const result = await syncer.sync(alice.did)
      assert.equal(result.changed, false)
      assert.deepEqual(result.fetched, { local: 0, bitswap: 0, pds: 0 })
      assert.equal(result.bytes, 0)
      assert.equal(result.records, 121)
    })

    it('follows writes, updates and deletes with a few blocks and drops what was deleted', async () => {
      const [gone, edited] = [written.records[10], written.records[20]]
      await net.deleteRecord(alice, gone.collection, gone.rkey)
      const update = await net.updateRecord(alice, { collection: edited.collection, rkey: edited.rkey, value: { text: 'edited', createdAt: new Date().toISOString() } })
      const added = await net.writeRecords(alice, postsFor(2, 'alice later'))
      const blocksBefore = (await storedBlocks(store)).length

      const result = await syncer.sync(alice.did)
      assert.equal(result.full, false)
      assert.equal(result.changed, true)
      assert.equal(result.records, 122)
      assert.equal(result.rev, added.commit.rev)
      // three commits of a small tree: each a commit and a few nodes, plus three records;
      // the whole repo is well over a hundred blocks
      const fetched = result.fetched.pds + result.fetched.bitswap
      assert.ok(fetched <= 30, `fetched ${fetched} blocks`)
      assert.ok(fetched < blocksBefore / 4)

      const exported = await collect(exportStoredRepo(store, alice.did))
      assert.deepEqual([...await recordsOf(exported, alice.did)].sort(), [...await recordsOf(await net.getRepoCar(alice.did), alice.did)].sort())
      // the deleted record and the old version of the edited one are not servable any more
      assert.equal(await store.hasBlock(parseCid(gone.cid)), false)
      assert.equal(await store.hasBlock(parseCid(edited.cid)), false)
      assert.equal(await store.hasBlock(parseCid(update.cid)), true)
      // and the store holds exactly the current repo
      const summary = await verifyRepo(store.blocks, result.commit, { did: alice.did })
      assert.equal((await storedBlocks(store)).length, summary.blocks)
    })

    it('keeps the blocks of a deactivated account and records its status', async () => {
      const blocks = await storedBlocks(store)
      await net.deactivateAccount(alice)
      try {
        await assert.rejects(syncer.sync(alice.did), { name: 'RepoDeactivatedError' })
        const state = await store.getState(alice.did)
        assert.equal(state?.status, 'deactivated')
        assert.deepEqual(await storedBlocks(store), blocks)
      } finally {
        await net.activateAccount(alice)
      }
      const result = await syncer.sync(alice.did)
      assert.equal(result.changed, false)
      assert.equal((await store.getState(alice.did))?.status, 'active')
    })

    it('honours a takedown by deleting the blocks, and mirrors again when it is lifted', async () => {
      await net.takedownAccount(alice.did)
      try {
        await assert.rejects(syncer.sync(alice.did), { name: 'RepoTakendownError' })
        const state = await store.getState(alice.did)
        assert.equal(state?.status, 'takendown')
        assert.deepEqual(await storedBlocks(store), [])
        assert.ok(await store.pins.has(alice.did))
        await assert.rejects(collect(exportStoredRepo(store, alice.did)), { name: 'RepoNotMirroredError' })
      } finally {
        await net.takedownAccount(alice.did, false)
      }
      const result = await syncer.sync(alice.did)
      assert.equal(result.full, true)
      assert.equal(result.records, 122)
      assert.equal((await store.getState(alice.did))?.status, 'active')
    })

    it('unpinning drops the state and the blocks', async () => {
      await store.unpinRepo(alice.did)
      assert.equal(await store.getState(alice.did), undefined)
      assert.deepEqual(await store.pins.list(), [])
      assert.deepEqual(await storedBlocks(store), [])
    })
  })

  it('mirrors a 5,000-record account', async () => {
    const bob = await net.createAccount('bob')
    await net.writeRecords(bob, postsFor(5000, 'bob'))
    const result = await syncer.sync(bob.did)
    assert.equal(result.records, 5000)
    assert.equal(result.full, true)
    const exported = await collect(exportStoredRepo(store, bob.did))
    const ours = await recordsOf(exported, bob.did)
    assert.equal(ours.size, 5000)
    assert.deepEqual([...ours].sort(), [...await recordsOf(await net.getRepoCar(bob.did), bob.did)].sort())
    await store.unpinRepo(bob.did)
  })

  it('syncs of one DID run one at a time', async () => {
    const carol = await net.createAccount('carol')
    await net.writeRecords(carol, postsFor(50, 'carol'))
    const results = await Promise.all([syncer.sync(carol.did), syncer.sync(carol.did), syncer.sync(carol.did)])
    assert.deepEqual(results.map(r => r.changed), [true, false, false])
    await store.unpinRepo(carol.did)
  })

  it('skips blobs: a profile avatar and an image post mirror without fetching or needing the blob, and the export verifies', async () => {
    const frank = await net.createAccount('frank')
    // a real blob at the PDS: a 1×1 PNG through uploadBlob
    const png = Buffer.from('89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000201a3e8a4b40000000049454e44ae426082', 'hex')
    const uploaded = await fetch(`${net.pdsUrl}/xrpc/com.atproto.repo.uploadBlob`, {
      method: 'POST',
      headers: { authorization: `Bearer ${frank.accessJwt}`, 'content-type': 'image/png' },
      body: png,
      signal: AbortSignal.timeout(30_000)
    })
    assert.equal(uploaded.status, 200, await uploaded.clone().text())
    const { blob } = await uploaded.json() as { blob: { ref: { $link: string } } }
    const blobCid = parseCid(blob.ref.$link)
    assert.equal(blobCid.code, 0x55, 'a blob CID is raw')
    const written = await net.writeRecords(frank, [
      { collection: 'app.bsky.actor.profile', rkey: 'self', value: { displayName: 'Frank', avatar: blob } },
      { collection: 'app.bsky.feed.post', value: { text: 'a picture', createdAt: new Date().toISOString(), embed: { $type: 'app.bsky.embed.images', images: [{ image: blob, alt: 'one pixel' }] } } },
      ...postsFor(5, 'frank')
    ])
    // the PDS holds the blob: getBlob serves it
    const served = await fetch(`${net.pdsUrl}/xrpc/com.atproto.sync.getBlob?did=${frank.did}&cid=${blobCid.toString()}`, { signal: AbortSignal.timeout(30_000) })
    assert.equal(served.status, 200)
    assert.deepEqual(Buffer.from(await served.arrayBuffer()), png)

    // every request the sync makes, identity and head included
    const urls: string[] = []
    const spy = async (input: string | URL, init?: RequestInit): Promise<Response> => {
      urls.push(input.toString())
      return await fetch(input, init)
    }
    const identity = new AtprotoIdentityResolver({ plcUrl: net.plcUrl, allowHttpLocalhost: true, fetch: spy })
    const watched = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }, { fetch: spy }) }, { pds: { fetch: spy } })
    const result = await watched.sync(frank.did)
    assert.equal(result.records, 7)
    assert.equal(result.rev, written.commit.rev)
    assert.ok(urls.some(url => url.includes('com.atproto.sync.getRepo')), urls.join('\n'))
    assert.deepEqual(urls.filter(url => url.includes('getBlob') || url.includes(blobCid.toString())), [], 'the blob was never asked for')

    // the records that link the blob are stored, the blob is not, and the store holds exactly the repo
    const [profile, picture] = written.records
    for (const record of [profile, picture]) {
      const bytes = await store.getBlock(parseCid(record.cid))
      assert.ok(bytes !== undefined && Buffer.from(bytes).includes(Buffer.from(blobCid.bytes)), `${record.collection} links the blob`)
    }
    assert.equal(await store.hasBlock(blobCid), false)
    assert.equal((await storedBlocks(store)).includes(hexOf(blobCid)), false)
    const summary = await verifyRepo(store.blocks, result.commit, { did: frank.did })
    assert.equal((await storedBlocks(store)).length, summary.blocks)

    const exported = await collect(exportStoredRepo(store, frank.did))
    const verified = await verifyRepoCar(exported, { did: frank.did })
    assert.equal(verified.records, 7)
    assert.equal(verified.unreachableBlocks, 0)
    assert.deepEqual([...await recordsOf(exported, frank.did)].sort(), [...await recordsOf(await net.getRepoCar(frank.did), frank.did)].sort())
    await store.unpinRepo(frank.did)
  })

  describe('the commands', () => {
    let dave: TestAccount
    let dir: string
    const run = async (...args: string[]): Promise<{ stdout: string, stderr: string, code: number }> => {
      try {
        const { stdout, stderr } = await pexec(process.execPath, [CLI, ...args], { encoding: 'buffer' as BufferEncoding, env: { ...process.env, ATMIRROR_DATA: dir, ATMIRROR_PLC: net.plcUrl, ATMIRROR_HANDLE_RESOLVER: net.pdsUrl }, maxBuffer: 64 * 1024 * 1024 }) as unknown as { stdout: Buffer, stderr: Buffer }
        return { stdout: stdout.toString('latin1'), stderr: stderr.toString(), code: 0 }
      } catch (err) {
        const e = err as { stdout: Buffer, stderr: Buffer, code: number }
        return { stdout: e.stdout.toString('latin1'), stderr: e.stderr.toString(), code: e.code }
      }
    }

    before(async () => {
      dave = await net.createAccount('dave')
      await net.writeRecords(dave, postsFor(30, 'dave'))
      dir = join(root, 'cli')
    })

    it('mirror prints a summary, and again fetches nothing', async () => {
      const first = await run('mirror', dave.handle, '--json')
      assert.equal(first.code, 0, first.stderr)
      const result = JSON.parse(first.stdout)
      assert.equal(result.ok, true)
      assert.equal(result.did, dave.did)
      assert.equal(result.records, 30)
      assert.equal(result.full, true)
      const again = await run('mirror', dave.did)
      assert.equal(again.code, 0, again.stderr)
      assert.match(again.stdout, /records: +30/)
      assert.match(again.stdout, /unchanged/)
      assert.match(again.stdout, /fetched: +pds=0 bitswap=0 local=0/)
    })

    it('export writes a CAR that car verify and the reference implementation accept', async () => {
      const file = join(root, 'dave.car')
      const out = await run('export', dave.handle, '-o', file)
      assert.equal(out.code, 0, out.stderr)
      const verified = await run('car', 'verify', file, '--did', dave.did, '--json')
      assert.equal(verified.code, 0, verified.stderr + verified.stdout)
      assert.equal(JSON.parse(verified.stdout).records, 30)
      const car = new Uint8Array(await readFile(file))
      assert.deepEqual([...await recordsOf(car, dave.did)].sort(), [...await recordsOf(await net.getRepoCar(dave.did), dave.did)].sort())
    })

    it('block get prints a stored block, and --offline never leaves the store', async () => {
      const { cid: commit } = await net.getLatestCommit(dave.did)
      const got = await run('block', 'get', commit, '--offline')
      assert.equal(got.code, 0, got.stderr)
      const car = new Uint8Array(await readFile(join(root, 'dave.car')))
      const { blocks } = await readCarWithRoot(car)
      assert.deepEqual(Buffer.from(got.stdout, 'latin1'), Buffer.from(blocks.get(parseCid(commit) as never) as Uint8Array))

      const elsewhere = await net.createAccount('erin')
      const { cid: absent } = await net.getLatestCommit(elsewhere.did)
      const offline = await run('block', 'get', absent, '--offline')
      assert.equal(offline.code, 1)
      assert.match(offline.stderr, /BlockNotFoundError/)
      // with the DID, the fetch chain can ask that DID's PDS (nothing is stored)
      const fetched = await run('block', 'get', absent, '--did', elsewhere.did)
      assert.equal(fetched.code, 0, fetched.stderr)
      assert.ok(fetched.stdout.length > 0)
      const again = await run('block', 'get', absent, '--offline')
      assert.equal(again.code, 1)
    })

    it('block get --offline does not go to the network for a block the PDS has and the store lacks', async () => {
      // a record dave's PDS got after the mirror: only the PDS has it
      const later = await net.writeRecords(dave, postsFor(1, 'dave after the mirror'))
      const cid = later.records[0].cid
      const offline = await run('block', 'get', cid, '--offline')
      assert.equal(offline.code, 1)
      assert.match(offline.stderr, /BlockNotFoundError/)
      assert.match(offline.stderr, /source=local/)
      assert.equal(offline.stdout, '')
      // the same command allowed to ask dave's PDS gets it: --offline was what kept it local
      const online = await run('block', 'get', cid, '--did', dave.did)
      assert.equal(online.code, 0, online.stderr)
      assert.equal(cidForBytes(new Uint8Array(Buffer.from(online.stdout, 'latin1'))).toString(), cid)
    })

    it('mirror --progress draws throttled progress on a pipe, ending with the final figures', async () => {
      const gina = await net.createAccount('gina')
      await net.writeRecords(gina, postsFor(600, 'gina'))
      const started = performance.now()
      const out = await run('mirror', gina.did, '--json', '--progress')
      const seconds = (performance.now() - started) / 1000
      assert.equal(out.code, 0, out.stderr)
      const result = JSON.parse(out.stdout)
      const lines = out.stderr.trimEnd().split('\n')
      for (const line of lines) assert.match(line, /^(head|download|walk|verify|commit) +\d+ blocks {2}[\d.]+ (B|KiB|MiB) {2}[\d.]+ (B|KiB|MiB)\/s$/)
      // at most 10 a second (plus the final line), whatever the phase
      assert.ok(lines.length <= Math.ceil(seconds * 10) + 1, `${lines.length} lines in ${seconds.toFixed(2)} s`)
      // the final line: the advance, with every block the sync stored
      assert.match(lines.at(-1) ?? '', new RegExp(`^commit +${result.fetched.pds} blocks`))
      // without --progress, a pipe gets no progress at all
      const quiet = await run('mirror', gina.did, '--json')
      assert.equal(quiet.code, 0, quiet.stderr)
      assert.equal(quiet.stderr, '')
    })

    it('mirror of an unknown handle fails with a clear error and stores nothing', async () => {
      const look = async (): Promise<{ states: unknown[], pins: string[], blocks: string[] }> => {
        const opened = await MirrorStore.open(dir)
        try {
          return { states: await opened.listStates(), pins: await opened.pins.list(), blocks: await storedBlocks(opened) }
        } finally {
          await opened.close()
        }
      }
      const before = await look()
      assert.ok(before.pins.includes(dave.did) && before.blocks.length > 0)
      const out = await run('mirror', 'nobody.test')
      assert.equal(out.code, 1)
      assert.match(out.stderr, /^error: .*\(Handle\w+Error\)\n/)
      assert.deepEqual(await look(), before)
    })
  })
})

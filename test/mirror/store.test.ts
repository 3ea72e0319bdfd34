import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { FsBlockstore } from 'blockstore-fs'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { createHash } from 'node:crypto'
import { MirrorBlockstore } from '../../src/mirror/blockstore.ts'
import { MirrorStore, type RepoState } from '../../src/mirror/store.ts'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes } from '../../src/repo/cid.ts'

describe('MirrorStore', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-store-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  const fresh = async (name: string): Promise<{ dir: string, store: MirrorStore }> => {
    const dir = join(root, name)
    return { dir, store: await MirrorStore.open(dir) }
  }

  it('opens blocks and datastore under the data directory', async () => {
    const { dir, store } = await fresh('layout')
    try {
      assert.ok(existsSync(join(dir, 'blocks')))
      assert.ok(existsSync(join(dir, 'datastore')))
      assert.equal(store.dir, dir)
    } finally {
      await store.close()
    }
  })

  it('refuses a second open of the same directory with DataDirLockedError', async () => {
    const { dir, store } = await fresh('locked')
    try {
      await assert.rejects(MirrorStore.open(dir), { name: 'DataDirLockedError' })
    } finally {
      await store.close()
    }
    const again = await MirrorStore.open(dir)
    await again.close()
  })

  it('keeps pins: add, has, list, remove', async () => {
    const { dir, store } = await fresh('pins')
    await store.pins.add('did:plc:bbbbbbbbbbbbbbbbbbbbbbbb')
    await store.pins.add('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')
    await store.pins.add('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')
    assert.deepEqual(await store.pins.list(), ['did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', 'did:plc:bbbbbbbbbbbbbbbbbbbbbbbb'])
    await store.pins.remove('did:plc:bbbbbbbbbbbbbbbbbbbbbbbb')
    assert.equal(await store.pins.has('did:plc:bbbbbbbbbbbbbbbbbbbbbbbb'), false)
    await store.close()
    const reopened = await MirrorStore.open(dir)
    try {
      assert.deepEqual(await reopened.pins.list(), ['did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'])
      assert.equal(await reopened.pins.has('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'), true)
    } finally {
      await reopened.close()
    }
  })

  it('keeps repo states across reopening', async () => {
    const { dir, store } = await fresh('states')
    const state: RepoState = {
      did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa',
      commit: cidForBytes(encodeCbor({ c: 1 })).toString(),
      rev: '3l2zrtpbsjc2a',
      data: cidForBytes(encodeCbor({ d: 1 })).toString(),
      pds: 'https://pds.example.test',
      status: 'active',
      syncedAt: new Date(0).toISOString(),
      records: 3
    }
    assert.equal(await store.getState(state.did), undefined)
    await store.putState(state)
    await store.close()
    const reopened = await MirrorStore.open(dir)
    try {
      assert.deepEqual(await reopened.getState(state.did), state)
      assert.deepEqual(await reopened.listStates(), [state])
    } finally {
      await reopened.close()
    }
  })

  it('stores blocks hash-checked and readable by blockstore-fs', async () => {
    const { dir, store } = await fresh('blocks')
    const bytes = encodeCbor({ hello: 'world' })
    const cid = cidForBytes(bytes)
    const release = await store.beginWrite()
    await store.putBlocks('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', [{ cid, bytes }])
    await release()
    assert.deepEqual(await store.getBlock(cid), bytes)
    assert.equal(await store.hasBlock(cid), true)
    await store.close()
    const fs = new FsBlockstore(join(dir, 'blocks'))
    await fs.open()
    const chunks: Uint8Array[] = []
    for await (const chunk of fs.get(cid)) chunks.push(chunk)
    assert.deepEqual(new Uint8Array(Buffer.concat(chunks)), bytes)
  })

  it('rejects a block whose bytes do not match its CID and stores nothing', async () => {
    const { store } = await fresh('mismatch')
    try {
      const good = encodeCbor({ n: 1 })
      const goodCid = cidForBytes(good)
      const cid = cidForBytes(encodeCbor({ n: 2 }))
      const release = await store.beginWrite()
      await assert.rejects(store.putBlocks('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', [{ cid: goodCid, bytes: good }, { cid, bytes: good }]), { name: 'CidMismatchError' })
      await release()
      assert.equal(await store.hasBlock(cid), false)
      // the whole batch is checked before anything is written
      assert.equal(await store.hasBlock(goodCid), false)
    } finally {
      await store.close()
    }
  })

  it('rejects a CID atproto does not use and stores nothing', async () => {
    const { store } = await fresh('unsupported')
    try {
      const bytes = encodeCbor({ n: 1 })
      const sha1 = CID.createV1(0x71, Digest.create(0x11, createHash('sha1').update(bytes).digest()))
      const release = await store.beginWrite()
      await assert.rejects(store.putBlocks('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', [{ cid: sha1, bytes }]), { name: 'UnsupportedCidError' })
      await release()
      assert.equal(await store.hasBlock(sha1), false)
    } finally {
      await store.close()
    }
  })

  it('removes temp files a killed writer left behind when it opens', async () => {
    const dir = join(root, 'tmpfiles')
    const first = await MirrorStore.open(dir)
    const { cid, bytes } = { bytes: encodeCbor({ t: 1 }), cid: cidForBytes(encodeCbor({ t: 1 })) }
    // written outside any sync (a staged block of a killed sync would be collected
    // at open, see gc.test.ts): only the temp file is garbage here
    await first.blockstore.put(cid, bytes)
    // killed mid-write: a temp file next to the block, and the store never closed
    const shard = dirname(first.blockstore.pathOf(cid))
    await writeFile(join(shard, '.4242-7.tmp'), 'half a block')
    await first.datastore.close()
    const second = await MirrorStore.open(dir)
    try {
      assert.deepEqual((await readdir(shard)).filter(name => name.endsWith('.tmp')), [])
      assert.deepEqual(await second.getBlock(cid), bytes)
    } finally {
      await second.close()
    }
    // a clean close leaves nothing to sweep
    assert.equal(existsSync(join(dir, 'blocks', '.open')), false)
  })
})

describe('MirrorBlockstore', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-blockstore-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  it('put hash-checks whoever calls it', async () => {
    const store = new MirrorBlockstore(join(root, 'put'))
    await store.open()
    const bytes = encodeCbor({ a: 1 })
    const cid = cidForBytes(encodeCbor({ a: 2 }))
    await assert.rejects(store.put(cid, bytes), { name: 'CidMismatchError' })
    assert.equal(await store.has(cid), false)
  })

  it('reads what blockstore-fs wrote', async () => {
    const dir = join(root, 'interop')
    const fs = new FsBlockstore(dir)
    await fs.open()
    const bytes = encodeCbor({ b: 1 })
    const cid = cidForBytes(bytes)
    await fs.put(cid, bytes)
    const store = new MirrorBlockstore(dir)
    await store.open()
    assert.deepEqual(await store.getBytes(cid), bytes)
    const chunks: Uint8Array[] = []
    for await (const chunk of store.get(cid)) chunks.push(chunk)
    assert.deepEqual(chunks, [bytes])
    await store.delete(cid)
    assert.equal(await fs.has(cid), false)
  })

  it('get of an absent block throws NotFoundError', async () => {
    const store = new MirrorBlockstore(join(root, 'absent'))
    await store.open()
    const cid = cidForBytes(encodeCbor({ c: 1 }))
    assert.equal(await store.getBytes(cid), undefined)
    await assert.rejects(async () => { for await (const _ of store.get(cid)) { /* nothing */ } }, { name: 'NotFoundError' })
  })
})

describe('MirrorBlockstore.usage', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-usage-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  it('counts the stored blocks and their bytes, and no temp file', async () => {
    const store = new MirrorBlockstore(join(root, 'usage'))
    await store.open()
    assert.deepEqual(await store.usage(), { blocks: 0, bytes: 0 })
    const blocks = Array.from({ length: 40 }, (_, i) => encodeCbor({ n: i, text: 'x'.repeat(i) })).map(bytes => ({ cid: cidForBytes(bytes), bytes }))
    await store.putVerified(blocks)
    await writeFile(join(dirname(store.pathOf(blocks[0].cid)), '.4242-1.tmp'), 'half a block')
    const bytes = blocks.reduce((sum, block) => sum + block.bytes.byteLength, 0)
    assert.deepEqual(await store.usage(), { blocks: 40, bytes })
    await store.delete(blocks[0].cid)
    assert.deepEqual(await store.usage(), { blocks: 39, bytes: bytes - blocks[0].bytes.byteLength })
    await store.close()
  })
})

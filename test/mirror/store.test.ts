import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { FsBlockstore } from 'blockstore-fs'
import { LevelDatastore } from 'datastore-level'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { createHash } from 'node:crypto'
import { DEFAULT_BLOCKSTORE_KIND, readBlockstoreKind } from '../../src/mirror/blockstore.ts'
import { FsMirrorBlockstore } from '../../src/mirror/fs-blockstore.ts'
import { LevelMirrorBlockstore } from '../../src/mirror/level-blockstore.ts'
import { BLOCKSTORE_KINDS } from '../helpers/blocks.ts'
import { MirrorStore, type RepoState } from '../../src/mirror/store.ts'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes } from '../../src/repo/cid.ts'

for (const kind of BLOCKSTORE_KINDS) describe(`MirrorStore (${kind} store)`, () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-store-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  const fresh = async (name: string): Promise<{ dir: string, store: MirrorStore }> => {
    const dir = join(root, name)
    return { dir, store: await MirrorStore.open(dir, { blockstore: kind }) }
  }

  it('opens its stores under the data directory and records the kind', async () => {
    const { dir, store } = await fresh('layout')
    try {
      assert.equal(existsSync(join(dir, 'blocks')), kind === 'fs')
      assert.ok(existsSync(join(dir, 'datastore')))
      assert.equal(readBlockstoreKind(dir), kind)
      assert.equal(store.blockstore.kind, kind)
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

  it('stores blocks hash-checked and reads them back', async () => {
    const { store } = await fresh('readback')
    const bytes = encodeCbor({ hello: 'again' })
    const cid = cidForBytes(bytes)
    const release = await store.beginWrite()
    await store.putBlocks('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', [{ cid, bytes }])
    await release()
    assert.deepEqual(await store.getBlock(cid), bytes)
    assert.deepEqual(store.blocks.get(cid), bytes)
    assert.equal(await store.hasBlock(cid), true)
    const chunks: Uint8Array[] = []
    for await (const chunk of store.blockstore.get(cid)) chunks.push(chunk)
    assert.deepEqual(new Uint8Array(Buffer.concat(chunks)), bytes)
    assert.equal(await store.blockstore.deleteBlocks([cid, cidForBytes(encodeCbor({ absent: 1 }))]), 1)
    assert.equal(await store.hasBlock(cid), false)
    await store.close()
  })

  if (kind === 'fs') it('stores blocks readable by blockstore-fs', async () => {
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

  if (kind === 'fs') it('removes temp files a killed writer left behind when it opens', async () => {
    const dir = join(root, 'tmpfiles')
    const first = await MirrorStore.open(dir, { blockstore: 'fs' })
    const { cid, bytes } = { bytes: encodeCbor({ t: 1 }), cid: cidForBytes(encodeCbor({ t: 1 })) }
    // written outside any sync (a staged block of a killed sync would be collected
    // at open, see gc.test.ts): only the temp file is garbage here
    await first.blockstore.put(cid, bytes)
    // killed mid-write: a temp file next to the block, and the store never closed
    const shard = dirname((first.blockstore as FsMirrorBlockstore).pathOf(cid))
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

describe('the blockstore kind a data directory records', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-kind-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  it('a new data directory gets the default kind, recorded', async () => {
    const dir = join(root, 'new')
    const store = await MirrorStore.open(dir)
    await store.close()
    assert.equal(readBlockstoreKind(dir), DEFAULT_BLOCKSTORE_KIND)
    assert.equal(existsSync(join(dir, 'blocks')), DEFAULT_BLOCKSTORE_KIND === 'fs')
  })

  it('a data directory made before kinds were recorded opens as fs, with what it stored', async () => {
    const dir = join(root, 'old')
    // what an older atmirror left: a datastore and block files, no record of the kind
    const old = new FsBlockstore(join(dir, 'blocks'))
    await old.open()
    const bytes = encodeCbor({ old: true })
    const cid = cidForBytes(bytes)
    await old.put(cid, bytes)
    await old.close()
    const datastore = new LevelDatastore(join(dir, 'datastore'))
    await datastore.open()
    await datastore.close()
    const store = await MirrorStore.open(dir)
    try {
      assert.equal(store.blockstore.kind, 'fs')
      assert.deepEqual(await store.getBlock(cid), bytes)
    } finally {
      await store.close()
    }
    assert.equal(readBlockstoreKind(dir), 'fs')
    assert.equal((await readFile(join(dir, 'blockstore'), 'utf8')).trim(), 'fs')
  })

  it('asking for the other kind is BlockstoreKindError, and the directory is left as it was', async () => {
    for (const [made, asked] of [['fs', 'level'], ['level', 'fs']] as const) {
      const dir = join(root, `mismatch-${made}`)
      const store = await MirrorStore.open(dir, { blockstore: made })
      await store.close()
      await assert.rejects(MirrorStore.open(dir, { blockstore: asked }), (err: Error & { recorded?: string, requested?: string }) => {
        assert.equal(err.name, 'BlockstoreKindError')
        assert.equal(err.recorded, made)
        assert.equal(err.requested, asked)
        assert.match(err.message, new RegExp(`uses the ${made} blockstore, not ${asked}`))
        return true
      })
      assert.equal(readBlockstoreKind(dir), made)
      const again = await MirrorStore.open(dir)
      assert.equal(again.blockstore.kind, made)
      await again.close()
    }
  })

  it('a record naming no kind is DataDirError, never a guess', async () => {
    const dir = join(root, 'garbled')
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'blockstore'), 'tape\n')
    await assert.rejects(MirrorStore.open(dir), { name: 'DataDirError' })
  })
})

describe('FsMirrorBlockstore', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-blockstore-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  it('put hash-checks whoever calls it', async () => {
    const store = new FsMirrorBlockstore(join(root, 'put'))
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
    const store = new FsMirrorBlockstore(dir)
    await store.open()
    assert.deepEqual(await store.getBytes(cid), bytes)
    const chunks: Uint8Array[] = []
    for await (const chunk of store.get(cid)) chunks.push(chunk)
    assert.deepEqual(chunks, [bytes])
    await store.delete(cid)
    assert.equal(await fs.has(cid), false)
  })

  it('get of an absent block throws NotFoundError', async () => {
    const store = new FsMirrorBlockstore(join(root, 'absent'))
    await store.open()
    const cid = cidForBytes(encodeCbor({ c: 1 }))
    assert.equal(await store.getBytes(cid), undefined)
    await assert.rejects(async () => { for await (const _ of store.get(cid)) { /* nothing */ } }, { name: 'NotFoundError' })
  })
})

describe('FsMirrorBlockstore.usage', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-usage-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  it('counts the stored blocks and their bytes, and no temp file', async () => {
    const store = new FsMirrorBlockstore(join(root, 'usage'))
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

describe('LevelMirrorBlockstore', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-level-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  const withStore = async (name: string, use: (store: LevelMirrorBlockstore, datastore: LevelDatastore) => Promise<void>): Promise<void> => {
    const datastore = new LevelDatastore(join(root, name))
    await datastore.open()
    try {
      const store = new LevelMirrorBlockstore(datastore.db)
      await store.open()
      await use(store, datastore)
    } finally {
      await datastore.close()
    }
  }

  it('put hash-checks whoever calls it', async () => {
    await withStore('put', async (store) => {
      const cid = cidForBytes(encodeCbor({ a: 2 }))
      await assert.rejects(store.put(cid, encodeCbor({ a: 1 })), { name: 'CidMismatchError' })
      assert.equal(await store.has(cid), false)
    })
  })

  it('get of an absent block throws NotFoundError', async () => {
    await withStore('absent', async (store) => {
      const cid = cidForBytes(encodeCbor({ c: 1 }))
      assert.equal(store.getBytesSync(cid), undefined)
      await assert.rejects(async () => { for await (const _ of store.get(cid)) { /* nothing */ } }, { name: 'NotFoundError' })
    })
  })

  it('keeps blocks apart from the datastore keys, and lists them through blockstore-level', async () => {
    await withStore('apart', async (store, datastore) => {
      const blocks = [encodeCbor({ d: 1 }), encodeCbor({ d: 2 })].map(bytes => ({ cid: cidForBytes(bytes), bytes }))
      await store.putVerified(blocks)
      await datastore.db.put('/atmirror/pins/did:plc:cccccccccccccccccccccccc', new Uint8Array([1]))
      const listed: string[] = []
      for await (const { cid } of store.getAll()) listed.push(Buffer.from(cid.multihash.bytes).toString('hex'))
      assert.deepEqual(listed.sort(), blocks.map(b => Buffer.from(b.cid.multihash.bytes).toString('hex')).sort())
      const keys = await datastore.db.keys({ gte: '/', lt: '/\xff' }).all()
      assert.deepEqual(keys, ['/atmirror/pins/did:plc:cccccccccccccccccccccccc'])
      assert.ok(await store.diskUsage() >= 0)
    })
  })
})

/**
 * A hostile PDS on 127.0.0.1 that tries to fill the disk (src/mirror/download-guard.ts):
 * an endless stream of junk blocks, a real repo padded with junk, a real repo in
 * an order where children come before their parents, and a repo larger than the
 * size limit. Written blocks are counted from the sync's own progress (what it
 * stored) and from the files on disk afterwards.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, beforeEach, describe, it } from 'node:test'
import type { ServerResponse } from 'node:http'
import { CID, varint } from 'multiformats'
import * as Digest from 'multiformats/hashes/digest'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { RepoSyncer, type SyncProgress } from '../../src/mirror/sync.ts'
import type { DownloadLimits } from '../../src/mirror/download-guard.ts'
import { sha256 } from '../../src/repo/cid.ts'
import { joinCar, splitCar, type RawBlock } from '../helpers/car-tools.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'
import { hexOf, storedBlocks } from '../helpers/blocks.ts'
import { EvolvingRepo, posts, type RepoVersion } from '../helpers/evolving-repo.ts'

/** A raw block of random bytes: valid, hash-checked, and useless. */
function junk (): RawBlock {
  const bytes = randomBytes(96)
  return { cid: CID.createV1(0x55, Digest.create(0x12, sha256(bytes))), bytes }
}

function section (block: RawBlock): Uint8Array {
  const length = block.cid.bytes.length + block.bytes.length
  return Buffer.concat([varint.encodeTo(length, new Uint8Array(varint.encodingLength(length))), block.cid.bytes, block.bytes])
}

/** Writes a CAR header naming `root`, then junk sections until the client goes away; resolves to how many were sent. */
async function streamJunk (res: ServerResponse, root: CID | undefined): Promise<number> {
  res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
  res.write(joinCar(root === undefined ? [] : [root], []))
  let sent = 0
  while (!res.destroyed && !res.writableEnded) {
    const chunk = Buffer.concat(Array.from({ length: 64 }, () => section(junk())))
    sent += 64
    if (!res.write(chunk)) {
      await new Promise<void>(resolve => {
        const done = (): void => { res.off('drain', done); res.off('close', done); resolve() }
        res.on('drain', done)
        res.on('close', done)
      })
    }
  }
  return sent
}

describe('a PDS that tries to fill the disk', () => {
  let pds: FakePds
  let root: string
  let repo: EvolvingRepo
  let version: RepoVersion
  let run = 0

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-flood-'))
    repo = await EvolvingRepo.create(61, posts(60))
    version = await repo.version()
    pds.setRepo(version.did, repo.keypair, version)
  })

  after(async () => {
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  beforeEach(() => { pds.reset() })

  /** A fresh store and syncer with `limits`; `written` is the most blocks the sync said it had stored. */
  const open = async (limits: DownloadLimits): Promise<{ store: MirrorStore, syncer: RepoSyncer, progress: { written: number }, onProgress: (p: SyncProgress) => void }> => {
    const store = await MirrorStore.open(join(root, `data-${++run}`))
    const identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
    const syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) }, { limits, pds: { timeoutMs: 10_000 } })
    const progress = { written: 0 }
    return { store, syncer, progress, onProgress: (p) => { if (p.phase === 'download') progress.written = Math.max(progress.written, p.blocks) } }
  }

  it('an endless stream of junk blocks is cut off at the allowance with DownloadLimitError, and nothing of it stays on disk', async () => {
    let junkSent = 0
    pds.handle('getRepo', async (_req, res) => { junkSent += await streamJunk(res, version.commit) })
    // getBlocks is junk too: the walk that would complete the tree gets nothing it asked for
    pds.handle('getBlocks', async (_req, res, url, fallback) => {
      // the head resolver's request for the commit block still works
      if (url.searchParams.getAll('cids').every(cid => cid === version.commit.toString())) return await fallback()
      await streamJunk(res, undefined)
    })
    const { store, syncer, progress, onProgress } = await open({ unreachableBlocks: 500 })
    try {
      await assert.rejects(syncer.sync(version.did, { onProgress }), (err: Error & { limit?: string, cause?: Error }) => {
        assert.equal(err.name, 'DownloadLimitError')
        assert.equal(err.limit, 'unreachableBlocks')
        assert.match(err.message, /more than 500 blocks not reachable from the commit/)
        return true
      })
      // written while streaming: at most the allowance (plus the batch in hand)
      assert.ok(progress.written <= 500, `wrote ${progress.written} blocks`)
      assert.ok(junkSent >= 500, `sent ${junkSent}`)
      assert.equal(await store.getState(version.did), undefined)
      assert.deepEqual(await storedBlocks(store), [])
    } finally {
      await store.close()
    }
  })

  it('a 60-record repo padded with junk is mirrored; the junk is not kept', async () => {
    const { roots, blocks } = splitCar(version.car)
    // the real blocks spread through 20,000 junk ones
    const padded: RawBlock[] = []
    const step = Math.floor(20_000 / blocks.length)
    for (const block of blocks) {
      padded.push(block)
      for (let i = 0; i < step; i++) padded.push(junk())
    }
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(joinCar(roots, padded))
    })
    const { store, syncer, progress, onProgress } = await open({ unreachableBlocks: 1000 })
    try {
      const result = await syncer.sync(version.did, { onProgress })
      assert.equal(result.records, 60)
      assert.equal(result.rev, version.rev)
      assert.ok(progress.written <= blocks.length + 1000, `wrote ${progress.written} blocks`)
      assert.deepEqual(await storedBlocks(store), blocks.map(b => hexOf(b.cid)).sort())
    } finally {
      await store.close()
    }
  })

  it('a real repo whose children come before their parents (CID order, as an imported repo) is mirrored whole, past a tiny allowance', async () => {
    const { roots, blocks } = splitCar(version.car)
    const reordered = [...blocks].sort((a, b) => Buffer.compare(Buffer.from(b.cid.bytes), Buffer.from(a.cid.bytes)))
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(joinCar(roots, reordered))
    })
    const { store, syncer } = await open({ unreachableBlocks: 5 })
    try {
      const result = await syncer.sync(version.did)
      assert.equal(result.records, 60)
      assert.deepEqual(await storedBlocks(store), blocks.map(b => hexOf(b.cid)).sort())
    } finally {
      await store.close()
    }
  })

  it('with room to wait, the same out-of-order repo comes whole from getRepo alone', async () => {
    const { roots, blocks } = splitCar(version.car)
    const reordered = [...blocks].sort((a, b) => Buffer.compare(Buffer.from(b.cid.bytes), Buffer.from(a.cid.bytes)))
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(joinCar(roots, reordered))
    })
    const { store, syncer } = await open({})
    try {
      const result = await syncer.sync(version.did)
      assert.equal(result.records, 60)
      assert.equal(result.fetched.pds, blocks.length)
      assert.ok(!pds.requests.some(r => r.route === 'getBlocks' && !r.url.includes(version.commit.toString())), 'no getBlocks for the tree')
    } finally {
      await store.close()
    }
  })

  it('a CAR whose root is a newer commit signed by another key does not make its tree count as reachable', async () => {
    // same DID, more records, newer rev, another key: its tree is as much junk as random bytes
    const forged = await (await EvolvingRepo.create(61, posts(200), { keySeed: 99 })).version()
    assert.equal(forged.did, version.did)
    assert.ok(forged.rev > version.rev)
    pds.handle('getRepo', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
      res.end(forged.car)
    })
    const { store, syncer, progress, onProgress } = await open({ unreachableBlocks: 20 })
    try {
      await assert.rejects(syncer.sync(version.did, { onProgress }), (err: Error & { limit?: string }) => err.name === 'DownloadLimitError' && err.limit === 'unreachableBlocks')
      assert.ok(progress.written <= 20, `wrote ${progress.written} blocks`)
      assert.equal(await store.getState(version.did), undefined)
      assert.deepEqual(await storedBlocks(store), [])
    } finally {
      await store.close()
    }
  })

  it('a repo larger than maxBlocks is refused with DownloadLimitError and nothing is kept', async () => {
    const { store, syncer } = await open({ maxBlocks: 20 })
    try {
      await assert.rejects(syncer.sync(version.did), (err: Error & { limit?: string }) => err.name === 'DownloadLimitError' && err.limit === 'maxBlocks')
      assert.equal(await store.getState(version.did), undefined)
      assert.deepEqual(await storedBlocks(store), [])
    } finally {
      await store.close()
    }
  })
})
